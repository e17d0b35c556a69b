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
from emoclap.transcript import graph_step, greedy_decode, pad_frames

from .encoder import EncoderError, open_session

log = logging.getLogger("emoclapd.transcriber")
MAX_TRANSCRIPT_CHARS = 2000  # bounds what one utterance's words can weigh downstream


@dataclass
class Reading:
    embedding: np.ndarray
    text_embedding: np.ndarray | None = None
    transcript: str | None = None
    spans: dict | None = None  # "encode" and "decode": seconds of the batches it was read in
    unread: list | None = None  # (frames, seconds) per chunk, until `Reader.read_words`


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

    def transcribe(self, frames: list[np.ndarray], seconds: list[float]) -> list[str]:
        """Each utterance's words; `frames[i]` its valid frames [T_i, D]."""
        if not frames:
            return []
        started = time.perf_counter()
        batch, valid = pad_frames(frames)
        ids = greedy_decode(graph_step(self.cross, self.step, self.spec, batch, valid),
                            [self.spec.budget(s) for s in seconds], self.spec)
        self.seconds += time.perf_counter() - started
        self.tokens += sum(map(len, ids))
        return [self.tokenizer.decode(row).strip()[:MAX_TRANSCRIPT_CHARS] for row in ids]


class Reader:
    """The batcher's encoder: audio → `Reading`s (None for a too-short utterance). Without a
    transcriber (none in the bundle, `[transcripts] enabled = false`, or an engine that does
    not return frames) it reads the audio path only."""

    def __init__(self, encoder, transcriber: Transcriber | None = None, text_encoder=None):
        self.encoder = encoder
        self.transcriber = transcriber if text_encoder is not None else None
        self.text_encoder = text_encoder
        self.rate = encoder.bundle.sample_rate
        self._lock = threading.Lock()

    def __getattr__(self, name):  # provider, min_samples, skipped_short, ... of the audio encoder
        return getattr(self.encoder, name)

    @property
    def reads_words(self) -> bool:
        return self.transcriber is not None

    def encode(self, audios: list[np.ndarray], words: list[bool] | None = None,
               defer_words: bool = False, known: list[dict] | None = None) -> list[Reading | None]:
        """`words[i]` False: utterance i on the audio path alone (no transcript).
        `defer_words`: the audio path only now; the readings that are to be read carry
        their frames until `read_words` reads them (the batcher's second stage)."""
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
        """Transcribe and embed, in one batch, the readings that carry unread frames."""
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
        said = [r for r in todo if r.transcript]
        if said:
            vectors = self.text_encoder.embed_sentences([r.transcript for r in said])
            for r, v in zip(said, vectors):
                r.text_embedding = v / max(float(np.linalg.norm(v)), 1e-12)
        decode = time.perf_counter() - started
        for r in todo:
            r.spans = {**(r.spans or {}), "decode": decode}

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
