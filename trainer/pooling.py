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

from emoclap import pieces

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


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frame count [B], mean [B, H] and population variance [B, H] of x [B, T, H] over
    the frames where mask [B, T] is true: what a piece contributes to its utterance."""
    m = mask.to(x.dtype).unsqueeze(-1)
    n = m.sum(1)
    mean = (x * m).sum(1) / n.clamp(min=1.0)
    var = (((x - mean[:, None]) ** 2) * m).sum(1) / n.clamp(min=1.0)
    return n[:, 0], mean, var


class AudioPooling(nn.Module):
    def __init__(self, hidden: int, depth: int, layers: str = "last", pooling: str = "mean",
                 piece_samples: int = 0):
        """`depth`: how many hidden states the tower gives (its layers + the input);
        `piece_samples` > 0: utterances are encoded in pieces that long (emoclap.pieces)."""
        super().__init__()
        self.piece_samples = piece_samples
        if layers not in LAYERS or pooling not in POOLING:
            raise ValueError(f"audio layers {layers!r} / pooling {pooling!r}: expected {LAYERS} / {POOLING}")
        self.layers, self.std = layers, pooling == "stats"
        self.hidden = hidden
        self.depth = depth if layers == "all" else 1
        self.width = hidden * (2 if self.std else 1)
        self.mix = nn.Parameter(torch.zeros(self.depth)) if self.depth > 1 else None

    def states(self, tower: nn.Module, waveform: torch.Tensor, lengths: torch.Tensor, offsets=None):
        """The hidden states this pooling reads (every layer, or the last alone) and the mask;
        `offsets`: where each row starts in its utterance, in samples (a piece's)."""
        extra = () if offsets is None else (offsets,)
        if self.layers == "all":
            return tower.states(waveform, lengths, *extra)
        frames, mask = tower(waveform, lengths, *extra)
        return [frames], mask

    def statistics(self, states: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """[B, L, S] from the tower's hidden states (input first, last layer last)."""
        used = states if self.layers == "all" else states[-1:]
        return torch.stack([masked_stats(h, mask, self.std) for h in used], dim=1)

    def utterance_statistics(self, tower: nn.Module, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, L, S] of each utterance: its frames pooled in one pass, or, with pieces, each
        piece encoded alone and their moments merged (what the runtime does, piece by piece)."""
        if not self.piece_samples:
            return self.statistics(*self.states(tower, waveform, lengths))
        rows, starts, owner = [], [], []
        for b, n in enumerate(lengths.tolist()):
            for start, end in pieces.bounds(int(n), self.piece_samples, tower.min_samples):
                rows.append(waveform[b, start:end])
                starts.append(start)
                owner.append(b)
        sizes = torch.tensor([r.shape[0] for r in rows], dtype=torch.long, device=waveform.device)
        batch = torch.zeros(len(rows), int(sizes.max()), dtype=waveform.dtype, device=waveform.device)
        for i, r in enumerate(rows):
            batch[i, : r.shape[0]] = r
        offsets = torch.tensor(starts, dtype=torch.long, device=waveform.device)
        count, mean, var = self.moments(*self.states(tower, batch, sizes, offsets))
        owner = torch.tensor(owner, device=waveform.device)
        merged = [pieces.merge(count[owner == b], mean[owner == b], var[owner == b]) for b in range(len(lengths))]
        return self.from_moments(torch.stack([m for m, _ in merged]), torch.stack([v for _, v in merged]))

    def moments(self, states: list[torch.Tensor], mask: torch.Tensor):
        """Per row: frame count [B], and per layer used the frames' mean and variance [B, L, H]."""
        used = states if self.layers == "all" else states[-1:]
        parts = [masked_moments(h, mask) for h in used]
        return parts[0][0], torch.stack([p[1] for p in parts], 1), torch.stack([p[2] for p in parts], 1)

    def from_moments(self, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        """[B, L, S] statistics from merged moments (`statistics`, had the frames been pooled at once)."""
        return pieces.statistics(mean, variance, self.std, torch.cat)

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        if self.mix is None:
            return stats[:, 0]
        parts = stats.unflatten(-1, (-1, self.hidden))            # [B, L, 1|2, H]
        normed = F.layer_norm(parts, (self.hidden,)).flatten(-2)  # [B, L, S]
        weights = torch.softmax(self.mix, dim=0)
        return (normed * weights[None, :, None]).sum(1)

    def layer_weights(self) -> list[float]:
        return [1.0] if self.mix is None else torch.softmax(self.mix.detach(), 0).tolist()
