"""Multi-class multi-task contrastive loss with label-equality targets."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(audio: torch.Tensor, text: torch.Tensor, labels: torch.Tensor,
                     scale: torch.Tensor | float, kind: str = "ce") -> torch.Tensor:
    """One emotion's symmetric loss.

    audio, text: [B, D] L2-normalised (text row i describes utterance i's class);
    labels: [B] class ids, -1 = excluded from this emotion. Same-class pairs are
    positives: "ce" uses the row-normalised label-equality matrix as the target
    distribution, "kl" (GEmo-CLAP) the row softmax of that matrix under KL divergence.
    Averaged over the audio→text and text→audio directions.
    """
    keep = labels >= 0
    if int(keep.sum()) == 0:
        return audio.new_zeros(())
    a, t, y = audio[keep], text[keep], labels[keep]
    logits = scale * a @ t.T
    same = (y[:, None] == y[None, :]).to(logits.dtype)
    if kind == "ce":
        target = same / same.sum(1, keepdim=True)
    elif kind == "kl":
        target = torch.softmax(same, dim=1)
    else:
        raise ValueError(f"unknown loss kind {kind!r}; expected 'ce' or 'kl'")
    # `same` is symmetric, so the same target serves both directions.
    total = 0.0
    for lg in (logits, logits.T):
        logp = F.log_softmax(lg, dim=1)
        if kind == "ce":
            total = total + -(target * logp).sum(1).mean()
        else:
            total = total + (target * (target.log() - logp)).sum(1).mean()
    return total / 2


def multitask_loss(audio: torch.Tensor, pole_text: torch.Tensor, labels: torch.Tensor,
                   scale: torch.Tensor | float, kind: str = "ce") -> torch.Tensor:
    """Sum over emotions of `contrastive_loss`.

    audio: [B, D]; pole_text: [K, 2, D], the embedded description of each pole of each
    emotion for this step; labels: [B, K] in {0, 1, -1}.
    """
    total = audio.new_zeros(())
    for k in range(labels.shape[1]):
        y = labels[:, k]
        text = pole_text[k][y.clamp(min=0)]
        total = total + contrastive_loss(audio, text, y, scale, kind)
    return total
