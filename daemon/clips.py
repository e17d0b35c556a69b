"""Whole clips scored as single utterances, each path apart: for benchmarks and checks that
hold a clip's label, where `emoclapd score`'s segmentation would get in the way.

The clip goes through the daemon's own encoder, transcriber, prompt bank and scoring, so
a clip's numbers are those a live station would publish for it as one utterance.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emoclap.bundle import load_bundle
from emoclap.record import Utterance
from emoclap.zeroshot import path_scores

from .encoder import AudioEncoder, EncoderOptions, TextEncoder
from .prompt_bank import PromptBank, PromptBankOptions


@dataclass
class ClipScores:
    names: tuple[str, ...]       # the emotions, columns of the arrays below
    audio: np.ndarray            # [n, K] the audio path's scores
    text: np.ndarray             # [n, K] the text path's (NaN where a clip has no transcript)
    fused: np.ndarray            # [n, K] what the daemon publishes as `scores`
    audio_embedding: np.ndarray  # [n, D]
    text_embedding: np.ndarray   # [n, D] (NaN rows where no transcript)
    transcripts: list[str | None]

    def column(self, path: str, emotion: str) -> np.ndarray:
        return getattr(self, path)[:, self.names.index(emotion)]


class ClipScorer:
    def __init__(self, bundle: str | Path, prompts: str | Path, transcripts: bool = True,
                 provider: str = "cpu"):
        from .transcriber import utterance_reader

        self.bundle = load_bundle(bundle)
        self.encoder = AudioEncoder(self.bundle, options=EncoderOptions(provider=provider, min_utterance_s=0.1))
        self.text_encoder = TextEncoder(self.bundle, provider=provider)
        self.bank = PromptBank(Path(prompts), self.text_encoder, PromptBankOptions())
        self.reader = utterance_reader(self.bundle, self.encoder, self.text_encoder, transcripts, provider)

    def score(self, clips: list[np.ndarray]) -> ClipScores:
        utts = [Utterance("clip", "customer", i + 1, 0.0, c.size / self.bundle.sample_rate, 0.0, 0.0,
                          audio=np.asarray(c, np.float32)) for i, c in enumerate(clips)]
        self.reader.read(utts)
        vectors = self.bank.vectors
        k, d = len(vectors.names), vectors.text_positive.shape[1]
        out = {p: np.full((len(utts), k), np.nan, np.float32) for p in ("audio", "text", "fused")}
        text_emb = np.full((len(utts), d), np.nan, np.float32)
        for i, u in enumerate(utts):
            parts, fused = path_scores(u.embedding, u.text_embedding, vectors)
            out["audio"][i], out["fused"][i] = parts["audio"], fused
            if "text" in parts:
                out["text"][i], text_emb[i] = parts["text"], u.text_embedding
        return ClipScores(vectors.names, out["audio"], out["text"], out["fused"],
                          np.stack([u.embedding for u in utts]), text_emb, [u.transcript for u in utts])
