"""Prometheus metrics of the score/publish stage, in a registry of its own.

Counts from other stages (drops, overflows, encoder batches) arrive in `status`
messages and are recorded here, so one `/metrics` covers the whole pipeline.
"""
from __future__ import annotations

import collections

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from emoclap.fleet import PIECE_OUTCOMES

STATES = ("starting", "online", "offline", "ended", "failed")
# 1 ms to 5 s: a stage's p99 against the 300-ms budget is read off these
STAGE_BUCKETS = (.001, .0025, .005, .01, .025, .05, .075, .1, .15, .2, .3, .5, 1, 2.5, 5)


class RecentLatency:
    """Latencies of the last `window_s` seconds (at most `keep` of them, the newest) and
    their 99th percentile: whether scores are live now, not over the daemon's life."""

    def __init__(self, window_s: float = 60.0, keep: int = 20000):
        self.window_s = window_s
        self._values: collections.deque[tuple[float, float]] = collections.deque(maxlen=keep)

    def add(self, seconds: float, now: float) -> None:
        self._values.append((now, seconds))

    def p99(self, now: float) -> tuple[float, int] | None:
        """(p99, how many) over the window; None when nothing was published in it."""
        while self._values and self._values[0][0] <= now - self.window_s:
            self._values.popleft()
        if not self._values:
            return None
        ordered = sorted(v for _, v in self._values)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], len(ordered)


class RecentCounts:
    """Counts by reason over the last `window_s` seconds, in one-second buckets: what
    /healthz reports of refusals that happened lately, at any rate, in bounded memory."""

    def __init__(self, window_s: float = 60.0):
        self.window_s = window_s
        self._buckets: collections.deque[tuple[int, collections.Counter]] = collections.deque()

    def add(self, reason: str, now: float, n: int = 1) -> None:
        second = int(now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append((second, collections.Counter()))
        self._buckets[-1][1][reason] += n
        self._expire(now)

    def counts(self, now: float) -> dict[str, int]:
        self._expire(now)
        out: collections.Counter = collections.Counter()
        for _, c in self._buckets:
            out.update(c)
        return dict(out)

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            self._buckets.popleft()


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.totals = {"segmented": 0, "published": 0, "speech": 0}
        self.dropped_totals: collections.Counter[str] = collections.Counter()
        self.utterances = Counter("emoclap_utterances", "Utterances scored and published",
                                  ["station"], registry=r)
        self.insufficient = Counter("emoclap_insufficient",
                                    "Scored utterances flagged too poor to count (kept out of rolling "
                                    "scores, visits and alerts), by reason", ["station", "reason"], registry=r)
        self.speech = Counter("emoclap_speech_utterances",
                              "Utterances of roles whose emotions are not inferred (speech activity only)",
                              ["station"], registry=r)
        self.dropped = Counter("emoclap_dropped_utterances",
                               "Utterances dropped before publishing, by reason",
                               ["station", "reason"], registry=r)
        self.segmented = Counter("emoclap_segmented_utterances",
                                 "Utterances the segmenters cut (capture and ingest), every role: each "
                                 "ends published, as speech activity, or dropped with a reason",
                                 ["station"], registry=r)
        self.overflows = Counter("emoclap_input_overflows",
                                 "Audio blocks lost between sound card and segmenter",
                                 ["station"], registry=r)
        self.queue_depth = Gauge("emoclap_queue_depth", "Items waiting in a queue",
                                 ["queue"], registry=r)
        self.batch_size = Histogram("emoclap_encoder_batch_size", "Utterances per encoder batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.batch_latency = Histogram("emoclap_encoder_batch_seconds",
                                       "Encoder time per batch",
                                       buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5),
                                       registry=r)
        self.event_latency = Histogram("emoclap_event_latency_seconds",
                                       "From the segmenter emitting an utterance to publishing it",
                                       buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5),
                                       registry=r)
        self.stage_latency = Histogram("emoclap_stage_seconds",
                                       "Time an utterance spent in each stage, from its last audio to "
                                       "its event in the clients' queues (emoclap.latency)",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.pieces = Counter("emoclap_audio_pieces", "Pieces of scored utterances (a bundle encoded in "
                              "pieces), by when they were encoded: while the customer spoke (ahead) "
                              "or once the utterance had ended (at_close)", ["when"], registry=r)
        self.unused_pieces = Counter("emoclap_unused_pieces", "Pieces the encode workers did not use: "
                                     "refused (not the bundle's piece length, e.g. a capture agent's "
                                     "stages.piece_s; or a role not encoded early) or expired (held "
                                     "past their time: the utterance was dropped or went to another worker)",
                                     ["outcome"], registry=r)
        for outcome in PIECE_OUTCOMES:  # zero until the first, so a scrape sees the series
            self.unused_pieces.labels(outcome)
        self.fanout = Histogram("emoclap_fanout_seconds",
                                "From an event in a client's queue to its WebSocket send done, per client",
                                buckets=STAGE_BUCKETS, registry=r)
        self.station_state = Gauge("emoclap_station_state", "1 for the station's current state",
                                   ["station", "state"], registry=r)
        self.clients = Gauge("emoclap_ws_clients", "Connected WebSocket clients",
                             ["path"], registry=r)
        self.clients_closed = Counter("emoclap_ws_clients_closed_slow",
                                      "Clients closed for not keeping up", registry=r)
        self.ingest_errors = Counter("emoclap_ingest_errors", "Rejected /ingest messages",
                                     ["reason"], registry=r)
        self.rejected = Counter("emoclap_rejected_connections",
                                "Connections or requests refused at admission, by reason",
                                ["reason"], registry=r)
        self.history_failures = Counter("emoclap_history_write_failures",
                                        "History rows lost: refused by the disk past the waiting bound "
                                        "(64 MiB), or still refused at stop", registry=r)
        self.history_waiting = Gauge("emoclap_history_waiting_rows",
                                     "History rows the disk refused, waiting in memory to be written", registry=r)
        self.prompt_errors = Gauge("emoclap_prompt_file_errors",
                                   "Prompt files not in use as written (refused or failing)", registry=r)
        self.upstream_age = Gauge("emoclap_upstream_silence_seconds",
                                  "Seconds since an encode worker last reported", registry=r)
        self.workers_alive = Gauge("emoclap_workers_alive", "Encode workers the broker hears", registry=r)
        self.worker_inflight = Gauge("emoclap_worker_inflight", "Utterances given to an encode worker "
                                     "and not yet answered", ["worker"], registry=r)
        self.worker_age = Gauge("emoclap_worker_heartbeat_age_seconds",
                                "Seconds since an encode worker was last heard", ["worker"], registry=r)
        self.broker_queue = Gauge("emoclap_broker_queue_depth", "Utterances waiting for an encode worker",
                                  registry=r)
        self.backlog = Gauge("emoclap_backlog_utterances", "Utterances the gateway accepted and has "
                             "neither published nor counted dropped", registry=r)
        self.requeued = Counter("emoclap_requeued", "Utterances given to another encode worker after "
                                "theirs died, left or timed out", registry=r)
        self.duplicates = Counter("emoclap_duplicate_results", "Encode results discarded: already "
                                  "finished, not asked of that worker, or from a worker declared dead",
                                  registry=r)
        self.worker_bad_messages = Counter("emoclap_worker_bad_messages",
                                           "Messages from encode workers that break the protocol", registry=r)
        self.alerts = Counter("emoclap_alerts", "Alert events by rule and state (fired, cleared)",
                              ["rule", "state"], registry=r)
        self.webhook_deliveries = Counter(
            "emoclap_webhook_deliveries", "Alert webhook deliveries by outcome (ok; failed: every "
            "attempt failed; dropped: queue full or shutdown)", ["outcome"], registry=r)
        self.score = Gauge("emoclap_utterance_score", "The station's last scored utterance, per emotion and "
                           "path: fused (what rolling scores, visits and alerts use), audio, text",
                           ["station", "emotion", "path"], registry=r)
        self.transcribed = Counter("emoclap_transcribed_utterances", "Scored utterances whose words the "
                                   "text path read (the rest are scored on the audio path alone)",
                                   ["station"], registry=r)
        self.webhook_retries = Counter("emoclap_webhook_retries",
                                       "Webhook attempts repeated after a failed one", registry=r)

    def set_workers(self, workers: list[dict]) -> None:
        """Per-worker series from the broker's view; a departed worker's series go."""
        labels = {f"{w.get('host') or '?'}:{w.get('pid', 0)}/{w['id']}": w for w in workers}
        for metric in (self.worker_inflight, self.worker_age):
            for sample in [s for m in metric.collect() for s in m.samples]:
                if sample.labels["worker"] not in labels:
                    metric.remove(sample.labels["worker"])
        for label, w in labels.items():
            self.worker_inflight.labels(label).set(w["inflight"])
            self.worker_age.labels(label).set(w["heard_s"])
        self.workers_alive.set(len(workers))

    def observe_scores(self, event: dict) -> None:
        station = event["station"]
        for emotion, value in event.get("scores", {}).items():
            self.score.labels(station, emotion, "fused").set(value)
        parts = event.get("parts") or {}
        for path, scores in parts.items():
            for emotion, value in scores.items():
                self.score.labels(station, emotion, path).set(value)
        if "text" in parts:
            self.transcribed.labels(station).inc()

    def set_state(self, station: str, state: str) -> None:
        for s in STATES:
            self.station_state.labels(station, s).set(1 if s == state else 0)

    def forget_station(self, station: str) -> None:
        """An expired station leaves every per-station series."""
        for metric, labels in ((self.utterances, (station,)), (self.overflows, (station,)), (self.segmented, (station,)),
                               (self.speech, (station,)), (self.transcribed, (station,))):
            try:
                metric.remove(*labels)
            except KeyError:
                pass
        for s in STATES:
            try:
                self.station_state.remove(station, s)
            except KeyError:
                pass
        for sample in [x for m in self.score.collect() for x in m.samples if x.labels["station"] == station]:
            try:
                self.score.remove(station, sample.labels["emotion"], sample.labels["path"])
            except KeyError:
                pass
        for counter in (self.dropped, self.insufficient):
            for metric in counter.collect():
                for reason in {x.labels["reason"] for x in metric.samples if x.labels.get("station") == station}:
                    try:
                        counter.remove(station, reason)
                    except KeyError:
                        pass

    def record_status(self, status: dict) -> None:
        for station, state in status.get("states", {}).items():
            self.set_state(station, state)
        for station, reason, n in status.get("dropped", []):
            self.drop(station, reason, n)
        for station, n in status.get("overflows", {}).items():
            self.overflows.labels(station).inc(n)
        for station, n in status.get("segmented", {}).items():
            self.segmented.labels(station).inc(n)
            self.totals["segmented"] += n
        for name, value in status.get("gauges", {}).items():
            self.queue_depth.labels(name).set(value)
        for size, seconds in status.get("batches", []):
            self.batch_size.observe(size)
            self.batch_latency.observe(seconds)

    def observe_spans(self, spans: dict[str, float]) -> None:
        for stage, seconds in spans.items():
            self.stage_latency.labels(stage).observe(seconds)

    def observe_pieces(self, pieces: tuple[int, int] | None) -> None:
        if pieces is not None:
            self.pieces.labels("ahead").inc(pieces[0])
            self.pieces.labels("at_close").inc(pieces[1] - pieces[0])

    def drop(self, station: str, reason: str, n: int = 1) -> None:
        self.dropped.labels(station, reason).inc(n)
        self.dropped_totals[reason] += n

    def accounting(self) -> dict:
        """Every utterance the segmenters cut, and where it went, over the daemon's life
        (kept when expired stations leave the per-station series). `bad_message` counts
        messages that could not be read, not utterances."""
        return {**self.totals, "dropped": dict(self.dropped_totals)}

    def drop_counts(self) -> dict[str, float]:
        """Drops by reason, summed over stations (for /healthz and tests)."""
        out: dict[str, float] = {}
        for metric in self.dropped.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    reason = sample.labels["reason"]
                    out[reason] = out.get(reason, 0) + sample.value
        return out

    def render(self) -> bytes:
        return generate_latest(self.registry)
