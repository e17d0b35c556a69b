"""The score stage: embeddings in, `utterance` events out (history first, then clients).

It owns the per-station rolling scores and the station table, turns `status`
messages into metrics, and builds every server -> client message except errors.
"""
from __future__ import annotations

import logging
import time

from . import wire
from .config import Config
from .history import History
from .metrics import Metrics
from .rolling import RollingScores
from .scoring import score_utterance

log = logging.getLogger("emoclapd.publisher")

PROTOCOL_VERSION = 1


def emotions_list(emotions: dict) -> list[dict]:
    return [{"name": e.name, "label": e.label,
             "negative": e.negative.label, "positive": e.positive.label,
             "roles": list(e.roles) if e.roles is not None else None}
            for e in emotions.values()]


class Publisher:
    def __init__(self, cfg: Config, bank, metrics: Metrics, history: History | None):
        self.cfg = cfg
        self.bank = bank
        self.metrics = metrics
        self.history = history
        self.rolling: dict[str, RollingScores] = {}
        self.stations: dict[str, dict] = {}
        self.published = 0
        self.eos = 0
        for s in cfg.stations:
            self.register(s.name, s.role, s.source, "starting")

    def register(self, name: str, role: str, source: str, state: str) -> None:
        entry = self.stations.setdefault(name, {"name": name, "role": role, "source": source})
        entry.update(role=role, source=source)
        self.set_state(name, state)

    def set_state(self, name: str, state: str) -> None:
        entry = self.stations.setdefault(name, {"name": name, "role": "auto", "source": "remote"})
        entry["state"] = state
        self.metrics.set_state(name, state)

    def on_message(self, msg: wire.Message) -> dict | None:
        """Handle one message from the encode stage; an `utterance` event when there is one."""
        if msg.kind == "status":
            for name, state in msg.get("states", {}).items():
                self.set_state(name, state)
            self.metrics.record_status(msg.header)
            return None
        if msg.kind == "eos":
            self.eos += 1
            return None
        if msg.kind != "embedding":
            return None
        station = msg.get("station", "?")
        try:
            return self._score(msg)
        except Exception as exc:  # noqa: BLE001 - one bad utterance never stops the stage
            log.warning("score: %s seq %s failed: %s", station, msg.get("seq"), exc)
            self.metrics.dropped.labels(station, "score_error").inc()
            return None

    def _score(self, msg: wire.Message) -> dict:
        h = msg.header
        dim = int(h["dim"])
        embedding, audio = msg.payload[:dim], msg.payload[dim:]
        station, role = h["station"], h.get("role", "auto")
        scores = score_utterance(embedding, self.bank, None if role == "auto" else role)
        end_wall = float(h["t0"]) + float(h["end"])
        rolling = self.rolling.setdefault(station, RollingScores(self.cfg.rolling.half_life_s))
        duration = float(h["end"]) - float(h["start"])
        rolling.update(role, end_wall, duration, scores)
        if station not in self.stations:
            self.register(station, role, "remote", "online")
        event = {
            "type": "utterance", "station": station, "role": role, "seq": h.get("seq"),
            "start": round(float(h["start"]), 3), "end": round(float(h["end"]), 3),
            "duration": round(duration, 3), "time": round(end_wall, 3),
            "scores": {k: round(v, 4) for k, v in scores.items()},
            "rolling": _rounded(rolling.snapshot().get(role, {})),
        }
        if self.history is not None:
            try:
                self.history.write(event, audio if audio.size else None)
            except Exception as exc:  # noqa: BLE001 - publish even when the disk fails
                log.error("history: cannot write %s seq %s: %s", station, h.get("seq"), exc)
        self.published += 1
        self.metrics.utterances.labels(station).inc()
        self.metrics.event_latency.observe(max(0.0, time.time() - float(h.get("emitted", time.time()))))
        return event

    def hello(self) -> dict:
        return {"type": "hello", "version": PROTOCOL_VERSION,
                "emotions": emotions_list(self.bank.emotions),
                "stations": [dict(s) for s in self.stations.values()]}

    def prompts_message(self) -> dict:
        return {"type": "prompts", "emotions": emotions_list(self.bank.emotions)}

    def rolling_message(self, stations: set[str] | None = None) -> dict:
        """Rolling scores and station states; the states let an open dashboard see a
        station go offline or end without waiting for an utterance."""
        return {"type": "rolling", "time": round(time.time(), 3),
                "stations": {name: _nested(r.snapshot()) for name, r in self.rolling.items()
                             if stations is None or name in stations},
                "states": {name: s["state"] for name, s in self.stations.items()
                           if stations is None or name in stations}}

    def forget_missing(self) -> None:
        """After a prompt change: rolling scores of removed emotions go too."""
        names = set(self.bank.emotions)
        for r in self.rolling.values():
            for per_role in r.snapshot().values():
                for emotion in set(per_role) - names:
                    r.forget(emotion)


def _rounded(per_emotion: dict) -> dict:
    return {k: {"score": round(v["score"], 4), "count": v["count"],
                "updated": round(v["updated"], 3)} for k, v in per_emotion.items()}


def _nested(snapshot: dict) -> dict:
    return {role: _rounded(per) for role, per in snapshot.items()}
