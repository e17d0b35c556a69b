"""The text path in the encode stage: the bundle's transcriber graphs (ONNX Runtime) read
each utterance's words from the audio encoder's own frames, and the text tower embeds
them, so one encoder pass per utterance gives both paths' embeddings.

`Reader` is what the batcher runs: audio in, a `Reading` (audio embedding, and where the
text path is on, the transcript and its embedding) out.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from emoclap.bundle import Bundle
from emoclap.decoding import Decoding, session_decoding

from .encoder import EncoderError, open_session

log = logging.getLogger("emoclapd.transcriber")
MAX_TRANSCRIPT_CHARS = 2000  # bounds what one utterance's words can weigh downstream


@dataclass
class Reading:
    embedding: np.ndarray
    text_embedding: np.ndarray | None = None
    transcript: str | None = None
    spans: dict | None = None  # "encode" and "decode": seconds of the batches it was read in
    unread: list | None = None  # (frames, seconds) per chunk, until its words are read


class WordsError(Exception):
    """Reading words failed; `readings` are the ones that failed with it."""

    def __init__(self, readings: list[Reading], cause: Exception):
        super().__init__(str(cause))
        self.readings, self.cause = readings, cause


class Transcriber:
    """Frames of utterances → their transcripts, greedy, batched, bounded in tokens."""

    def __init__(self, bundle: Bundle, provider: str = "auto", intra_op_threads: int = 0):
        if bundle.transcriber is None:
            raise EncoderError(f"{bundle.folder}: the bundle has no transcriber")
        t = bundle.transcriber
        self.spec = t.spec
        self.cross = open_session(t.cross, provider, intra_op_threads)
        self.step = open_session(t.step, provider, intra_op_threads)
        self.tokenizer = Tokenizer.from_file(str(t.tokenizer))
        self.seconds = 0.0  # spent decoding, for /metrics
        self.tokens = 0

    def decoding(self) -> Decoding:
        """A new set of rows over the shared graphs (a session runs from any thread)."""
        return session_decoding(self.cross, self.step, self.spec)

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids).strip()[:MAX_TRANSCRIPT_CHARS]

    def transcribe(self, frames: list[np.ndarray], seconds: list[float]) -> list[str]:
        """Each utterance's words, decoded together to the end; `frames[i]` its valid frames [T_i, D]."""
        if not frames:
            return []
        started = time.perf_counter()
        ids = self.decoding().decode(frames, [self.spec.budget(s) for s in seconds])
        self.seconds += time.perf_counter() - started
        self.tokens += sum(map(len, ids))
        return [self.text(row) for row in ids]


@dataclass
class _Words:
    """A reading whose chunks are being decoded."""
    reading: Reading
    parts: list
    started: float


class Reader:
    """The batcher's encoder: audio → `Reading`s (None for a too-short utterance). Without a
    transcriber (none in the bundle, `[transcripts] enabled = false`, or an engine that does
    not return frames) it reads the audio path only.

    The words of deferred readings are read by one thread (the batcher's second stage)
    through `start_words` and `step_words`: every reading being read shares each decoder
    step, and one that starts joins the others at the next step."""

    def __init__(self, encoder, transcriber: Transcriber | None = None, text_encoder=None):
        self.encoder = encoder
        self.transcriber = transcriber if text_encoder is not None else None
        self.text_encoder = text_encoder
        self.rate = encoder.bundle.sample_rate
        self._lock = threading.Lock()
        self._live = self.transcriber.decoding() if self.transcriber is not None else None
        self._reading: dict[int, _Words] = {}  # id(reading) -> its decode
        self._waiting: list[_Words] = []  # for a step graph that cannot take rows into a running batch

    def __getattr__(self, name):  # provider, min_samples, skipped_short, ... of the audio encoder
        return getattr(self.encoder, name)

    @property
    def reads_words(self) -> bool:
        return self.transcriber is not None

    def encode(self, audios: list[np.ndarray], words: list[bool] | None = None,
               defer_words: bool = False, known: list[dict] | None = None) -> list[Reading | None]:
        """`words[i]` False: utterance i on the audio path alone (no transcript).
        `defer_words`: the audio path only now; the readings that are to be read carry
        their frames until their words are read (`start_words`, or `read_words`)."""
        started = time.perf_counter()
        if self.transcriber is None:
            embeddings = self.encoder.encode(audios, known)
            spans = {"encode": time.perf_counter() - started}
            return [None if e is None else Reading(e, spans=spans) for e in embeddings]
        embeddings, units = self.encoder.encode_with_frames(audios, known)
        spans = {"encode": time.perf_counter() - started}
        out: list[Reading | None] = [None if e is None else Reading(e, spans=spans) for e in embeddings]
        for i, per in enumerate(units):
            if out[i] is not None and (words is None or words[i]):
                out[i].unread = per  # read as it was embedded: chunk by chunk, or all its pieces at once
        if not defer_words:
            self.read_words([r for r in out if r is not None])
        return out

    def read_words(self, readings: list[Reading]) -> None:
        """Transcribe and embed, together and to the end, the readings that carry unread frames."""
        todo = [r for r in readings if r.unread]
        if not todo:
            return
        started = time.perf_counter()
        rows = [row for r in todo for row in r.unread]
        with self._lock:  # the transcriber's time and token counters are shared
            texts = iter(self.transcriber.transcribe([f for f, _ in rows], [s for _, s in rows]))
        for r in todo:
            r.transcript = " ".join(t for t in (next(texts) for _ in r.unread) if t)
            r.unread = None
        self._embed(todo, {id(r): started for r in todo})

    def start_words(self, readings: list[Reading]) -> list[Reading]:
        """Begin reading the words of `readings` (those with unread frames); they join the
        readings being read at once. Returns the readings whose words are already read;
        raises `WordsError` naming the new readings if their first step fails (the others go on)."""
        now = time.perf_counter()
        todo = [_Words(r, [None] * len(r.unread), now) for r in readings if r.unread and id(r) not in self._reading]
        for w in todo:
            self._reading[id(w.reading)] = w
        self._waiting += todo
        return self._admit()

    def step_words(self) -> list[Reading]:
        """One decoder step for every reading being read; returns those whose words are now
        read (transcript and text embedding set). A failed step raises `WordsError` naming
        every reading that was in it: they are dropped, and the next readings start afresh."""
        admitted = self._admit()  # an older step graph admits into an empty batch only
        if admitted or not self._live:
            return admitted
        try:
            done = self._timed(self._live.step)
        except Exception as exc:  # noqa: BLE001 - one broken step fails the readings in it, not the daemon
            self._live.drop()
            waiting = {id(w.reading) for w in self._waiting}
            failed = [w.reading for key, w in list(self._reading.items()) if key not in waiting]
            for r in failed:
                del self._reading[id(r)]
            raise WordsError(failed, exc) from exc
        return self._take(done)

    def _admit(self) -> list[Reading]:
        if not self._waiting or not self._live.can_admit:
            return []
        todo, self._waiting = self._waiting, []
        keys = [(id(w.reading), i) for w in todo for i in range(len(w.parts))]
        chunks = [c for w in todo for c in w.reading.unread]
        budgets = [self.transcriber.spec.budget(s) for _, s in chunks]
        try:
            done = self._timed(lambda: self._live.admit(keys, [f for f, _ in chunks], budgets))
        except Exception as exc:  # noqa: BLE001 - the readings already being read go on
            for w in todo:
                del self._reading[id(w.reading)]
            raise WordsError([w.reading for w in todo], exc) from exc
        return self._take(done)

    def _timed(self, run):
        started = time.perf_counter()
        done = run()
        with self._lock:
            self.transcriber.seconds += time.perf_counter() - started
            self.transcriber.tokens += sum(len(ids) for _, ids in done)
        return done

    def _take(self, done: list) -> list[Reading]:
        """Readings all of whose chunks are in `done` or were before, now embedded."""
        complete, started = [], {}
        for (key, part), ids in done:
            w = self._reading[key]
            w.parts[part] = self.transcriber.text(ids)
            if all(p is not None for p in w.parts):
                del self._reading[key]
                w.reading.transcript = " ".join(p for p in w.parts if p)
                w.reading.unread = None
                complete.append(w.reading)
                started[key] = w.started
        try:
            self._embed(complete, started)
        except Exception as exc:  # noqa: BLE001 - the text tower's failure fails these readings only
            raise WordsError(complete, exc) from exc
        return complete

    def _embed(self, readings: list[Reading], started: dict[int, float]) -> None:
        """The transcripts' sentence vectors; each reading's `decode` span runs from when its
        words began to be read."""
        said = [r for r in readings if r.transcript]
        if said:
            vectors = self.text_encoder.embed_sentences([r.transcript for r in said])
            for r, v in zip(said, vectors):
                r.text_embedding = v / max(float(np.linalg.norm(v)), 1e-12)
        now = time.perf_counter()
        for r in readings:
            r.spans = {**(r.spans or {}), "decode": now - started[id(r)]}

    def read(self, utts: list) -> None:
        """Sets each utterance's embedding, text embedding and transcript (a too-short one keeps None)."""
        for u, r in zip(utts, self.encode([u.audio for u in utts])):
            if r is not None:
                u.embedding, u.text_embedding, u.transcript = r.embedding, r.text_embedding, r.transcript


def utterance_reader(bundle: Bundle, encoder, text_encoder, enabled: bool = True,
                     provider: str = "auto", intra_op_threads: int = 0) -> Reader:
    """A `Reader` with the text path where the bundle and the engine allow it."""
    if not enabled:
        return Reader(encoder)
    if bundle.transcriber is None:
        log.info("text path off: bundle %s has no transcriber (audio path only)", bundle.folder)
        return Reader(encoder)
    if not getattr(encoder, "returns_frames", False):
        log.warning("text path off: the audio encoder's engine (%s) does not return frames",
                    type(encoder).__name__)
        return Reader(encoder)
    transcriber = Transcriber(bundle, provider, intra_op_threads)
    log.info("text path on: transcripts in %r read from the audio encoder's frames", bundle.transcriber.language)
    return Reader(encoder, transcriber, text_encoder)
