"""The messages that travel between stages: handed over as `Message` objects inside
one process, framed for ZeroMQ between processes.

A message is two frames: a UTF-8 JSON header and a raw little-endian float32 payload.
The header carries `v` (format version) and `kind`:

- `segment`   capture/ingest → encode: the utterance's header fields
              (`record.HEADER_FIELDS`); payload: its 16 kHz audio
- `embedding` encode → score: the segment header plus `dim`, `encoded` and, where the
              text path read words, `text_dim` (and `transcript` only where the encode
              stage is configured to pass transcripts on); payload: the audio embedding
              (`dim` values), the transcript's embedding (`text_dim`), then the audio when
              it is to be stored
- `piece`     capture/ingest → encode: a whole piece of an utterance still being spoken,
              for a bundle encoded in pieces (`record.piece_header`); payload: its audio.
              Best effort: a piece lost costs only time, the utterance is encoded whole
- `speech`    capture/ingest → encode → score: an utterance of a role whose emotions are
              not inferred (privacy policy): the header only, no audio, never embedded
- `status`    any stage → downstream: station states, drop counts by reason since the
              last status that got through, encoder batch observations; no payload
- `eos`       end of stream: the sender has drained everything it accepted
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from emoclap.record import Piece, Utterance, from_header, header, piece_from_header, piece_header

VERSION = 1
KINDS = ("segment", "embedding", "speech", "status", "eos", "piece")
MAX_PIECE_SAMPLES = 30 * 16_000


class WireError(ValueError):
    """A message that does not follow the format; the stage counts and skips it."""


@dataclass
class Message:
    kind: str
    header: dict = field(default_factory=dict)
    utterance: Utterance | None = None  # segment and embedding messages
    piece: Piece | None = None  # piece messages

    def get(self, key, default=None):
        return self.header.get(key, default)


def _frames(kind: str, fields: dict, payload: np.ndarray | None = None) -> list[bytes]:
    head = dict(fields, v=VERSION, kind=kind)
    data = b"" if payload is None else np.ascontiguousarray(payload, dtype="<f4").tobytes()
    return [json.dumps(head, separators=(",", ":"), allow_nan=False).encode(), data]


def segment(utt: Utterance) -> list[bytes]:
    audio = utt.audio if utt.audio is not None else np.zeros(0, np.float32)
    return _frames("segment", header(utt), audio)


MAX_TRANSCRIPT_CHARS = 4000


def embedding(utt: Utterance, with_audio: bool = False, with_transcript: bool = False) -> list[bytes]:
    emb = np.asarray(utt.embedding, np.float32).reshape(-1)
    parts, fields = [emb], dict(header(utt), dim=int(emb.size))
    if utt.text_embedding is not None:
        text = np.asarray(utt.text_embedding, np.float32).reshape(-1)
        parts.append(text)
        fields["text_dim"] = int(text.size)
    if with_transcript and utt.transcript is not None:
        fields["transcript"] = utt.transcript[:MAX_TRANSCRIPT_CHARS]
    if with_audio and utt.audio is not None:
        parts.append(np.asarray(utt.audio, np.float32).reshape(-1))
    return _frames("embedding", fields, np.concatenate(parts) if len(parts) > 1 else emb)


def speech(utt: Utterance) -> list[bytes]:
    return _frames("speech", header(utt))


def piece(p: Piece) -> list[bytes]:
    return _frames("piece", piece_header(p), p.audio)


def status(fields: dict) -> list[bytes]:
    return _frames("status", fields)


def eos() -> list[bytes]:
    return _frames("eos", {})


def encode(msg: Message, with_audio: bool = False, with_transcript: bool = False) -> list[bytes]:
    """A message as frames: what `decode` reads back (a stage that handed it over inside
    its process serialises it only where it leaves the process)."""
    if msg.kind == "segment":
        return segment(msg.utterance)
    if msg.kind == "embedding":
        return embedding(msg.utterance, with_audio, with_transcript)
    if msg.kind == "speech":
        return speech(msg.utterance)
    if msg.kind == "piece":
        return piece(msg.piece)
    if msg.kind == "status":
        return status(msg.header)
    if msg.kind == "eos":
        return eos()
    raise WireError(f"unknown kind {msg.kind!r}")


STATES = ("starting", "online", "offline", "ended", "failed")
MAX_STATUS_ENTRIES = 4096


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_status(head: dict) -> None:
    """Every field a status message may carry, with its shape; a bad one names itself."""
    checks = {
        "states": lambda v: isinstance(v, dict) and all(isinstance(k, str) and x in STATES
                                                         for k, x in v.items()),
        "dropped": lambda v: isinstance(v, list) and all(
            isinstance(x, list) and len(x) == 3 and isinstance(x[0], str) and isinstance(x[1], str)
            and _count(x[2]) for x in v),
        "overflows": lambda v: isinstance(v, dict) and all(isinstance(k, str) and _count(x) for k, x in v.items()),
        "segmented": lambda v: isinstance(v, dict) and all(isinstance(k, str) and _count(x) for k, x in v.items()),
        "gauges": lambda v: isinstance(v, dict) and all(isinstance(k, str) and _number(x) for k, x in v.items()),
        "batches": lambda v: isinstance(v, list) and all(
            isinstance(x, list) and len(x) == 2 and _count(x[0]) and _number(x[1]) for x in v),
    }
    for key, value in head.items():
        if key not in checks:
            raise WireError(f"status: unknown field {key!r}")
        if isinstance(value, (list, dict)) and len(value) > MAX_STATUS_ENTRIES:
            raise WireError(f"status: field {key!r} has more than {MAX_STATUS_ENTRIES} entries")
        if not checks[key](value):
            raise WireError(f"status: field {key!r} is malformed")


def decode(frames: list[bytes]) -> Message:
    if len(frames) != 2:
        raise WireError(f"expected 2 frames, got {len(frames)}")
    try:
        head = json.loads(frames[0])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"bad header: {exc}") from None
    if not isinstance(head, dict) or head.get("v") != VERSION:
        raise WireError(f"unsupported header version {head.get('v') if isinstance(head, dict) else head!r}")
    kind = head.pop("kind", None)
    head.pop("v")
    if kind not in KINDS:
        raise WireError(f"unknown kind {kind!r}")
    if len(frames[1]) % 4:
        raise WireError("payload is not whole float32 values")
    payload = np.frombuffer(frames[1], dtype="<f4")
    if kind == "piece":
        if not 0 < payload.size <= MAX_PIECE_SAMPLES or not np.isfinite(payload).all():
            raise WireError(f"piece: the payload must be 1 to {MAX_PIECE_SAMPLES} finite samples")
        try:
            return Message(kind, head, piece=piece_from_header(head, payload))
        except ValueError as exc:
            raise WireError(f"piece: {exc}") from None
    if kind in ("status", "eos"):
        if payload.size:
            raise WireError(f"a {kind} message has no payload")
        if kind == "status":
            _check_status(head)
        return Message(kind, head)
    try:
        utt = from_header(head)
    except ValueError as exc:
        raise WireError(f"{kind}: {exc}") from None
    if not np.isfinite(payload).all():
        raise WireError(f"{kind}: payload has non-finite values")
    if kind == "speech":
        if payload.size:
            raise WireError("a speech message has no payload")
    elif kind == "segment":
        utt.audio = payload
    else:
        dim = head.get("dim")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 0 < dim <= payload.size:
            raise WireError(f"embedding: field 'dim' is {dim!r} for a payload of {payload.size} values")
        text_dim = head.get("text_dim", 0)
        if not isinstance(text_dim, int) or isinstance(text_dim, bool) or not 0 <= text_dim <= payload.size - dim:
            raise WireError(f"embedding: field 'text_dim' is {text_dim!r} for a payload of {payload.size} "
                            f"values after {dim} of the audio embedding")
        transcript = head.get("transcript")
        if transcript is not None and (not isinstance(transcript, str) or len(transcript) > MAX_TRANSCRIPT_CHARS):
            raise WireError(f"embedding: field 'transcript' must be a string of at most {MAX_TRANSCRIPT_CHARS} characters")
        utt.embedding = payload[:dim]
        utt.text_embedding = payload[dim:dim + text_dim] if text_dim else None
        utt.transcript = transcript
        rest = dim + text_dim
        utt.audio = payload[rest:] if payload.size > rest else None
    return Message(kind, head, utt)
