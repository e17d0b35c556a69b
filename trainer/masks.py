"""Padding-aware helpers: which positions of a padded batch are real, their mean, and
waveforms normalised over their own samples only (so padding never leaks into a result)."""
from __future__ import annotations

import torch


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of x [B, T, H] counting only positions where mask [B, T] is true."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def normalize_valid(waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance over each row's valid samples; the padding stays zero."""
    mask = length_mask(lengths, waveform.shape[1]).to(waveform.dtype)
    n = mask.sum(1, keepdim=True).clamp(min=1.0)
    mean = (waveform * mask).sum(1, keepdim=True) / n
    var = (((waveform - mean) * mask) ** 2).sum(1, keepdim=True) / n
    return (waveform - mean) / torch.sqrt(var + 1e-7) * mask
