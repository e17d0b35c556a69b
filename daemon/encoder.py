"""ONNX Runtime adapters for the bundle's two towers."""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from emoclap import pieces
from emoclap.audio import MAX_CHUNK_S, MIN_UTTERANCE_S, chunks, embed_in_chunks, length_batches, pad_batch
from emoclap.bundle import Bundle
from emoclap.transcript import encoder_frames
from emoclap.tokenizer import load_text_tokenizer

log = logging.getLogger("emoclapd.encoder")
PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


class EncoderError(RuntimeError):
    """The encoder cannot run as configured (provider missing, model mismatch)."""


@dataclass
class EncoderOptions:
    provider: str = "auto"          # auto | cuda | cpu
    intra_op_threads: int = 0       # 0: ONNX Runtime's choice (one per physical core)
    max_batch: int = 16             # rows per ORT call
    min_utterance_s: float = MIN_UTTERANCE_S  # shorter utterances are skipped (and counted)
    max_chunk_s: float = MAX_CHUNK_S          # longer ones are split into chunks this long at most...
    long_utterances: str = "split"  # ...("split", averaged) or cut to max_chunk_s ("cap")

    def __post_init__(self):
        if self.provider not in ("auto", *PROVIDERS):
            raise ValueError(f"provider must be auto, cuda or cpu, got {self.provider!r}")
        if self.long_utterances not in ("split", "cap"):
            raise ValueError(f"long_utterances must be split or cap, got {self.long_utterances!r}")
        if self.max_batch < 1 or self.max_chunk_s <= 0 or self.intra_op_threads < 0:
            raise ValueError("max_batch and max_chunk_s must be positive, intra_op_threads >= 0")


def encoder_options(cfg, provider: str | None = None) -> EncoderOptions:
    """The audio encoder's options from the daemon's configuration (live and offline alike)."""
    return EncoderOptions(provider=provider or cfg.provider, intra_op_threads=cfg.encoder.threads,
                          max_batch=cfg.encoder.max_batch)


def _gpu_present() -> bool:
    # onnxruntime-gpu lists CUDA even without a GPU; ask the driver before trying it.
    return Path("/dev/nvidiactl").exists() or bool(os.environ.get("EMOCLAP_ASSUME_GPU"))


def resolve_provider(requested: str) -> str:
    available = ort.get_available_providers()
    if requested == "cpu":
        return PROVIDERS["cpu"]
    cuda_ok = PROVIDERS["cuda"] in available
    if requested == "cuda":
        if not cuda_ok:
            raise EncoderError("provider 'cuda' requested but this onnxruntime has no CUDA support "
                               f"(available: {', '.join(available)}); install emoclap[gpu]")
        return PROVIDERS["cuda"]
    return PROVIDERS["cuda"] if cuda_ok and _gpu_present() else PROVIDERS["cpu"]


def session_options(intra_op_threads: int = 0) -> ort.SessionOptions:
    """Options every session of the daemon shares. Its sessions (audio tower, transcriber,
    text tower, speaker encoder) run one after another and side by side, each with its own
    thread pool; pools that spin after a run take the cores from the next session's run
    (an audio pass 2.6 times as slow right after a decode, bench/RESULTS.md), so they sleep."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def open_session(path: Path, requested: str = "auto", intra_op_threads: int = 0) -> ort.InferenceSession:
    """An inference session on the requested provider; fails rather than silently falling
    back when 'cuda' was asked for explicitly."""
    provider = resolve_provider(requested)
    ort.set_default_logger_severity(3)  # provider probing warns on CPU-only machines
    opts = session_options(intra_op_threads)
    opts.log_severity_level = 3  # errors only: no provider-fallback chatter on CPU machines
    providers = [provider] + ([PROVIDERS["cpu"]] if provider != PROVIDERS["cpu"] else [])
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # ORT raises its own exception types
        raise EncoderError(f"{path}: cannot load model: {exc}") from None
    used = session.get_providers()[0]
    if requested == "cuda" and used != PROVIDERS["cuda"]:
        raise EncoderError(f"{path}: provider 'cuda' requested but ONNX Runtime fell back to {used}")
    return session


def _check_io(session: ort.InferenceSession, path: Path, inputs: tuple[str, ...], dim: int) -> None:
    names = tuple(i.name for i in session.get_inputs())
    if set(names) != set(inputs):
        raise EncoderError(f"{path}: inputs are {names}, expected {inputs}")
    outputs = session.get_outputs()
    if outputs[0].name != "embedding":
        raise EncoderError(f"{path}: first output is {outputs[0].name!r}, expected 'embedding'")
    shape = outputs[0].shape
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != dim):
        raise EncoderError(f"{path}: output shape {shape} does not match embedding_dim {dim}")


def _short_name(provider: str) -> str:
    return provider.replace("ExecutionProvider", "").lower()


class AudioEncoder:
    """Utterance audio (16 kHz float32) → unit embeddings, on one shared ORT session (two for
    a piece-encoded bundle: the piece graph and the head, see `emoclap.pieces`).

    Thread-safe: ORT sessions may be run from several threads at once.
    """
    returns_frames = False  # whether the engine gives the tower's frames (the transcriber reads them)

    def __init__(self, bundle: Bundle, provider: str = "auto", options: EncoderOptions | None = None):
        self.bundle = bundle
        self.options = options or EncoderOptions(provider=provider)
        if options is not None and provider != "auto":
            self.options = dataclasses.replace(options, provider=provider)
        self.pieces: pieces.PieceSpec | None = None
        self._open()
        rate = bundle.sample_rate
        self.min_samples = max(bundle.min_samples, int(self.options.min_utterance_s * rate))
        self.chunk_samples = max(self.min_samples, int(self.options.max_chunk_s * rate))
        self.rows_per_call = 1 if bundle.single_row_only else self.options.max_batch
        if self.rows_per_call != self.options.max_batch:
            log.info("int8 audio encoder: one utterance per call, so batch mates cannot change scores")
        self._lock = threading.Lock()
        self.skipped_short = 0

    def _open(self) -> None:
        """The engine that runs the model (here ORT sessions; Triton in daemon.triton)."""
        b, opts = self.bundle, self.options
        self.session = open_session(b.audio_encoder, opts.provider, opts.intra_op_threads)
        self.provider = _short_name(self.session.get_providers()[0])
        outputs = [o.name for o in self.session.get_outputs()]
        self.returns_frames = "frames" in outputs
        if b.piece_samples:
            inputs = {i.name for i in self.session.get_inputs()}
            if not {"waveform", "lengths"} <= inputs <= {"waveform", "lengths", "offsets"} or \
                    not {"count", "mean", "variance"} <= set(outputs):
                raise EncoderError(f"{b.audio_encoder}: not a piece graph (inputs {sorted(inputs)}, "
                                   f"outputs {outputs}; expected waveform, lengths[, offsets] → count, mean, variance)")
            self.head_session = open_session(b.audio_head, opts.provider, opts.intra_op_threads)
            _check_io(self.head_session, b.audio_head, ("statistics",), b.embedding_dim)
            self.pieces = pieces.PieceSpec(b.piece_samples, b.min_samples, b.head_reads_std, "offsets" in inputs)
            log.info("audio encoder on %s (%s), in pieces of %.2f s", self.provider, b.audio_encoder,
                     b.piece_samples / b.sample_rate)
            return
        _check_io(self.session, b.audio_encoder, ("waveform", "lengths"), b.embedding_dim)
        log.info("audio encoder on %s (%s)", self.provider, b.audio_encoder)

    def _infer(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One padded batch → [n, D] embeddings."""
        return self.session.run(["embedding"], {"waveform": wave, "lengths": lengths})[0]

    def too_short(self, audio: np.ndarray) -> bool:
        return np.asarray(audio).size < self.min_samples

    def _run(self, rows: list[np.ndarray]) -> np.ndarray:
        """Rows → embeddings, shortest first in padded batches of similar length."""
        out = np.empty((len(rows), self.bundle.embedding_dim), np.float32)
        for idx in length_batches([r.size for r in rows], self.rows_per_call):
            wave, lengths = pad_batch([rows[i] for i in idx])
            out[idx] = self._infer(wave, lengths)
        return out

    # ---- a piece-encoded bundle
    def encode_pieces(self, rows: list[tuple[np.ndarray, int]]) -> list[pieces.Moments]:
        """Pieces of utterances still being spoken, (audio, start in its utterance) each →
        their moments, for `encode(known=...)` (no frames: the words are read from a pass
        over the whole utterance)."""
        run, _ = pieces.session_runs(self.session, self.head_session)
        return pieces.encode_pieces([(np.asarray(a, np.float32).reshape(-1), int(o)) for a, o in rows],
                                    self.pieces, run, self.rows_per_call)

    def _in_pieces(self, audios: list[np.ndarray], known):
        run, head = pieces.session_runs(self.session, self.head_session)
        return pieces.encode_utterances(audios, self.pieces, run, head, self.rows_per_call, known)

    # ---- whole utterances
    def encode_with_frames(self, audios: list[np.ndarray], known: list[dict] | None = None
                           ) -> tuple[list[np.ndarray | None], list[list[tuple[np.ndarray, float]]]]:
        """Like `encode`, and what the transcriber reads of each utterance: (valid frames
        [T, H], seconds) per chunk, from the same pass (a piece-encoded bundle: from one more
        pass of its piece graph over each chunk of the whole utterance)."""
        if not self.returns_frames:
            raise EncoderError(f"{self.bundle.audio_encoder}: the audio encoder has no 'frames' output")
        audios = [np.asarray(a, np.float32).reshape(-1) for a in audios]
        keep = [i for i, a in enumerate(audios) if not self.too_short(a)]
        with self._lock:
            self.skipped_short += len(audios) - len(keep)
        embeddings: list[np.ndarray | None] = [None] * len(audios)
        units: list[list[tuple[np.ndarray, float]]] = [[] for _ in audios]
        if not keep:
            return embeddings, units
        kept = [audios[i] for i in keep]
        rate = self.bundle.sample_rate
        if self.pieces is not None:
            run, _ = pieces.session_runs(self.session, self.head_session, frames=True)
            read = pieces.words_pass(kept, self.pieces, run, self.rows_per_call, self.chunk_samples,
                                     self.options.long_utterances)
            have = [pieces.as_known(a, self.pieces, ms, known[i] if known else None)
                    for i, a, ms in zip(keep, kept, read)]
            emb, _ = self._in_pieces(kept, have)
            for i, e, a, ms in zip(keep, emb, kept, read):
                embeddings[i] = e
                parts = chunks(a, self.chunk_samples, self.options.long_utterances)
                units[i] = [(m.frames, c.size / rate) for m, c in zip(ms, parts)]
            return embeddings, units
        captured: dict[int, np.ndarray] = {}

        def run(rows: list[np.ndarray]) -> np.ndarray:
            out = np.empty((len(rows), self.bundle.embedding_dim), np.float32)
            for idx in length_batches([r.size for r in rows], self.rows_per_call):
                wave, lengths = pad_batch([rows[i] for i in idx])
                emb, frames = self.session.run(["embedding", "frames"], {"waveform": wave, "lengths": lengths})
                out[idx] = emb
                captured.update(zip(idx, frames))
            return out

        for i, e in zip(keep, embed_in_chunks(kept, self.chunk_samples, self.options.long_utterances,
                                              self.bundle.embedding_dim, run)):
            embeddings[i] = e
        row = 0
        for i, a in zip(keep, kept):
            for chunk in chunks(a, self.chunk_samples, self.options.long_utterances):
                units[i].append((captured[row][:encoder_frames(chunk.size)], chunk.size / rate))
                row += 1
        return embeddings, units

    def embed(self, audios: list[np.ndarray], known: list[dict] | None = None) -> np.ndarray:
        """[n, D] unit embeddings; every input must be at least `min_samples` long. `known[i]`:
        pieces of utterance i encoded while it was spoken (a piece-encoded bundle)."""
        audios = [np.asarray(a, np.float32).reshape(-1) for a in audios]
        for i, a in enumerate(audios):
            if self.too_short(a):
                raise ValueError(f"utterance {i} has {a.size} samples; the minimum is {self.min_samples}")
        if self.pieces is not None:
            return self._in_pieces(audios, known)[0]
        return embed_in_chunks(audios, self.chunk_samples, self.options.long_utterances,
                               self.bundle.embedding_dim, self._run)

    def encode(self, audios: list[np.ndarray], known: list[dict] | None = None) -> list[np.ndarray | None]:
        """Like `embed`, but too-short utterances give None (and are counted) instead of failing."""
        keep = [i for i, a in enumerate(audios) if not self.too_short(a)]
        with self._lock:
            self.skipped_short += len(audios) - len(keep)
        out: list[np.ndarray | None] = [None] * len(audios)
        if keep:
            for i, e in zip(keep, self.embed([audios[i] for i in keep], [known[i] for i in keep] if known else None)):
                out[i] = e
        return out


class TextEncoder:
    """Sentences → unit embeddings with the bundle's tokenizer and text tower: in the shared
    space (`embedding`), and where the graph has it, in the tower's own sentence space
    (`sentence`: where the text path compares a transcript with the prompt sentences)."""

    def __init__(self, bundle: Bundle, provider: str = "auto", intra_op_threads: int = 0,
                 batch: int = 32):
        self.bundle = bundle
        self.tokenizer = load_text_tokenizer(bundle)
        # A MeCab tagger must not parse from two threads at once (prompt reloads embed
        # in worker threads).
        self._tokenize_lock = threading.Lock()
        self.session = open_session(bundle.text_encoder, provider, intra_op_threads)
        _check_io(self.session, bundle.text_encoder, ("input_ids", "attention_mask"), bundle.embedding_dim)
        self.provider = _short_name(self.session.get_providers()[0])
        self.has_sentence = "sentence" in [o.name for o in self.session.get_outputs()]
        self.batch = batch
        self.texts_embedded = 0  # lets tests (and metrics) see that the cache works

    def _run(self, texts: list[str], outputs: list[str]) -> np.ndarray:
        rows = []
        for b in range(0, len(texts), self.batch):
            with self._tokenize_lock:
                ids, mask = self.tokenizer.encode_batch(texts[b:b + self.batch])
            rows.append(np.concatenate(self.session.run(outputs, {"input_ids": ids, "attention_mask": mask}), 1))
        self.texts_embedded += len(texts)
        return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, self.bundle.embedding_dim), np.float32)

    def embed(self, texts: list[str], with_sentence: bool = False) -> np.ndarray:
        """[n, D] shared-space embeddings; `with_sentence`: [n, D + S], the sentence-space
        ones after them (where the graph has them)."""
        return self._run(texts, ["embedding", "sentence"] if with_sentence and self.has_sentence else ["embedding"])

    def embed_sentences(self, texts: list[str]) -> np.ndarray:
        """The text path's embeddings: the sentence space where the graph has it, else the shared one."""
        return self._run(texts, ["sentence"] if self.has_sentence else ["embedding"])
