"""The framed message that travels between stages over ZeroMQ.

A message is two frames: a UTF-8 JSON header and a raw little-endian float32 payload
(an utterance's 16 kHz audio, or its embedding; empty for status messages). The
header carries `v` (format version) and `kind`:

- `segment`   capture/ingest -> encode: station, role, start, end, t0 (wall-clock
              time the station's stream began), emitted (wall-clock send time), seq
- `embedding` encode -> score: the segment header plus `encode_s`, `batch`
- `status`    any stage -> downstream: station states, drop counts by reason since the
              last status that got through, encoder batch observations
- `eos`       end of stream: the sender has drained everything it accepted
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

VERSION = 1
KINDS = ("segment", "embedding", "status", "eos")


class WireError(ValueError):
    """A message that does not follow the format; the stage counts and skips it."""


@dataclass
class Message:
    kind: str
    header: dict = field(default_factory=dict)
    payload: np.ndarray | None = None

    def get(self, key, default=None):
        return self.header.get(key, default)


def encode(msg: Message) -> list[bytes]:
    header = dict(msg.header, v=VERSION, kind=msg.kind)
    payload = b"" if msg.payload is None else np.ascontiguousarray(
        msg.payload, dtype="<f4").tobytes()
    return [json.dumps(header, separators=(",", ":")).encode(), payload]


def decode(frames: list[bytes]) -> Message:
    if len(frames) != 2:
        raise WireError(f"expected 2 frames, got {len(frames)}")
    try:
        header = json.loads(frames[0])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"bad header: {exc}") from None
    if not isinstance(header, dict) or header.get("v") != VERSION:
        raise WireError(f"unsupported header version {header.get('v') if isinstance(header, dict) else header!r}")
    kind = header.pop("kind", None)
    header.pop("v")
    if kind not in KINDS:
        raise WireError(f"unknown kind {kind!r}")
    if len(frames[1]) % 4:
        raise WireError("payload is not whole float32 values")
    payload = np.frombuffer(frames[1], dtype="<f4") if frames[1] else None
    return Message(kind, header, payload)
