"""The utterance record: what the segmenter cut, then its embedding, then its scores.

One typed record travels from a station's stream through the encoder to the scorer;
the published `utterance` event, the history row and the CSV row are all made from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from emoclap import latency
from emoclap import quality as _quality
from emoclap.voiceprint import check_decision

ROLES = ("customer", "staff", "auto")  # auto: role unknown, every emotion scored


@dataclass
class Utterance:
    station: str
    role: str
    seq: int          # per station, from 1, in the order the segmenter emitted them
    start: float      # seconds since the station's stream began, padding included
    end: float
    t0: float         # wall-clock time (Unix s) of stream position 0
    emitted: float    # wall-clock time the segmenter emitted it
    audio: np.ndarray | None = None      # 16 kHz mono float32
    embedding: np.ndarray | None = None  # unit vector from the audio encoder
    text_embedding: np.ndarray | None = None  # its transcript through the text tower (the text path)
    transcript: str | None = None        # what the customer said; personal data (see [transcripts])
    encoded: float | None = None         # wall-clock time the encoder finished it
    speaker: dict | None = None          # an auto station's staff/customer decision (voiceprint)
    quality: dict | None = None          # emoclap.quality: duration_s, level_dbfs, clipped, snr_db
    insufficient: str | None = None      # why it is too poor to count (emoclap.quality.REASONS)
    spans: dict = field(default_factory=dict)  # stage → seconds it held this utterance (emoclap.latency)
    pieces: tuple[int, int] | None = None  # a bundle encoded in pieces: (encoded while spoken, all)

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def time(self) -> float:
        """Wall-clock time of its end."""
        return self.t0 + self.end

    @property
    def scoring_role(self) -> str | None:
        """The role emotions are filtered by; None scores every emotion."""
        return None if self.role == "auto" else self.role


HEADER_FIELDS = {"station": str, "role": str, "seq": int, "start": float, "end": float,
                 "t0": float, "emitted": float}


def header(utt: Utterance) -> dict:
    out = {"station": utt.station, "role": utt.role, "seq": utt.seq, "start": round(utt.start, 4),
           "end": round(utt.end, 4), "t0": utt.t0, "emitted": utt.emitted}
    if utt.encoded is not None:
        out["encoded"] = utt.encoded
    if utt.speaker is not None:
        out["speaker"] = utt.speaker
    if utt.quality is not None:
        out["quality"] = utt.quality
    if utt.insufficient is not None:
        out["insufficient"] = utt.insufficient
    if utt.spans:
        out["spans"] = {k: round(v, 6) for k, v in utt.spans.items()}
    if utt.pieces is not None:
        out["pieces"] = list(utt.pieces)
    return out


def from_header(fields: dict) -> Utterance:
    """An utterance from a header; ValueError names the first bad field."""
    values = {}
    for key, kind in HEADER_FIELDS.items():
        value = fields.get(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"field {key!r}: expected {kind.__name__}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise ValueError(f"field {key!r}: not a finite number")
        values[key] = value
    if values["role"] not in ROLES:
        raise ValueError(f"field 'role': expected one of {', '.join(ROLES)}, got {values['role']!r}")
    if not values["station"]:
        raise ValueError("field 'station': empty")
    if values["end"] < values["start"]:
        raise ValueError("field 'end': before 'start'")
    encoded = fields.get("encoded")
    if encoded is not None and not (isinstance(encoded, (int, float)) and math.isfinite(encoded)):
        raise ValueError("field 'encoded': not a finite number")
    speaker = fields.get("speaker")
    if speaker is not None:
        try:
            speaker = check_decision(speaker)
        except ValueError as exc:
            raise ValueError(f"field 'speaker': {exc}") from None
        if values["role"] != speaker["decision"]:
            raise ValueError("field 'speaker': the decision is not the role")
    quality, insufficient = _quality.check(fields.get("quality"), fields.get("insufficient"))
    try:
        spans = latency.check(fields.get("spans", {}))
    except ValueError as exc:
        raise ValueError(f"field 'spans': {exc}") from None
    pieces = fields.get("pieces")
    if pieces is not None:
        if not (isinstance(pieces, list) and len(pieces) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_PIECE_INDEX for n in pieces)
                and pieces[0] <= pieces[1]):
            raise ValueError("field 'pieces': expected [encoded ahead, all], whole numbers, ahead <= all")
        pieces = (pieces[0], pieces[1])
    return Utterance(**values, encoded=None if encoded is None else float(encoded), speaker=speaker,
                     quality=quality, insufficient=insufficient, spans=spans, pieces=pieces)


@dataclass
class Piece:
    """A whole piece of an utterance still being spoken (emoclap.pieces): its samples
    from `offset` on, for a bundle encoded in pieces to encode before the utterance ends.
    The utterance is the one of this station and stream (`t0`) that starts at `start`."""
    station: str
    role: str
    t0: float
    start: float
    index: int
    offset: int  # samples from the utterance's first
    audio: np.ndarray

    @property
    def utterance_key(self) -> tuple[str, float, float]:
        return piece_key(self.station, self.t0, self.start)


def piece_key(station: str, t0: float, start: float) -> tuple[str, float, float]:
    """What a piece and its utterance share (`start` as the header rounds it)."""
    return (station, t0, round(start, 4))


MAX_PIECE_INDEX = 4096


def piece_header(p: Piece) -> dict:
    return {"station": p.station, "role": p.role, "t0": p.t0, "start": round(p.start, 4),
            "index": p.index, "offset": p.offset}


def piece_from_header(fields: dict, audio: np.ndarray) -> Piece:
    """A piece from its header and samples; ValueError names the first bad field."""
    for key in ("station", "role"):
        if not isinstance(fields.get(key), str) or not fields[key]:
            raise ValueError(f"field {key!r}: expected a non-empty string")
    if fields["role"] not in ROLES:
        raise ValueError(f"field 'role': expected one of {', '.join(ROLES)}, got {fields['role']!r}")
    for key in ("t0", "start"):
        v = fields.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"field {key!r}: not a finite number")
    for key, top in (("index", MAX_PIECE_INDEX), ("offset", 2**31)):
        v = fields.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < top:
            raise ValueError(f"field {key!r}: expected a whole number from 0 below {top}")
    unknown = set(fields) - {"station", "role", "t0", "start", "index", "offset"}
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0][:40]!r}")
    return Piece(fields["station"], fields["role"], float(fields["t0"]), float(fields["start"]),
                 fields["index"], fields["offset"], audio)


@dataclass
class Scored:
    """An utterance with its scores and its station's rolling scores after it.

    `scores` is what the product acts on (rolling scores, visits, alerts): the fused score
    where the utterance has a text path, else the audio path's. `parts` holds each path's
    own score ("audio", and "text" when there is a transcript)."""
    utterance: Utterance
    scores: dict[str, float]
    rolling: dict[str, dict[str, float]] = field(default_factory=dict)  # emotion → score/count/updated
    parts: dict[str, dict[str, float]] = field(default_factory=dict)    # path → emotion → score

    def event(self, transcript: bool = False) -> dict:
        """The `utterance` message published on /ws and committed to the history; the
        transcript only when `transcript` (it is personal data: `[transcripts] publish`)."""
        u = self.utterance
        out = {"type": "utterance", "station": u.station, "role": u.role, "seq": u.seq,
               "start": round(u.start, 3), "end": round(u.end, 3), "duration": round(u.duration, 3),
               "time": round(u.time, 3), "scores": {k: round(v, 4) for k, v in self.scores.items()},
               "parts": {path: {k: round(v, 4) for k, v in per.items()} for path, per in self.parts.items()},
               "rolling": rounded(self.rolling), "insufficient": u.insufficient, "quality": u.quality,
               **speaker_fields(u)}
        if transcript and u.transcript is not None:
            out["transcript"] = u.transcript
        return out


def speech_event(u: Utterance) -> dict:
    """A `speech` message: an utterance of a role whose emotions are not inferred (its
    times only: talk time and turn-taking)."""
    return {"type": "speech", "station": u.station, "role": u.role, "seq": u.seq,
            "start": round(u.start, 3), "end": round(u.end, 3), "duration": round(u.duration, 3),
            "time": round(u.time, 3), **speaker_fields(u)}


def without_transcript(event: dict) -> dict:
    """The event as published or stored where transcripts are not to be (personal data):
    a copy, never an edit of the event itself."""
    return event if "transcript" not in event else {k: v for k, v in event.items() if k != "transcript"}


def speaker_fields(u: Utterance) -> dict:
    """`speaker` only where a voiceprint decided the role, so other events keep their shape."""
    return {} if u.speaker is None else {"speaker": u.speaker}


def rounded(per_emotion: dict) -> dict:
    return {k: {"score": round(v["score"], 4), "count": v["count"], "updated": round(v["updated"], 3)}
            for k, v in per_emotion.items()}


QUALITY_COLUMNS = ["insufficient", *(f"quality_{k}" for k in _quality.KEYS)]


PATHS = ("audio", "text")


def csv_header(lead: list[str], emotions: list[str]) -> list[str]:
    """The fused score's column per emotion, then each path's (`audio:NAME`, `text:NAME`)."""
    return [*lead, "start", "end", "duration", *QUALITY_COLUMNS, *emotions,
            *(f"{path}:{e}" for path in PATHS for e in emotions)]


def csv_row(lead: list, event: dict, emotions: list[str]) -> list:
    """One CSV row of an event: the lead columns, times, the abstain reason and quality
    (empty where unknown: speech events, history from before quality was measured), one
    score column per emotion (empty where the emotion does not apply to the role), then
    each path's (empty where the path did not score it: no words read, or older history)."""
    scores = event.get("scores") or {}
    quality = event.get("quality") or {}
    parts = event.get("parts") or {}

    def cells(per: dict) -> list[str]:
        return ["" if per.get(k) is None else f"{per[k]:.4f}" for k in emotions]
    return [*lead, event["start"], event["end"], event["duration"], event.get("insufficient") or "",
            *("" if quality.get(k) is None else quality[k] for k in _quality.KEYS),
            *cells(scores), *(c for path in PATHS for c in cells(parts.get(path) or {}))]
