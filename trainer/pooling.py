"""How an utterance's encoder frames become one vector, in two halves.

`statistics` is the fixed half: per encoder layer, the mean (and, with "stats", the
standard deviation) of the valid frames, [B, L, S]. With a frozen tower it is what the
feature cache stores. `forward` is the learned half: with every layer in use, each
layer's statistics are layer-normalised (the residual stream grows in scale with depth)
and mixed by softmax weights, as SUPERB's weighted sum does, [B, S]. The last layer
with the mean alone is plain masked mean pooling and learns nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYERS = ("last", "all")
POOLING = ("mean", "stats")


def masked_stats(x: torch.Tensor, mask: torch.Tensor, std: bool) -> torch.Tensor:
    """[B, H] mean, or [B, 2H] mean and standard deviation, of x [B, T, H] over the frames
    where mask [B, T] is true."""
    m = mask.to(x.dtype).unsqueeze(-1)
    n = m.sum(1).clamp(min=1.0)
    mean = (x * m).sum(1) / n
    if not std:
        return mean
    var = (((x - mean[:, None]) ** 2) * m).sum(1) / n
    return torch.cat([mean, torch.sqrt(var + 1e-6)], dim=-1)


class AudioPooling(nn.Module):
    def __init__(self, hidden: int, depth: int, layers: str = "last", pooling: str = "mean"):
        """`depth`: how many hidden states the tower gives (its layers + the input)."""
        super().__init__()
        if layers not in LAYERS or pooling not in POOLING:
            raise ValueError(f"audio layers {layers!r} / pooling {pooling!r}: expected {LAYERS} / {POOLING}")
        self.layers, self.std = layers, pooling == "stats"
        self.hidden = hidden
        self.depth = depth if layers == "all" else 1
        self.width = hidden * (2 if self.std else 1)
        self.mix = nn.Parameter(torch.zeros(self.depth)) if self.depth > 1 else None

    def states(self, tower: nn.Module, waveform: torch.Tensor, lengths: torch.Tensor):
        """The hidden states this pooling reads (every layer, or the last alone) and the mask."""
        if self.layers == "all":
            return tower.states(waveform, lengths)
        frames, mask = tower(waveform, lengths)
        return [frames], mask

    def statistics(self, states: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """[B, L, S] from the tower's hidden states (input first, last layer last)."""
        used = states if self.layers == "all" else states[-1:]
        return torch.stack([masked_stats(h, mask, self.std) for h in used], dim=1)

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        if self.mix is None:
            return stats[:, 0]
        parts = stats.unflatten(-1, (-1, self.hidden))            # [B, L, 1|2, H]
        normed = F.layer_norm(parts, (self.hidden,)).flatten(-2)  # [B, L, S]
        weights = torch.softmax(self.mix, dim=0)
        return (normed * weights[None, :, None]).sum(1)

    def layer_weights(self) -> list[float]:
        return [1.0] if self.mix is None else torch.softmax(self.mix.detach(), 0).tolist()
