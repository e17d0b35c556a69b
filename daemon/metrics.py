"""Prometheus metrics of the score/publish stage, in a registry of its own.

Counts from other stages (drops, overflows, encoder batches) arrive in `status`
messages and are recorded here, so one `/metrics` covers the whole pipeline.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STATES = ("starting", "online", "offline", "ended", "failed")


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.utterances = Counter("emoclap_utterances", "Utterances scored and published",
                                  ["station"], registry=r)
        self.speech = Counter("emoclap_speech_utterances",
                              "Utterances of roles whose emotions are not inferred (speech activity only)",
                              ["station"], registry=r)
        self.dropped = Counter("emoclap_dropped_utterances",
                               "Utterances dropped before publishing, by reason",
                               ["station", "reason"], registry=r)
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
                                        "Utterances that could not be written to the history", registry=r)
        self.prompt_errors = Gauge("emoclap_prompt_file_errors",
                                   "Prompt files not in use as written (refused or failing)", registry=r)
        self.upstream_age = Gauge("emoclap_upstream_silence_seconds",
                                  "Seconds since the encode stage last reported", registry=r)

    def set_state(self, station: str, state: str) -> None:
        for s in STATES:
            self.station_state.labels(station, s).set(1 if s == state else 0)

    def forget_station(self, station: str) -> None:
        """An expired station leaves every per-station series."""
        for metric, labels in ((self.utterances, (station,)), (self.overflows, (station,)),
                               (self.speech, (station,))):
            try:
                metric.remove(*labels)
            except KeyError:
                pass
        for s in STATES:
            try:
                self.station_state.remove(station, s)
            except KeyError:
                pass
        for metric in self.dropped.collect():
            for reason in {x.labels["reason"] for x in metric.samples if x.labels.get("station") == station}:
                try:
                    self.dropped.remove(station, reason)
                except KeyError:
                    pass

    def record_status(self, status: dict) -> None:
        for station, state in status.get("states", {}).items():
            self.set_state(station, state)
        for station, reason, n in status.get("dropped", []):
            self.dropped.labels(station, reason).inc(n)
        for station, n in status.get("overflows", {}).items():
            self.overflows.labels(station).inc(n)
        for name, value in status.get("gauges", {}).items():
            self.queue_depth.labels(name).set(value)
        for size, seconds in status.get("batches", []):
            self.batch_size.observe(size)
            self.batch_latency.observe(seconds)

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
