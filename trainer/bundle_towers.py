"""An exported bundle's two towers run with ONNX Runtime on the CPU, for the trainer's
commands that work on a bundle (the paraphrase gate, calibration).

Audio goes through `emoclap.audio.embed_in_chunks` with the daemon's default limits, so
a clip gets the embedding the daemon would give it as one utterance.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from emoclap.audio import MAX_CHUNK_S, MIN_UTTERANCE_S, embed_in_chunks, length_batches, pad_batch
from emoclap.bundle import Bundle


def _session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def text_embedder(bundle: Bundle, batch: int = 32) -> Callable[[list[str]], np.ndarray]:
    """texts → [n, D] unit vectors, with the bundle's own tokenizer (the daemon's)."""
    from emoclap.tokenizer import load_text_tokenizer

    tokenizer = load_text_tokenizer(bundle)
    session = _session(bundle.text_encoder)

    def embed(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), bundle.embedding_dim), np.float32)
        for b in range(0, len(texts), batch):
            ids, mask = tokenizer.encode_batch(list(texts[b:b + batch]))
            out[b:b + len(ids)] = session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return embed


class AudioEmbedder:
    """Clips (16 kHz float32) → [n, D] unit embeddings, as the daemon embeds utterances."""

    def __init__(self, bundle: Bundle, batch: int = 16):
        self.bundle = bundle
        self.session = _session(bundle.audio_encoder)
        self.min_samples = max(bundle.min_samples, int(MIN_UTTERANCE_S * bundle.sample_rate))
        self.chunk_samples = max(self.min_samples, int(MAX_CHUNK_S * bundle.sample_rate))
        # int8 activations are scaled over the whole batch: batch mates would shift each
        # other's embeddings (the daemon's encoder does the same).
        self.rows_per_call = 1 if bundle.precision.startswith("int8") else batch

    def too_short(self, clip: np.ndarray) -> bool:
        return clip.size < self.min_samples

    def _run(self, rows: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(rows), self.bundle.embedding_dim), np.float32)
        for idx in length_batches([r.size for r in rows], self.rows_per_call):
            wave, lengths = pad_batch([rows[i] for i in idx])
            out[idx] = self.session.run(["embedding"], {"waveform": wave, "lengths": lengths})[0]
        return out

    def embed(self, clips: list[np.ndarray]) -> np.ndarray:
        clips = [np.asarray(c, np.float32).reshape(-1) for c in clips]
        short = [i for i, c in enumerate(clips) if self.too_short(c)]
        if short:
            raise ValueError(f"clip {short[0]} is shorter than {self.min_samples} samples")
        return embed_in_chunks(clips, self.chunk_samples, "split", self.bundle.embedding_dim, self._run)
