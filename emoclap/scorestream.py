"""The `/ws` score-stream protocol (version 1), free of I/O.

Server → client: `hello` on connect, `utterance` per scored utterance, `rolling`
snapshots, `visit` (made by `emoclap.visits`), `alert` (made by `emoclap.alerts`),
`prompts` when the emotion set changes,
`subscribed` and `error` answers.
Client → server: `subscribe` (a station filter). `ScoreSession` is one client's side
of the conversation; `ClientQueue` is its send policy. The host (an asyncio server)
only moves text between these and a socket.
"""
from __future__ import annotations

import json
from collections import deque
from typing import Iterable

from emoclap.prompts import Emotion
from emoclap.record import rounded

PROTOCOL_VERSION = 1
MAX_SUBSCRIBED = 1024  # stations one subscription may name


def error(reason: str, message: str) -> dict:
    return {"type": "error", "reason": reason, "message": message}


def emotions_list(emotions: Iterable[Emotion]) -> list[dict]:
    return [{"name": e.name, "label": e.label, "negative": e.negative.label, "positive": e.positive.label,
             "roles": list(e.roles) if e.roles is not None else None} for e in emotions]


def errors_list(errors: dict[str, str] | None) -> list[dict]:
    return [{"file": path, "message": message} for path, message in (errors or {}).items()]


def hello(emotions: Iterable[Emotion], stations: list[dict], prompt_errors: dict[str, str] | None = None,
          scored_roles: Iterable[str] = ("customer",), alerts: Iterable[dict] = (),
          visits: Iterable[dict] = ()) -> dict:
    """`alerts`: the active (fired, not cleared) `alert` events; `visits`: each open visit's
    latest `visit` event; so a client that connects mid-visit or mid-alert shows them."""
    return {"type": "hello", "version": PROTOCOL_VERSION, "emotions": emotions_list(emotions),
            "stations": stations, "prompt_errors": errors_list(prompt_errors),
            "scored_roles": list(scored_roles), "alerts": list(alerts), "visits": list(visits)}


def prompts(emotions: Iterable[Emotion], errors: dict[str, str] | None = None) -> dict:
    """The emotion set in use, and the prompt files not in use as written (file → reason)."""
    return {"type": "prompts", "emotions": emotions_list(emotions), "errors": errors_list(errors)}


def rolling(now: float, snapshots: dict[str, dict], states: dict[str, str],
            stations: set[str] | None = None) -> dict:
    """Every (subscribed) station's rolling scores (role → emotion) and state; the states
    let an open dashboard see a station go offline or end without waiting for an utterance."""
    return {"type": "rolling", "time": round(now, 3),
            "stations": {name: {role: rounded(per) for role, per in snap.items()}
                         for name, snap in snapshots.items() if stations is None or name in stations},
            "states": {name: state for name, state in states.items()
                       if stations is None or name in stations}}


def dumps(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


class ScoreSession:
    """One client of `/ws`: its station filter and its answers to client messages."""

    def __init__(self):
        self.stations: set[str] | None = None  # None: every station

    def wants(self, station: str | None) -> bool:
        return station is None or self.stations is None or station in self.stations

    def on_text(self, message: str | bytes) -> dict:
        """The reply to one client message."""
        try:
            msg = json.loads(message) if isinstance(message, str) else None
        except (json.JSONDecodeError, RecursionError):
            msg = None
        if not isinstance(msg, dict) or msg.get("type") != "subscribe":
            return error("bad_message", 'expected {"type": "subscribe", "stations": [...] or null}')
        stations = msg.get("stations")
        if stations is not None and not (isinstance(stations, list) and len(stations) <= MAX_SUBSCRIBED
                                         and all(isinstance(s, str) for s in stations)):
            return error("bad_message", f"stations: expected a list of at most {MAX_SUBSCRIBED} names, or null")
        self.stations = set(stations) if stations is not None else None
        return {"type": "subscribed", "stations": stations}


class ClientQueue:
    """A client's outgoing messages: a queued `rolling` snapshot is replaced by a newer
    one, a full queue sheds its oldest snapshots first, and when only events remain the
    client is declared too slow (events are never dropped silently)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.items: deque[tuple[str, str, float]] = deque()  # kind, text, when it was queued
        self.shed = 0  # stale snapshots dropped
        self.full = False

    def put(self, kind: str, text: str, at: float = 0.0) -> bool:
        """Queue a message (`at`: the host's clock, for the time it waits); False means
        the client cannot keep up and must go."""
        if self.full:
            return False
        if kind == "rolling":
            self._remove_rolling()
        if len(self.items) >= self.limit and not self._remove_rolling():
            self.full = True
            return False
        self.items.append((kind, text, at))
        return True

    def _remove_rolling(self) -> int:
        for item in self.items:
            if item[0] == "rolling":
                self.items.remove(item)
                self.shed += 1
                return 1
        return 0

    def get(self) -> tuple[str, str, float] | None:
        return self.items.popleft() if self.items else None

    def __len__(self) -> int:
        return len(self.items)
