"""An exported bundle's towers (and its transcriber) run with ONNX Runtime on the CPU, for
the trainer's commands that work on a bundle (the paraphrase gate, calibration).

Audio goes through `emoclap.audio.embed_in_chunks` with the daemon's default limits, so
a clip gets the embedding the daemon would give it as one utterance.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from emoclap import pieces
from emoclap.audio import MAX_CHUNK_S, MIN_UTTERANCE_S, chunks, embed_in_chunks, length_batches, pad_batch
from emoclap.decoding import session_decoding
from emoclap.transcript import encoder_frames
from emoclap.bundle import Bundle


def cpu_session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the daemon's (daemon.encoder)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def text_embedder(bundle: Bundle, batch: int = 32, output: str = "embedding") -> Callable[[list[str]], np.ndarray]:
    """texts → [n, D] unit vectors, with the bundle's own tokenizer (the daemon's); `output`
    "sentence" gives the text path's sentence-space vectors (the shared space's where the
    graph has none), "both" the two side by side, as the daemon's prompt bank caches them."""
    from emoclap.tokenizer import load_text_tokenizer

    tokenizer = load_text_tokenizer(bundle)
    session = cpu_session(bundle.text_encoder)
    has_sentence = "sentence" in [o.name for o in session.get_outputs()]
    names = {"embedding": ["embedding"], "sentence": ["sentence" if has_sentence else "embedding"],
             "both": ["embedding", "sentence"] if has_sentence else ["embedding"]}[output]

    def embed(texts: list[str]) -> np.ndarray:
        rows = []
        for b in range(0, len(texts), batch):
            ids, mask = tokenizer.encode_batch(list(texts[b:b + batch]))
            parts = [unit(p) for p in session.run(names, {"input_ids": ids, "attention_mask": mask})]
            rows.append(np.concatenate(parts, 1))
        return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, bundle.embedding_dim), np.float32)
    return embed


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class AudioEmbedder:
    """Clips (16 kHz float32) → [n, D] unit embeddings, as the daemon embeds utterances."""

    def __init__(self, bundle: Bundle, batch: int = 16):
        self.bundle = bundle
        self.session = cpu_session(bundle.audio_encoder)
        self.head = cpu_session(bundle.audio_head) if bundle.piece_samples else None
        self.pieces = (pieces.PieceSpec(bundle.piece_samples, bundle.min_samples, bundle.head_reads_std,
                                        "offsets" in [i.name for i in self.session.get_inputs()])
                       if bundle.piece_samples else None)
        self.min_samples = max(bundle.min_samples, int(MIN_UTTERANCE_S * bundle.sample_rate))
        self.chunk_samples = max(self.min_samples, int(MAX_CHUNK_S * bundle.sample_rate))
        self.rows_per_call = 1 if bundle.single_row_only else batch

    def too_short(self, clip: np.ndarray) -> bool:
        return clip.size < self.min_samples

    def _run(self, rows: list[np.ndarray], frames: dict | None = None) -> np.ndarray:
        out = np.empty((len(rows), self.bundle.embedding_dim), np.float32)
        names = ["embedding", "frames"] if frames is not None else ["embedding"]
        for idx in length_batches([r.size for r in rows], self.rows_per_call):
            wave, lengths = pad_batch([rows[i] for i in idx])
            got = self.session.run(names, {"waveform": wave, "lengths": lengths})
            out[idx] = got[0]
            if frames is not None:
                frames.update((int(i), f[:encoder_frames(rows[i].size)]) for i, f in zip(idx, got[1]))
        return out

    def embed(self, clips: list[np.ndarray], frames: list | None = None) -> np.ndarray:
        """[n, D]; with a `frames` list, each clip's chunks' valid frames are appended to it."""
        clips = [np.asarray(c, np.float32).reshape(-1) for c in clips]
        short = [i for i, c in enumerate(clips) if self.too_short(c)]
        if short:
            raise ValueError(f"clip {short[0]} is shorter than {self.min_samples} samples")
        if self.pieces is not None:  # as the daemon's encoder runs such a bundle
            run, head = pieces.session_runs(self.session, self.head)
            known = None
            if frames is not None:
                with_frames, _ = pieces.session_runs(self.session, self.head, frames=True)
                read = pieces.words_pass(clips, self.pieces, with_frames, self.rows_per_call, self.chunk_samples)
                frames.extend([m.frames for m in ms] for ms in read)
                known = [pieces.as_known(c, self.pieces, ms, None) for c, ms in zip(clips, read)]
            return pieces.encode_utterances(clips, self.pieces, run, head, self.rows_per_call, known)[0]
        captured = {} if frames is not None else None
        emb = embed_in_chunks(clips, self.chunk_samples, "split", self.bundle.embedding_dim,
                              lambda rows: self._run(rows, captured))
        if frames is not None:
            row = 0
            for c in clips:
                n = len(chunks(c, self.chunk_samples, "split"))
                frames.append([captured[r] for r in range(row, row + n)])
                row += n
        return emb


class ClipReader:
    """Clips → (audio embeddings [n, D], the text path's embeddings [n, S] with NaN rows where
    nothing was understood, transcripts), as the daemon's encode stage reads utterances."""

    def __init__(self, bundle: Bundle):
        from tokenizers import Tokenizer

        if bundle.transcriber is None:
            raise ValueError(f"{bundle.folder}: the bundle has no transcriber")
        t = bundle.transcriber
        self.audio = AudioEmbedder(bundle)
        self.spec = t.spec
        self.decoding = session_decoding(cpu_session(t.cross), cpu_session(t.step), t.spec)
        self.tokenizer = Tokenizer.from_file(str(t.tokenizer))
        self.sentences = text_embedder(bundle, output="sentence")
        self.rate = bundle.sample_rate

    def too_short(self, clip: np.ndarray) -> bool:
        return self.audio.too_short(clip)

    def read(self, clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        from emoclap.transcript import HOP, CONV_STRIDE

        frames: list = []
        emb = self.audio.embed(clips, frames)
        said = []
        for per in frames:  # one clip's chunks at a time: calibration is offline
            budgets = [self.spec.budget(f.shape[0] * HOP * CONV_STRIDE / self.rate) for f in per]
            ids = self.decoding.decode(per, budgets)
            said.append(" ".join(w for w in (self.tokenizer.decode(i).strip() for i in ids) if w))
        text = np.full((len(clips), 0), np.nan, np.float32)
        known = [i for i, s in enumerate(said) if s]
        if known:
            vectors = self.sentences([said[i] for i in known])
            text = np.full((len(clips), vectors.shape[1]), np.nan, np.float32)
            text[known] = vectors
        return emb, text, said

