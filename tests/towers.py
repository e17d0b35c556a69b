"""Torch-side towers as the bundle's ONNX files expect them, and their ONNX export.

Used to build tiny test bundles and the encoder benchmark; the trainer's export does the
same for trained weights (waveform + lengths in, L2-normalised embedding out).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def _length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def _masked_channel_norm(h: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm with one group per channel over the first `lengths` frames only.

    Sums are mat-vec products with the mask and the affine map is folded into one
    scale and shift, so the big [B, C, T] tensor is touched by three passes, not six.
    """
    m = _length_mask(lengths, h.shape[-1]).to(h.dtype)[:, :, None]  # [B, T, 1]
    n = m.sum(1, keepdim=True).clamp(min=1.0)  # [B, 1, 1]
    mean = torch.matmul(h, m) / n  # [B, C, 1]
    var = (torch.matmul(h * h, m) / n - mean * mean).clamp(min=0.0)
    scale = norm.weight[None, :, None] * torch.rsqrt(var + norm.eps)
    return h * scale + (norm.bias[None, :, None] - mean * scale)


class AudioEmbedder(nn.Module):
    """wav2vec2-family encoder → masked mean pooling → linear → L2 norm.

    The "group" conv variant normalises its first layer over time; here its statistics
    come from valid frames only and the transformer gets the frame mask, so padding and
    batch mates cannot change an utterance's embedding.
    """

    def __init__(self, encoder: nn.Module, dim: int):
        super().__init__()
        self.encoder = encoder
        self.proj = nn.Linear(encoder.config.hidden_size, dim)

    def frames(self, waveform: torch.Tensor, lengths: torch.Tensor):
        x, cur = waveform[:, None, :], lengths.to(torch.long)
        for layer in self.encoder.feature_extractor.conv_layers:
            conv = layer.conv
            cur = torch.div(cur - conv.kernel_size[0], conv.stride[0], rounding_mode="floor") + 1
            norm = getattr(layer, "layer_norm", None)
            if isinstance(norm, nn.GroupNorm):
                x = layer.activation(_masked_channel_norm(conv(x), cur, norm))
            else:
                x = layer(x)
        mask = _length_mask(cur.clamp(min=1), x.shape[-1])
        hidden = self.encoder.feature_projection(x.transpose(1, 2))
        if isinstance(hidden, tuple):
            hidden = hidden[0]
        return self.encoder.encoder(hidden, attention_mask=mask)[0], mask

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        frames, mask = self.frames(waveform, lengths)
        m = mask.to(frames.dtype).unsqueeze(-1)
        pooled = (frames * m).sum(1) / m.sum(1).clamp(min=1.0)
        return F.normalize(self.proj(pooled), dim=-1)


class TextEmbedder(nn.Module):
    """BERT-family encoder → first token → linear → L2 norm."""

    def __init__(self, encoder: nn.Module, dim: int):
        super().__init__()
        self.encoder = encoder
        self.proj = nn.Linear(encoder.config.hidden_size, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        return F.normalize(self.proj(hidden[:, 0]), dim=-1)


def _export(module: nn.Module, args: tuple, names: list[str], path: Path, axes: dict) -> Path:
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=names, output_names=["embedding"],
                          dynamic_axes={**axes, "embedding": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    return Path(path)


def export_audio(module: AudioEmbedder, path: Path, samples: int = 16000) -> Path:
    wave = torch.randn(2, samples) * 0.1
    lengths = torch.tensor([samples, samples // 2])
    return _export(module, (wave, lengths), ["waveform", "lengths"], path,
                   {"waveform": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}})


def export_text(module: TextEmbedder, path: Path, tokens: int = 8) -> Path:
    ids = torch.ones(2, tokens, dtype=torch.long)
    mask = torch.ones(2, tokens, dtype=torch.long)
    return _export(module, (ids, mask), ["input_ids", "attention_mask"], path,
                   {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}})
