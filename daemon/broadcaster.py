"""The serve stage's broadcaster: committed events out to every `/ws` client, alerts to
the webhook's queue too, and each publication counted in /metrics.

Never waits: the hub queues each message per client (a slow client is cut off, not
waited for) and the webhook sender has its own thread.
"""
from __future__ import annotations

import asyncio

from emoclap.record import without_transcript
from emoclap.scoring import Outcome

from .hub import Hub
from .metrics import Metrics
from .webhook import WebhookConfig, WebhookSender


class Broadcaster:
    def __init__(self, hub: Hub, metrics: Metrics, webhook: WebhookConfig | None, publish_transcripts: bool):
        self.hub = hub
        self.metrics = metrics
        self.webhook = WebhookSender(webhook, metrics) if webhook is not None else None
        self.publish_transcripts = publish_transcripts  # transcripts are personal data: off unless asked
        self.published = 0  # scored utterances sent to clients

    def start(self) -> None:
        if self.webhook is not None:
            self.webhook.start()

    def outcome(self, out: Outcome) -> None:
        """One committed utterance and what it caused, in the order it happened."""
        event = out.event if self.publish_transcripts else without_transcript(out.event)
        self.hub.broadcast(event, station=event["station"])
        self.visits(out.visits)
        self.alerts(out.alerts)
        if out.scored:
            self.metrics.utterances.labels(event["station"]).inc()
            self.metrics.totals["published"] += 1
            self.metrics.observe_scores(event)
            if event.get("insufficient"):
                self.metrics.insufficient.labels(event["station"], event["insufficient"]).inc()
            self.published += 1
        else:
            self.metrics.speech.labels(event["station"]).inc()
            self.metrics.totals["speech"] += 1

    def visits(self, visits: list[dict]) -> None:
        for v in visits:
            self.hub.broadcast(v, station=v["station"])

    def alerts(self, alerts: list[dict]) -> None:
        for a in alerts:
            self.hub.broadcast(a, station=a["station"])
            self.metrics.alerts.labels(a["rule"], a["state"]).inc()
            if self.webhook is not None:
                self.webhook.submit(a)

    def message(self, message: dict) -> None:
        """To every client (a prompt set, a notice)."""
        self.hub.broadcast(message)

    def each(self, build) -> None:
        """`build(client)` → the client's own message (the rolling snapshot of its stations)."""
        self.hub.broadcast_each(build)
        self.metrics.queue_depth.labels("client_send_max").set(self.hub.depth())

    async def set_webhook(self, webhook: WebhookConfig | None) -> None:
        """A reloaded `[webhook]`: started, stopped or re-pointed, its queue kept."""
        if webhook is None and self.webhook is not None:
            sender, self.webhook = self.webhook, None
            await asyncio.to_thread(sender.close, 0.0)
        elif webhook is not None and self.webhook is None:
            self.webhook = WebhookSender(webhook, self.metrics).start()
        elif webhook is not None:
            self.webhook.configure(webhook)

    def problem(self) -> str | None:
        return self.webhook.problem() if self.webhook is not None else None

    async def close(self) -> None:
        """Alerts still queued get a moment to go out."""
        if self.webhook is not None:
            await asyncio.to_thread(self.webhook.close, 2.0)
