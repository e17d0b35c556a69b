"""The score/publish stage: embeddings in over ZeroMQ, `utterance` events out.

Each utterance is scored on the event loop (a few dot products), committed to the
history off the loop (disk), and only then broadcast, so what a client saw is always
in the history. Messages that arrive together are committed in one transaction. The
stage also keeps the station table, turns upstream `status` messages into metrics,
sends the periodic `rolling` snapshots, and follows customer visits (`visit` events;
a closed visit is committed like an utterance before it is published) and alert rules
(`alert` events, committed with the utterance that caused them, then published and
queued for the webhook, which never holds up this loop).
"""
from __future__ import annotations

import asyncio
import logging
import time

import zmq
import zmq.asyncio

from emoclap import latency, scorestream, wire
from emoclap.alerts import Alerts
from emoclap.record import Utterance, speech_event
from emoclap.scorer import Scorer
from emoclap.visits import Visits

from .config import Config
from .history import History, Unwritten
from .hub import Hub
from .links import bind, context
from .metrics import Metrics, RecentLatency
from .webhook import WebhookSender

log = logging.getLogger("emoclapd.publisher")

BURST = 64  # messages taken from the link per history transaction


class Publisher:
    def __init__(self, cfg: Config, bank, metrics: Metrics, history: History | None, hub: Hub):
        self.cfg = cfg
        self.bank = bank
        self.metrics = metrics
        self.history = history
        self.hub = hub
        self.scorer = Scorer(bank, cfg.rolling.half_life_s)
        self.visits = Visits(cfg.visits.end_after_s)
        self.alerts = Alerts(cfg.alerts)
        self.webhook = WebhookSender(cfg.webhook, metrics) if cfg.webhook is not None else None
        self.policy = cfg.privacy.policy()
        self.stations: dict[str, dict] = {}
        self.published = 0
        self.eos = asyncio.Event()
        self.history_error: str | None = None  # the last write failure, until a write succeeds
        self.latency = RecentLatency(60.0)  # segmenter → published, for /healthz's "scores late"
        self.unwritten = Unwritten()  # committed rows the disk refused: written when it takes them again
        self._writing = asyncio.Lock()
        self._prompts_sent, self._prompts_due = -PROMPTS_EVERY_S, None  # the prompt set's last broadcast
        self.last_upstream = time.monotonic()  # when the encode stage last reported
        self.fleet = None  # the broker (daemon.broker): it hears the encode workers
        self.received = 0  # embeddings taken off the link
        self.settled = 0  # ... and published or dropped: the broker's backlog counts the rest
        self._pull: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task] = []
        for s in cfg.stations:
            self.register(s.name, s.role, s.source, "starting")

    # ---- stations
    def register(self, name: str, role: str, source: str, state: str) -> None:
        entry = self.stations.setdefault(name, {"name": name, "role": role, "source": source})
        entry.update(role=role, source=source)
        self.set_state(name, state)

    def set_state(self, name: str, state: str) -> None:
        entry = self.stations.setdefault(name, {"name": name, "role": "auto", "source": "remote"})
        if entry.get("state") != state:
            entry["since"] = time.monotonic()
        entry["state"] = state
        self.metrics.set_state(name, state)

    def expire_stations(self) -> list[str]:
        """Stations that clients brought (ingest, remote) and that ended long enough ago
        leave the table, the rolling scores and the metrics: names are not a resource a
        client can grow without bound."""
        ttl = self.cfg.server.ended_station_ttl_s
        now = time.monotonic()
        gone = [n for n, s in self.stations.items()
                if s["state"] == "ended" and s["source"] in ("ingest", "remote")
                and now - s.get("since", now) >= ttl and self.cfg.station(n) is None]
        for name in gone:
            del self.stations[name]
            self.scorer.rolling.pop(name, None)
            self.visits.forget(name)  # closed long ago by the tick: end_after_s < ttl in practice
            self.metrics.forget_station(name)
        return gone

    # ---- life cycle
    def start(self) -> None:
        st = self.cfg.stages
        self._pull = zmq.asyncio.Context.shadow(context().underlying).socket(zmq.PULL)
        self._pull.set_hwm(st.hwm)
        self._pull.setsockopt(zmq.LINGER, 0)
        bind(self._pull, st.embeddings, "stages.embeddings")
        self._tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._rolling_loop())]
        if self.webhook is not None:
            self.webhook.start()
        self.report_unknown_emotions()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.close_visits()  # one opened after close_visits() (a late message) is kept too
        if self.unwritten:
            await self.write_unwritten()
            if self.unwritten:
                log.error("history: %d row(s) could not be written before stopping", self.unwritten.rows)
                self.metrics.history_failures.inc(self.unwritten.rows)
        if self.webhook is not None:  # what close_visits cleared gets a moment to go out
            await asyncio.to_thread(self.webhook.close, 2.0)
        if self._pull is not None:
            self._pull.close()

    # ---- messages from the encode stage
    async def _pump(self) -> None:
        while True:
            burst = [await self._pull.recv_multipart()]
            while len(burst) < BURST:
                try:
                    burst.append(self._pull.recv_multipart(zmq.NOBLOCK).result())
                except zmq.Again:
                    break
            taken, arrived = [], []
            for frames in burst:
                now = time.time()
                if (t := self._take(frames)) is not None:
                    taken.append(t)
                    arrived.append(now)
            if taken:
                visit_events, alert_events = [], []
                for event, _, _ in taken:
                    visit, caused = self.visits.observe(event)
                    if visit is not None:
                        event["visit"] = visit
                    visit_events.append(caused)
                    alert_events.append([a for v in caused if v["state"] == "closed"
                                         for a in self.alerts.end_visit(v)] + self.alerts.observe(event))
                scored = time.time()
                await self._record(taken, [v for vs in visit_events for v in vs if v["state"] == "closed"],
                                   [a for alerts in alert_events for a in alerts])
                stored = time.time()
                for (event, _, utt), came, caused, alerts in zip(taken, arrived, visit_events, alert_events):
                    if event["type"] == "utterance":
                        self._account(event, utt, came, scored, stored, time.time())
                    self.hub.broadcast(event if self.cfg.transcripts.publish else without_transcript(event),
                                       station=event["station"])
                    for v in caused:
                        self.hub.broadcast(v, station=v["station"])
                    self._announce(alerts)
                    if event["type"] == "utterance":
                        self.metrics.utterances.labels(event["station"]).inc()
                        self.metrics.totals["published"] += 1
                        self.metrics.observe_scores(event)
                        if event.get("insufficient"):
                            self.metrics.insufficient.labels(event["station"], event["insufficient"]).inc()
                        self.published += 1
                    else:
                        self.metrics.speech.labels(event["station"]).inc()
                        self.metrics.totals["speech"] += 1
                    await asyncio.sleep(0)  # client writers run between events of a burst
            self.settled = self.received  # the whole burst is published (or dropped) now

    def _account(self, event: dict, utt: Utterance, arrived: float, scored: float, stored: float,
                 now: float) -> None:
        """The serve stage's spans, and the event's `latency_ms`: where its time went."""
        utt.spans.update(closing=latency.span(utt.emitted - utt.time),
                         to_serve=latency.span(arrived - (utt.encoded or arrived)),
                         score=latency.span(scored - arrived),
                         store=latency.span(stored - scored), publish=latency.span(now - stored))
        event["latency_ms"] = latency.milliseconds(utt.spans)
        self.metrics.observe_spans(utt.spans)
        self.metrics.event_latency.observe(max(0.0, now - utt.emitted))
        self.latency.add(max(0.0, now - utt.emitted), time.monotonic())

    def _take(self, frames: list[bytes]) -> tuple[dict, object, Utterance] | None:
        """One message from the encode stage → (event, audio to store, utterance), if any."""
        try:
            msg = wire.decode(frames)
        except wire.WireError as exc:
            log.warning("serve: skipped a malformed message: %s", exc)
            self.metrics.drop("?", "bad_message")
            return None
        self.last_upstream = time.monotonic()
        if msg.kind == "status":
            try:
                self.metrics.record_status(msg.header)
                now = time.monotonic()
                for name, state in msg.get("states", {}).items():
                    self.set_state(name, state)
                    self.stations[name]["reported"] = now  # its capture agent is alive
            except (AttributeError, TypeError, ValueError) as exc:
                log.warning("serve: skipped a malformed status message: %s", exc)
                self.metrics.drop("?", "bad_message")
            return None
        if msg.kind == "eos":
            self.eos.set()
            return None
        if msg.kind not in ("embedding", "speech"):
            return None
        self.received += msg.kind == "embedding"
        utt = msg.utterance
        if utt.station not in self.stations:
            self.register(utt.station, utt.role, "remote", "online")
        if msg.kind == "speech" or not self.policy.scores(utt.role):
            # Speech activity only: an embedding of a role this gateway does not score
            # (an encode stage with another policy) is dropped here, never scored.
            return speech_event(utt), None, utt
        try:
            t = self.cfg.transcripts
            return self.scorer.score(utt).event(transcript=t.publish or t.store), utt.audio, utt
        except Exception as exc:  # noqa: BLE001 - one bad utterance never stops the stage
            log.warning("score: %s seq %s failed: %s", utt.station, utt.seq, exc)
            self.metrics.drop(utt.station, "score_error")
            return None

    async def _record(self, taken: list[tuple[dict, object, Utterance]], visits: list[dict] = (),
                      alerts: list[dict] = ()) -> None:
        if self.history is None:
            return
        store = self.cfg.transcripts.store
        rows = [(event if store else without_transcript(event), audio) for event, audio, _ in taken]
        self.unwritten.add(rows, list(visits), list(alerts))
        await self.write_unwritten()

    async def write_unwritten(self) -> None:
        """Commit what waits, oldest first. A failing disk (full, read-only) does not stop
        publishing: the rows wait in memory (bounded) and go in once a write succeeds."""
        async with self._writing:  # one writer: a retry never writes a batch being written
            await self._write_unwritten()

    async def _write_unwritten(self) -> None:
        while self.unwritten:
            rows, visits, alerts = self.unwritten.first()
            try:
                await asyncio.to_thread(self.history.write_many, rows, visits, alerts)
            except Exception as exc:  # noqa: BLE001 - publish even when the disk fails
                log.error("history: cannot write (%d row(s) waiting): %s", self.unwritten.rows, exc)
                self.history_error = str(exc)
                self.metrics.history_failures.inc(self.unwritten.trim())
                self.metrics.history_waiting.set(self.unwritten.rows)
                return
            self.unwritten.pop()
            self.metrics.history_waiting.set(self.unwritten.rows)
        if self.history_error is not None:
            log.info("history: writing again")
        self.history_error = None

    # ---- alerts
    def _announce(self, alerts: list[dict]) -> None:
        """Publish committed alert events: clients, metrics, the webhook's queue."""
        for a in alerts:
            self.hub.broadcast(a, station=a["station"])
            self.metrics.alerts.labels(a["rule"], a["state"]).inc()
            if self.webhook is not None:
                self.webhook.submit(a)

    async def publish_alerts(self, alerts: list[dict]) -> None:
        """Commit alert events that no utterance caused (a reload, a station leaving), then publish."""
        if alerts:
            await self._record([], (), alerts)
            self._announce(alerts)

    async def set_alerts(self, rules, webhook) -> None:
        """A reloaded configuration's rules and webhook (see `Alerts.replace`)."""
        await self.publish_alerts(self.alerts.replace(rules, time.time()))
        self.report_unknown_emotions()
        if webhook is None and self.webhook is not None:
            sender, self.webhook = self.webhook, None
            await asyncio.to_thread(sender.close, 0.0)
        elif webhook is not None and self.webhook is None:
            self.webhook = WebhookSender(webhook, self.metrics).start()
        elif webhook is not None:
            self.webhook.configure(webhook)

    def report_unknown_emotions(self) -> None:
        for rule in self.alerts.unknown_emotions(self.bank.emotions):
            log.warning("alerts: rule %r watches emotion %r, which no prompt file defines now; "
                        "it fires once there is one", rule.name, rule.emotion)

    # ---- messages to clients
    def station_list(self) -> list[dict]:
        return [{k: s[k] for k in ("name", "role", "source", "state")} for s in self.stations.values()]

    def hello(self) -> dict:
        return scorestream.hello(self.bank.emotions.values(), self.station_list(), self.bank.errors,
                                 self.policy.scored_roles, self.alerts.active(), self.visits.current())

    def rolling_message(self, stations: set[str] | None = None) -> dict:
        return scorestream.rolling(time.time(), self.scorer.snapshots(),
                                   {n: s["state"] for n, s in self.stations.items()}, stations)

    async def publish_closed(self, closed: list[dict]) -> None:
        """Commit closed visits, then publish them."""
        if closed:
            cleared = [a for v in closed for a in self.alerts.end_visit(v)]
            await self._record([], closed, cleared)
            for v in closed:
                self.hub.broadcast(v, station=v["station"])
            self._announce(cleared)

    async def close_visits(self) -> None:
        """At shutdown, before clients go: every open visit closed, stored and published."""
        await self.publish_closed(self.visits.close_all())

    def prompts_changed(self) -> None:
        """Called on the loop when the prompt bank changed: clients hear of it at once, and
        then at most every PROMPTS_EVERY_S while changes keep coming (hundreds of files
        arriving together are a few messages of the latest set, not one each: that many
        copies of a growing set would swamp every client's queue)."""
        now = time.monotonic()
        if self._prompts_due is not None:
            return  # a message of the latest set is already on its way
        wait = self._prompts_sent + PROMPTS_EVERY_S - now
        if wait <= 0:
            self._announce_prompts()
        else:
            self._prompts_due = asyncio.get_running_loop().call_later(wait, self._announce_prompts)

    def _announce_prompts(self) -> None:
        self._prompts_due, self._prompts_sent = None, time.monotonic()
        self.scorer.keep_only(set(self.bank.emotions))
        self.report_unknown_emotions()
        self.metrics.prompt_errors.set(len(self.bank.errors))
        self.hub.broadcast(scorestream.prompts(self.bank.emotions.values(), self.bank.errors))

    def problems(self) -> list[str]:
        """What /healthz reports as making the service degraded."""
        out = [f"station {n} is {s['state']}" for n, s in self.stations.items()
               if s["state"] in ("offline", "failed")]
        # A capture agent reports its stations every status interval while it runs: an
        # online station whose reports stopped has lost its agent (killed, host down, hung).
        now, quiet = time.monotonic(), max(1.0, 5 * self.cfg.stages.status_interval_s)
        out += [f"station {n}: no word from its capture agent for {now - s['reported']:.0f} s"
                for n, s in self.stations.items()
                if s["state"] == "online" and now - s.get("reported", now) > quiet]
        errors = sorted(self.bank.errors.values())
        # Each file by name with its reason (the message names file and line), so whoever
        # edits prompts sees why an emotion is missing; bounded, the count always whole.
        out += [f"prompt file not in use: {e}" for e in errors[:MAX_NAMED_PROMPT_ERRORS]]
        if len(errors) > MAX_NAMED_PROMPT_ERRORS:
            out.append(f"{len(errors) - MAX_NAMED_PROMPT_ERRORS} more prompt file(s) not in use "
                       f"({len(errors)} in all)")
        late = self.latency.p99(time.monotonic())
        if late is not None and late[0] > self.cfg.server.late_after_s:
            out.append(f"scores late: p99 {late[0]:.2f} s from an utterance closing to its scores over the "
                       f"last {self.latency.window_s:.0f} s ({late[1]} utterances; server.late_after_s "
                       f"{self.cfg.server.late_after_s:g})")
        if self.history_error is not None:
            out.append(f"history: cannot write: {self.history_error} ({self.unwritten.rows} row(s) "
                       f"waiting, {self.unwritten.limit_bytes >> 20} MiB at most)")
        webhook = self.webhook.problem() if self.webhook is not None else None
        if webhook:
            out.append(webhook)
        silent, st = self.upstream_silence(), self.cfg.stages
        if silent > max(1.0, 5 * st.status_interval_s, 2 * st.heartbeat_interval_s):
            out.append(f"no word from the encode stage for {silent:.0f} s")
        if self.fleet is not None:
            out += self.fleet.problems(any(s["state"] == "online" for s in self.stations.values()))
        return out

    def upstream_silence(self) -> float:
        """Seconds since an encode worker was last heard (also kept current in /metrics)."""
        last = self.last_upstream if self.fleet is None else self.fleet.last_worker
        silent = time.monotonic() - last
        self.metrics.upstream_age.set(round(silent, 1))
        return silent

    def set_half_life(self, half_life_s: float) -> None:
        self.scorer.half_life_s = half_life_s

    async def _rolling_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.rolling.interval_s)
            built: dict = {}  # one snapshot per distinct subscription, not per client

            def snapshot(client):
                key = None if client.session.stations is None else frozenset(client.session.stations)
                if key not in built:
                    built[key] = self.rolling_message(client.session.stations)
                return built[key]
            self.hub.broadcast_each(snapshot)
            self.visits.end_after_s = self.cfg.visits.end_after_s  # a reloaded value applies now
            if self.unwritten:  # a disk that came back takes what waited, even on a quiet floor
                await self.write_unwritten()
            await self.publish_closed(self.visits.tick(time.time()))
            self.metrics.queue_depth.labels("client_send_max").set(self.hub.depth())
            self.upstream_silence()
            await self.publish_alerts([a for name in self.expire_stations()
                                       for a in self.alerts.forget(name, time.time())])


MAX_NAMED_PROMPT_ERRORS = 20
PROMPTS_EVERY_S = 0.5  # `prompts` messages while prompt files keep changing


def without_transcript(event: dict) -> dict:
    """The event as published or stored where transcripts are not to be (personal data)."""
    return event if "transcript" not in event else {k: v for k, v in event.items() if k != "transcript"}

