"""Staff recognition on shared microphones: the speaker encoder (ONNX Runtime), the
voiceprint store (SQLite) and the gate that tags `auto` utterances before dispatch.

The gate runs in the capture and ingest paths, before an utterance is sent to the encode
stage, so a staff voice on a shared microphone becomes `role = "staff"` and the privacy
policy keeps its audio from the emotion encoder. Matching maths: `emoclap.voiceprint`.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from emoclap import voiceprint
from emoclap.audio import AudioError, read_mono
from emoclap.record import Utterance
from emoclap.segmenter import SegmenterOptions
from emoclap.station import StationStream

from .config import ConfigError

log = logging.getLogger("emoclapd.speakers")


class SpeakerError(ValueError):
    """Refused enrolment or an unusable encoder/store; the message names the file."""


class SpeakerEncoder:
    """The exported GE2E network (`emoclap-train export-speaker`): audio → unit embedding."""

    def __init__(self, folder: str | Path, threads: int = 1):
        import onnxruntime as ort

        from .encoder import session_options

        folder = Path(folder)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            path = folder / manifest["onnx"]
        except (OSError, ValueError, KeyError) as exc:
            raise SpeakerError(f"{folder}: no speaker encoder ({exc}); build it with "
                               "`emoclap-train export-speaker --out {folder}`") from None
        if manifest.get("kind") != "ge2e-speaker-encoder" or manifest.get("n_mels") != voiceprint.N_MELS:
            raise SpeakerError(f"{folder}/manifest.json: not a GE2E speaker encoder")
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        self.manifest = manifest

    def embed_partials(self, wav: np.ndarray) -> np.ndarray:
        """[n_partials, 256] unit vectors, one per 1.6 s window."""
        return self.session.run(None, {"mels": voiceprint.partials(wav)})[0]

    def embed(self, wav: np.ndarray) -> np.ndarray:
        return voiceprint.average(self.embed_partials(wav))


class VoiceprintStore:
    """Enrolled staff: name → voiceprint, in one SQLite file that enrolment and the daemon share."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5)
        db.execute("CREATE TABLE IF NOT EXISTS voiceprints (name TEXT PRIMARY KEY, embedding BLOB NOT NULL,"
                   " speech_s REAL NOT NULL, files TEXT NOT NULL, enrolled REAL NOT NULL)")
        return db

    def put(self, name: str, embedding: np.ndarray, speech_s: float, files: list[str]) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO voiceprints VALUES (?, ?, ?, ?, ?)",
                       (name, voiceprint.unit(embedding).astype("<f4").tobytes(), speech_s,
                        json.dumps(files), time.time()))

    def remove(self, name: str) -> bool:
        with self._connect() as db:
            return db.execute("DELETE FROM voiceprints WHERE name = ?", (name,)).rowcount > 0

    def list(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self._connect() as db:
            rows = db.execute("SELECT name, speech_s, files, enrolled FROM voiceprints ORDER BY name").fetchall()
        return [{"name": n, "speech_s": s, "files": json.loads(f), "enrolled": t} for n, s, f, t in rows]

    def load(self) -> dict[str, np.ndarray]:
        if not self.path.exists():
            return {}
        with self._connect() as db:
            rows = db.execute("SELECT name, embedding FROM voiceprints").fetchall()
        return {name: np.frombuffer(blob, "<f4").copy() for name, blob in rows}

    def version(self) -> tuple:
        """Changes when enrolment writes (the daemon picks new staff up without a restart)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return ()
        return st.st_mtime_ns, st.st_size


class SpeakerGate:
    """Tags each utterance of an `auto` station staff or customer; other roles pass as they are.

    With nobody enrolled nothing is decided and `auto` stays `auto` (not scored by
    default), so a missing enrolment never gets a staff member scored as a customer.
    """

    def __init__(self, encoder: SpeakerEncoder, store: VoiceprintStore, threshold: float):
        self.encoder, self.store, self.threshold = encoder, store, threshold
        self._lock = threading.Lock()
        self._version: tuple | None = None
        self._prints: dict[str, np.ndarray] = {}
        self._last_check = 0.0

    def voiceprints(self) -> dict[str, np.ndarray]:
        with self._lock:
            now = time.monotonic()
            if self._version is None or now - self._last_check >= 1.0:
                self._last_check = now
                version = self.store.version()
                if version != self._version:
                    self._prints, self._version = self.store.load(), version
                    if self._prints:
                        log.info("voiceprints: %s", ", ".join(sorted(self._prints)))
                    else:
                        log.warning("voiceprints: nobody enrolled in %s; auto stations stay "
                                    "unscored (emoclapd enroll)", self.store.path)
            return self._prints

    def decide(self, audio: np.ndarray) -> voiceprint.SpeakerDecision | None:
        prints = self.voiceprints()
        if not prints or audio is None or not np.size(audio):
            return None
        return voiceprint.decide(self.encoder.embed(audio), prints, self.threshold)

    def tag(self, utterances: list[Utterance]) -> list[Utterance]:
        for utt in utterances:
            if utt.role != "auto":
                continue
            try:
                decision = self.decide(utt.audio)
            except Exception:  # noqa: BLE001 - an undecided utterance stays auto: not scored by default
                log.exception("station %s seq %d: speaker decision failed", utt.station, utt.seq)
                continue
            if decision is not None:
                utt.role, utt.speaker = decision.decision, decision.as_dict()
        return utterances


def make_gate(cfg) -> SpeakerGate | None:
    """The configured gate, or None when `[speakers]` is off."""
    sp = cfg.speakers
    if not sp.enabled:
        return None
    try:
        encoder = SpeakerEncoder(sp.encoder)
    except SpeakerError as exc:
        raise ConfigError(f"{cfg.source}: speakers.encoder: {exc}") from None
    return SpeakerGate(encoder, VoiceprintStore(sp.voiceprints), sp.threshold)


# ---- enrolment

def speech_segments(path: str, options: SegmenterOptions) -> list[np.ndarray]:
    """The voiced parts of a file, cut as a station would cut them."""
    try:
        audio = read_mono(path, voiceprint.SAMPLE_RATE)
    except (AudioError, OSError) as exc:
        raise SpeakerError(f"{path}: cannot read: {exc}") from None
    stream = StationStream("enroll", "staff", options, clock=lambda: 0.0)
    return [u.audio for u in stream.feed(audio) + stream.finish()]


def enroll(name: str, files: list[str], encoder: SpeakerEncoder, options: SegmenterOptions,
           min_speech_s: float = 3.0, min_agreement: float = 0.7) -> tuple[np.ndarray, float]:
    """(voiceprint, seconds of speech) of one speaker's files, or SpeakerError naming the file.

    Refused: a file without speech, less than `min_speech_s` of speech in all, and files or
    segments whose voices disagree (several speakers: a cosine below `min_agreement`).
    """
    if not name or not name.strip():
        raise SpeakerError("a staff member needs a name")
    per_file, pieces, total = [], [], 0.0
    for path in files:
        segments = speech_segments(path, options)
        seconds = sum(s.size for s in segments) / voiceprint.SAMPLE_RATE
        if not segments or seconds < 0.3:
            raise SpeakerError(f"{path}: no speech found (silent or too quiet)")
        total += seconds
        joined = np.concatenate(segments)
        per_file.append(encoder.embed(joined))
        # Segments long enough for a stable embedding are compared with each other.
        pieces += [(path, encoder.embed(s)) for s in segments if s.size >= 1.5 * voiceprint.SAMPLE_RATE]
    if total < min_speech_s:
        raise SpeakerError(f"{', '.join(files)}: {total:.1f} s of speech; enrolment needs at least "
                           f"{min_speech_s:g} s")
    sim, i, j = voiceprint.least_similar(per_file)
    if len(files) > 1 and sim < min_agreement:
        raise SpeakerError(f"{files[j]}: its voice differs from {files[i]}'s (cosine {sim:.2f} < "
                           f"{min_agreement:g}); enrol one speaker at a time")
    sim, i, j = voiceprint.least_similar([e for _, e in pieces])
    if len(pieces) > 1 and sim < min_agreement:
        where = pieces[j][0] if pieces[i][0] == pieces[j][0] else f"{pieces[i][0]} and {pieces[j][0]}"
        raise SpeakerError(f"{where}: several speakers (segments with cosine {sim:.2f} < "
                           f"{min_agreement:g}); enrol one speaker at a time")
    return voiceprint.average(per_file), total
