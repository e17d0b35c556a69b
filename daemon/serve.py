"""The serve stage: results from the broker, each taken through its parts in turn.

    broker (handoff.ToLoop) → Scoring.take (scores, visits, alerts) → HistoryWriter.commit → Broadcaster

Scoring runs on the event loop (a few dot products), the commit off it (disk), and only
then is anything broadcast, so what a client saw is always in the history. Messages
that arrive together are committed in one transaction. The stage also turns upstream
`status` messages into station states and metrics, and on a timer sends the `rolling`
snapshots, closes visits whose silence ran out, retries a refused history write and
lets ended client stations go. The HTTP server reads none of this directly: it reads
the floor (`daemon.floor`).
"""
from __future__ import annotations

import asyncio
import logging
import time

from emoclap import latency, scorestream, wire
from emoclap.record import Utterance
from emoclap.scoring import Outcome, Scoring, Settings

from .broadcaster import Broadcaster
from .config import Config
from .floor import Progress
from .handoff import ToLoop
from .history_writer import HistoryWriter
from .metrics import Metrics
from .stations import Stations

log = logging.getLogger("emoclapd.serve")

BURST = 64  # messages taken from the broker per history transaction
PROMPTS_EVERY_S = 0.5  # `prompts` messages while prompt files keep changing


def settings(cfg: Config) -> Settings:
    return Settings(cfg.rolling.half_life_s, cfg.visits.end_after_s)


class ServeStage:
    def __init__(self, cfg: Config, bank, scoring: Scoring, writer: HistoryWriter,
                 broadcaster: Broadcaster, stations: Stations, progress: Progress, metrics: Metrics,
                 inbox: ToLoop):
        self.cfg = cfg  # replaced whole by `configure`, never edited
        self.bank = bank
        self.scoring = scoring
        self.writer = writer
        self.broadcaster = broadcaster
        self.stations = stations
        self.progress = progress
        self.metrics = metrics
        self._prompts_sent, self._prompts_due = -PROMPTS_EVERY_S, None  # the prompt set's last broadcast
        self.inbox = inbox
        self._tasks: list[asyncio.Task] = []

    # ---- life cycle
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._timer())]
        self.broadcaster.start()
        self.report_unknown_emotions()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.close_visits()  # one opened after close_visits() (a late message) is kept too
        await self.writer.close()
        await self.broadcaster.close()  # what close_visits cleared gets a moment to go out

    async def configure(self, cfg: Config) -> None:
        """A reloaded configuration: what may change without a restart, applied now."""
        old, self.cfg = self.cfg, cfg
        self.scoring.configure(settings(cfg))
        self.stations.configure(cfg.stations)
        if (cfg.alerts, cfg.webhook) != (old.alerts, old.webhook):
            log.info("alert rules or webhook changed: applied now")
            await self.publish_alerts(self.scoring.replace_rules(cfg.alerts, time.time()))
            self.report_unknown_emotions()
            await self.broadcaster.set_webhook(cfg.webhook)

    # ---- messages from the encode stage
    async def _pump(self) -> None:
        while True:
            burst = [await self.inbox.get()]
            while len(burst) < BURST and (msg := self.inbox.get_nowait()) is not None:
                burst.append(msg)
            taken: list[tuple[Outcome, float]] = []
            for msg in burst:
                arrived = time.time()
                if (out := self._take(msg)) is not None:
                    taken.append((out, arrived))
            if taken:
                scored = time.time()
                await self.writer.commit([(out.event, out.audio) for out, _ in taken],
                                         [v for out, _ in taken for v in out.closed_visits],
                                         [a for out, _ in taken for a in out.alerts])
                stored = time.time()
                for out, arrived in taken:
                    if out.scored:
                        self._account(out.event, out.utterance, arrived, scored, stored, time.time())
                    self.broadcaster.outcome(out)
                    await asyncio.sleep(0)  # client writers run between events of a burst
            self.progress.settled = self.progress.received  # the whole burst is published (or dropped) now

    def _take(self, msg: wire.Message) -> Outcome | None:
        """One message from the broker (checked where it entered the process)."""
        if msg.kind == "status":
            try:
                self.metrics.record_status(msg.header)
                self.stations.reported(msg.get("states", {}))
            except (AttributeError, TypeError, ValueError) as exc:
                log.warning("serve: skipped a malformed status message: %s", exc)
                self.metrics.drop("?", "bad_message")
            return None
        if msg.kind == "eos":
            self.progress.eos.set()
            return None
        if msg.kind not in ("embedding", "speech"):
            return None
        self.progress.received += msg.kind == "embedding"
        utt = msg.utterance
        if utt.station not in self.stations:
            self.stations.register(utt.station, utt.role, "remote", "online")
        try:
            return self.scoring.take(utt, embedded=msg.kind == "embedding")
        except Exception as exc:  # noqa: BLE001 - one bad utterance never stops the stage
            log.warning("score: %s seq %s failed: %s", utt.station, utt.seq, exc)
            self.metrics.drop(utt.station, "score_error")
            return None

    def _account(self, event: dict, utt: Utterance, arrived: float, scored: float, stored: float,
                 now: float) -> None:
        """The serve stage's spans, and the event's `latency_ms`: where its time went."""
        utt.spans.update(closing=latency.span(utt.emitted - utt.time),
                         to_serve=latency.span(arrived - (utt.encoded or arrived)),
                         score=latency.span(scored - arrived),
                         store=latency.span(stored - scored), publish=latency.span(now - stored))
        event["latency_ms"] = latency.milliseconds(utt.spans)
        self.metrics.observe_spans(utt.spans)
        self.metrics.observe_pieces(utt.pieces)
        self.metrics.event_latency.observe(max(0.0, now - utt.emitted))
        self.progress.latency.add(max(0.0, now - utt.emitted), time.monotonic())

    # ---- events no utterance caused
    async def publish_alerts(self, alerts: list[dict]) -> None:
        """Commit alert events that no utterance caused (a reload, a station leaving), then publish."""
        if alerts:
            await self.writer.commit([], (), alerts)
            self.broadcaster.alerts(alerts)

    async def publish_ended(self, ended: tuple[list[dict], list[dict]]) -> None:
        """Commit closed visits and the alerts they cleared, then publish."""
        closed, cleared = ended
        if closed:
            await self.writer.commit([], closed, cleared)
            self.broadcaster.visits(closed)
            self.broadcaster.alerts(cleared)

    async def close_visits(self) -> None:
        """At shutdown, before clients go: every open visit closed, stored and published."""
        await self.publish_ended(self.scoring.close_all())

    def prompts_changed(self, update=None) -> None:
        """Called on the loop when the prompt bank changed (`update`: what changed; the
        latest set is what is sent, whatever it says): clients hear of it at once, and
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
        self.scoring.keep_only(set(self.bank.emotions))
        self.report_unknown_emotions()
        self.metrics.prompt_errors.set(len(self.bank.errors))
        self.broadcaster.message(scorestream.prompts(self.bank.emotions.values(), self.bank.errors))

    def report_unknown_emotions(self) -> None:
        for rule in self.scoring.unknown_emotions(self.bank.emotions):
            log.warning("alerts: rule %r watches emotion %r, which no prompt file defines now; "
                        "it fires once there is one", rule.name, rule.emotion)

    # ---- on a timer
    async def _timer(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.rolling.interval_s)
            built: dict = {}  # one snapshot per distinct subscription, not per client

            def snapshot(client):
                key = None if client.session.stations is None else frozenset(client.session.stations)
                if key not in built:
                    built[key] = scorestream.rolling(time.time(), self.scoring.snapshots(),
                                                     self.stations.states(), client.session.stations)
                return built[key]
            self.broadcaster.each(snapshot)
            await self.writer.retry()  # a disk that came back takes what waited, even on a quiet floor
            await self.publish_ended(self.scoring.tick(time.time()))
            now = time.time()
            await self.publish_alerts([a for name in self.stations.expire()
                                       for a in self.scoring.forget(name, now)])
