"""Embedding many clips with a torch model, and zero-shot bipolar scores from them."""
from __future__ import annotations

import numpy as np
import torch

from trainer.descriptions import Descriptions, pole_vectors
from trainer.model import tokenize


def pad_batch(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(c) for c in clips], dtype=torch.long)
    wave = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        wave[i, : len(c)] = torch.as_tensor(c)
    return wave, lengths


@torch.no_grad()
def embed_clips(model, clips: list[np.ndarray], batch_size: int = 16, device="cpu") -> torch.Tensor:
    """[N, D]; clips sorted by length so little is spent on padding."""
    model.eval()
    order = np.argsort([len(c) for c in clips])
    out = torch.zeros(len(clips), model.opts.embedding_dim)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        wave, lengths = pad_batch([clips[i] for i in idx])
        out[torch.as_tensor(idx)] = model.encode_audio(wave.to(device), lengths.to(device)).float().cpu()
    return out


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], device="cpu") -> torch.Tensor:
    model.eval()
    ids, mask = tokenize(tokenizer, texts)
    return model.encode_text(ids.to(device), mask.to(device)).float().cpu()


def zero_shot_probs(model, tokenizer, desc: Descriptions, audio_emb: torch.Tensor, device="cpu") -> np.ndarray:
    """[N, K] probability of the positive pole: softmax(scale·[a·n, a·p])[1], as the runtime scores."""
    poles = pole_vectors(lambda t: embed_texts(model, tokenizer, t, device), desc)
    logits = float(model.scale().detach()) * torch.einsum("nd,kpd->nkp", audio_emb, poles)
    return torch.softmax(logits, dim=-1)[..., 1].numpy()
