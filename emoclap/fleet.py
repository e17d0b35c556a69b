"""The encode fleet's protocol: N encode workers behind the gateway's broker.

zguide chapter 4's Paranoid Pirate pattern with chapter 7's credit-based flow control.
Workers CONNECT a DEALER to the broker's ROUTER, so any number can join or leave at run
time. A worker says READY with its credit (how many requests it may hold); both ends
heartbeat, and a peer silent for `liveness` intervals is dead (the worker then
reconnects with a fresh socket). Edges only PUSH, so the broker owns the retries; its
bookkeeping is `emoclap.dispatcher`.

A request is one utterance, keyed (station, t0, seq): `seq` restarts when a capture
agent restarts a station, the stream's start time `t0` does not repeat.

Frames (after the ROUTER's identity frame): [PROTOCOL, command, *body]

- worker → broker: READY [json credit, name, host, pid]; HEARTBEAT [json pending,
  batches, problem, pong, held, pieces] or [] (`pieces`: the pieces it did not use since
  its last heartbeat, by outcome); RESULT [a `wire` embedding or speech message];
  DROP [json station, t0, seq, reason]; BYE [] (leaving: requeue what it still holds)
- broker → worker: WORK [a `wire` segment message]; PIECE [a `wire` piece message: a
  piece of an utterance still being spoken, for the worker its utterance will go to, to
  encode ahead; no answer, nothing to retry]; HEARTBEAT [json ping] or [];
  RECONNECT [] (you are not known here: connect again and say READY)

A broker heartbeat's `ping` (the broker's own clock) comes back as the worker's next
heartbeat's `pong`, with `held`, the seconds the worker kept it: the broker's time then,
less `pong` and `held`, is the link's round trip.

Pure: no sockets, no clocks; every call that needs the time is given `now`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from emoclap import wire

PROTOCOL = b"EMOCLAP-FLEET/3"  # 2: heartbeats carry the round-trip ping; 3: PIECE
# Why a worker did not use a piece: `refused`, not its bundle's piece length (a capture
# agent cutting other pieces) or a role its policy does not encode early; `expired`, held
# past its time because its utterance never came (dropped, or sent to another worker).
PIECE_OUTCOMES = ("refused", "expired")
TO_BROKER = (b"READY", b"HEARTBEAT", b"RESULT", b"DROP", b"BYE")
TO_WORKER = (b"WORK", b"PIECE", b"HEARTBEAT", b"RECONNECT")
WORKER_DROPS = ("too_short", "encoder_error")  # reasons a worker may give for a drop
MAX_CREDIT = 4096
MAX_CONTROL_BYTES = 65536  # a JSON body of a control command
MAX_TEXT = 256
MAX_BATCHES = 1000


class FleetError(wire.WireError):
    """A fleet message that does not follow the protocol; counted and skipped."""


@dataclass
class Command:
    name: str  # READY, HEARTBEAT, ...
    fields: dict = field(default_factory=dict)  # the JSON body of a control command
    message: wire.Message | None = None  # WORK, PIECE, RESULT: the stage message inside
    frames: list[bytes] = field(default_factory=list)  # ... and its frames, to pass on


def key_of(utt) -> tuple[str, float, int]:
    return (utt.station, utt.t0, utt.seq)


# ---- encoding
def _control(name: bytes, body: dict | None = None) -> list[bytes]:
    frames = [PROTOCOL, name]
    if body is not None:
        frames.append(json.dumps(body, separators=(",", ":"), allow_nan=False).encode())
    return frames


def ready(credit: int, name: str = "", host: str = "", pid: int = 0) -> list[bytes]:
    return _control(b"READY", {"credit": credit, "name": name[:MAX_TEXT], "host": host[:MAX_TEXT],
                               "pid": pid})


def heartbeat(pending: int | None = None, batches: list | None = None,
              problem: str | None = None, pong: tuple[float, float] | None = None,
              pieces: dict[str, int] | None = None) -> list[bytes]:
    """`problem`: what keeps the worker's encoder from working (e.g. its Triton server
    is unreachable), for the gateway's /healthz; None when it works. `pong`: the last
    broker ping and the seconds it was held. `pieces`: pieces not used since the last
    heartbeat, by outcome (zero counts left out)."""
    pieces = {k: n for k, n in (pieces or {}).items() if n}
    if pending is None and batches is None and problem is None and pong is None and not pieces:
        return _control(b"HEARTBEAT")
    body = {"pending": pending or 0, "batches": [list(b) for b in (batches or [])[-MAX_BATCHES:]]}
    if problem:
        body["problem"] = problem[:MAX_TEXT]
    if pong is not None:
        body["pong"], body["held"] = pong[0], max(0.0, pong[1])
    if pieces:
        body["pieces"] = pieces
    return _control(b"HEARTBEAT", body)


def result(frames: list[bytes]) -> list[bytes]:
    return [PROTOCOL, b"RESULT", *frames]


def drop(key: tuple, reason: str) -> list[bytes]:
    station, t0, seq = key
    return _control(b"DROP", {"station": station, "t0": t0, "seq": seq, "reason": reason})


def bye() -> list[bytes]:
    return _control(b"BYE")


def work(frames: list[bytes]) -> list[bytes]:
    return [PROTOCOL, b"WORK", *frames]


def piece(frames: list[bytes]) -> list[bytes]:
    return [PROTOCOL, b"PIECE", *frames]


def broker_heartbeat(ping: float | None = None) -> list[bytes]:
    return _control(b"HEARTBEAT") if ping is None else _control(b"HEARTBEAT", {"ping": ping})


def reconnect() -> list[bytes]:
    return _control(b"RECONNECT")


# ---- decoding
def _count(v, top: int = 2**53) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top


def _text(v, allow_empty: bool = True) -> bool:
    return isinstance(v, str) and len(v) <= MAX_TEXT and (allow_empty or bool(v))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


BODY_RULES = {
    b"READY": {"credit": lambda v: _count(v, MAX_CREDIT), "name": _text, "host": _text,
               "pid": lambda v: _count(v, 2**31)},
    b"HEARTBEAT": {"pending": _count,
                   "batches": lambda v: isinstance(v, list) and len(v) <= MAX_BATCHES and all(
                       isinstance(b, list) and len(b) == 2 and _count(b[0], MAX_CREDIT) and _finite(b[1])
                       and b[1] >= 0 for b in v),
                   "problem": lambda v: _text(v, allow_empty=False),
                   "ping": _finite, "pong": _finite, "held": lambda v: _finite(v) and 0 <= v <= 3600,
                   "pieces": lambda v: isinstance(v, dict) and all(
                       k in PIECE_OUTCOMES and _count(n, 2**31) for k, n in v.items())},
    b"DROP": {"station": lambda v: _text(v, allow_empty=False), "t0": _finite, "seq": _count,
              "reason": lambda v: v in WORKER_DROPS},
}
REQUIRED = {b"READY": ("credit",), b"DROP": ("station", "t0", "seq", "reason")}


def _body(name: bytes, frames: list[bytes]) -> dict:
    what = name.decode()
    if not frames:
        if name in REQUIRED:
            raise FleetError(f"{what}: missing its body")
        return {}
    if len(frames) != 1:
        raise FleetError(f"{what}: expected one body frame, got {len(frames)}")
    if len(frames[0]) > MAX_CONTROL_BYTES:
        raise FleetError(f"{what}: body over {MAX_CONTROL_BYTES} bytes")
    try:
        body = json.loads(frames[0])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FleetError(f"{what}: bad body: {exc}") from None
    if not isinstance(body, dict):
        raise FleetError(f"{what}: the body is not an object")
    rules = BODY_RULES.get(name, {})
    for key, value in body.items():
        if key not in rules:
            raise FleetError(f"{what}: unknown field {key[:40]!r}")
        if not rules[key](value):
            raise FleetError(f"{what}: field {key!r} is malformed")
    for key in REQUIRED.get(name, ()):
        if key not in body:
            raise FleetError(f"{what}: field {key!r} is missing")
    return body


def decode(frames: list[bytes], to: str) -> Command:
    """Frames sent to the `broker` or to a `worker` → a checked `Command`."""
    if len(frames) < 2 or frames[0] != PROTOCOL:
        raise FleetError(f"not a {PROTOCOL.decode()} message")
    name, body = frames[1], list(frames[2:])
    allowed = TO_BROKER if to == "broker" else TO_WORKER
    if name not in allowed:
        raise FleetError(f"unknown command {name[:20]!r} for a {to}")
    text = name.decode()
    if name in (b"RESULT", b"WORK", b"PIECE"):
        msg = wire.decode(body)  # WireError names the problem
        kinds = {b"RESULT": ("embedding", "speech"), b"WORK": ("segment",), b"PIECE": ("piece",)}[name]
        if msg.kind not in kinds:
            raise FleetError(f"{text}: carries a {msg.kind} message")
        return Command(text, message=msg, frames=body)
    if name in BODY_RULES:
        return Command(text, _body(name, body))
    if body:
        raise FleetError(f"{text}: has no body")
    return Command(text)


class Liveness:
    """The broker as one worker sees it (Paranoid Pirate): heard within interval ×
    liveness or dead; reconnect after a delay that doubles from one interval to `cap_s`."""

    def __init__(self, interval_s: float, liveness: int, now: float, cap_s: float = 8.0):
        self.interval_s, self.liveness, self.cap_s = interval_s, liveness, cap_s
        self.heard_at = self.pinged = now
        self.delay_s = interval_s

    def heard(self, now: float) -> None:
        self.heard_at = now
        self.delay_s = self.interval_s

    def dead(self, now: float) -> bool:
        return now - self.heard_at > self.interval_s * self.liveness

    def ping_due(self, now: float) -> bool:
        if now - self.pinged >= self.interval_s:
            self.pinged = now
            return True
        return False

    def backoff(self, now: float) -> float:
        """The delay before the next reconnect; doubles until one is heard again."""
        delay, self.delay_s = self.delay_s, min(self.delay_s * 2, self.cap_s)
        self.heard_at = now + delay  # a fresh socket gets its full liveness
        return delay
