"""The `/ingest` session protocol, free of I/O.

A client sends one JSON text message `{"type": "start", "station": ..., "role": ...,
"sample_rate": ...}`, then binary frames of signed 16-bit little-endian mono samples.
Each bad message gets an `error` reply and the session goes on; frames beyond the
size limit or ahead of the allowed pace are refused one by one. A client that errs
more than `max_errors` times within `error_window_s` is broken or hostile: `abusive`
turns true and the host closes the connection (what it sent before stays accepted). On close the
station's segmenter is flushed, so the last utterance is not lost.

Free of I/O: the host reads messages, passes them in, sends the replies back and the
finished utterances on to the encoder. `on_binary` touches only its own session, so a
host may run it off its event loop.
"""
from __future__ import annotations

import json
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from emoclap.record import ROLES, Utterance
from emoclap.station import StationStream

RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
STATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


@dataclass
class IngestLimits:
    max_frame_bytes: int = 32000
    max_rate: float = 1.5  # audio seconds per wall-clock second
    burst_s: float = 5.0
    max_errors: int = 20  # refused messages within error_window_s before the session is closed
    error_window_s: float = 10.0


class IngestRefused(Exception):
    """A `start` the server cannot accept (`reason` is the error code)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def error(reason: str, message: str) -> dict:
    return {"type": "error", "reason": reason, "message": message}


class IngestSession:
    """`open_station(name, role, rate)` returns the station's `StationStream`, or raises
    `IngestRefused` (a station already in use, a server shutting down)."""

    def __init__(self, limits: IngestLimits, open_station: Callable[[str, str, int], StationStream],
                 clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.open_station = open_station
        self.clock = clock
        self.stream: StationStream | None = None
        self.station: str | None = None
        self.rate = 16000
        self.started_at = 0.0
        self.audio_s = 0.0
        self.errors = 0
        self._recent_errors: deque[float] = deque()

    @property
    def abusive(self) -> bool:
        """More than `max_errors` refusals within the last `error_window_s`."""
        return len(self._recent_errors) > self.limits.max_errors

    def _fail(self, reason: str, message: str) -> list[dict]:
        self.errors += 1
        now = self.clock()
        self._recent_errors.append(now)
        while self._recent_errors and self._recent_errors[0] <= now - self.limits.error_window_s:
            self._recent_errors.popleft()
        return [error(reason, message)]

    def on_text(self, text: str) -> list[dict]:
        try:
            msg = json.loads(text)
        except json.JSONDecodeError as exc:
            return self._fail("bad_json", f"not JSON: {exc}")
        except RecursionError:
            return self._fail("bad_json", "not JSON: nested too deeply")
        if not isinstance(msg, dict) or msg.get("type") != "start":
            return self._fail("bad_message", "expected {\"type\": \"start\", ...}")
        if self.stream is not None:
            return self._fail("already_started", f"station {self.station} already started")
        station, role = msg.get("station"), msg.get("role", "auto")
        rate = msg.get("sample_rate", 16000)
        if not isinstance(station, str) or not STATION_NAME.match(station):
            return self._fail("bad_start", "station: expected 1-64 letters, digits, '.', '_', ':' or '-'")
        if role not in ROLES:
            return self._fail("bad_start", f"role: expected one of {', '.join(ROLES)}")
        if rate not in RATES or isinstance(rate, bool):
            return self._fail("bad_start", f"sample_rate: expected one of {RATES}")
        try:
            self.stream = self.open_station(station, role, rate)
        except IngestRefused as exc:
            return self._fail(exc.reason, str(exc))
        self.station, self.rate = station, rate
        self.started_at = self.clock()
        return [{"type": "started", "station": station, "role": role, "sample_rate": rate}]

    def on_binary(self, data: bytes) -> tuple[list[dict], list[Utterance]]:
        """(replies, utterances the frame finished)."""
        if self.stream is None:
            return self._fail("not_started", "send a start message before audio"), []
        if len(data) > self.limits.max_frame_bytes:
            return self._fail("frame_too_large", f"frame of {len(data)} bytes; the limit is "
                              f"{self.limits.max_frame_bytes}"), []
        if not data or len(data) % 2:
            return self._fail("bad_frame", f"frame of {len(data)} bytes is not whole 16-bit samples"), []
        seconds = len(data) / 2 / self.rate
        allowed = self.limits.burst_s + self.limits.max_rate * (self.clock() - self.started_at)
        if self.audio_s + seconds > allowed:
            return self._fail("rate_limited", f"audio is arriving faster than "
                              f"{self.limits.max_rate}x real time; frame dropped"), []
        self.audio_s += seconds
        return [], self.stream.feed(np.frombuffer(data, "<i2"))

    def close(self) -> list[Utterance]:
        """End of the session: the utterance in progress, flushed."""
        return self.stream.finish() if self.stream is not None else []
