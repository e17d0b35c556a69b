"""Embedding many clips and sentences with a torch model, and zero-shot bipolar scores
from them through `emoclap.zeroshot`: the recipe the runtime scores with."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from emoclap.audio import length_batches, pad_batch
from emoclap.zeroshot import BankVectors, bank_vectors, bipolar_scores, emotion_poles
from trainer.descriptions import Descriptions
from trainer.tokenization import tokenize


@torch.no_grad()
def run_batched(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], clips: list[np.ndarray],
                batch_size: int = 16, device="cpu") -> np.ndarray:
    """[N, ...]: `fn(waveform, lengths)` over clips batched by length, so little is
    spent on padding; rows in the order of `clips`."""
    out = None
    for idx in length_batches([len(c) for c in clips], batch_size):
        wave, lengths = pad_batch([clips[i] for i in idx])
        rows = fn(torch.from_numpy(wave).to(device), torch.from_numpy(lengths).to(device)).float().cpu().numpy()
        if out is None:
            out = np.zeros((len(clips), *rows.shape[1:]), np.float32)
        out[idx] = rows
    return out


def embed_clips(model, clips: list[np.ndarray], batch_size: int = 16, device="cpu") -> np.ndarray:
    """[N, D] unit audio embeddings."""
    model.eval()
    return run_batched(model.encode_audio, clips, batch_size, device)


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], device="cpu") -> np.ndarray:
    """[N, D] unit text embeddings."""
    model.eval()
    ids, mask = tokenize(tokenizer, texts)
    return model.encode_text(ids.to(device), mask.to(device)).float().cpu().numpy()


def zero_shot_bank(desc: Descriptions, embed: Callable[[list[str]], np.ndarray], logit_scale: float,
                   dim: int) -> BankVectors:
    """Pole vectors of every described emotion (in order) with its temperature and bias;
    `embed(sentences)` → [n, D] embeddings."""
    emotions = desc.as_emotions()
    poles = {e.name: emotion_poles(e, [desc.language], embed) for e in emotions}
    return bank_vectors(emotions, poles, logit_scale, dim)


def zero_shot_probs(model, tokenizer, desc: Descriptions, audio_emb: np.ndarray, device="cpu",
                    embed: Callable[[list[str]], np.ndarray] | None = None) -> np.ndarray:
    """[N, K] probability of each emotion's positive pole, scored as the runtime scores.
    `embed` (texts -> unit vectors) replaces running the text tower, e.g. from cached features."""
    bank = zero_shot_bank(desc, embed or (lambda texts: embed_texts(model, tokenizer, texts, device)),
                          model.zero_shot_scale(), model.opts.embedding_dim)
    return bipolar_scores(audio_emb, bank)
