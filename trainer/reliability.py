"""How well scores are calibrated: expected calibration error, Brier score, log-loss, and
the reliability diagram.

A score is the probability of the positive pole, so calibration is measured on it
directly: among utterances scored about 0.7, about 70 % should be labelled positive.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

BINS = 15
# Scores are float32: beyond this they read as exactly 0 or 1, which log-loss cannot take.
EPS = 1e-7


def _check(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(probs, np.float64).reshape(-1), np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} scores for {y.size} labels")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("scores must be probabilities in [0, 1]")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    return p, y.astype(np.float64)


def bin_of(probs, bins: int = BINS) -> np.ndarray:
    """Equal-width bin of each score: [0, 1/bins), ..., [(bins-1)/bins, 1] (1 in the last)."""
    return np.clip(np.floor(np.asarray(probs, np.float64) * bins), 0, bins - 1).astype(int)


def reliability_bins(probs, labels, bins: int = BINS) -> list[dict]:
    """Per non-empty bin: its range, count, mean score and fraction positive."""
    p, y = _check(probs, labels)
    which = bin_of(p, bins)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append({"low": b / bins, "high": (b + 1) / bins, "count": int(mask.sum()),
                        "mean_score": float(p[mask].mean()), "positive_rate": float(y[mask].mean())})
    return out


def expected_calibration_error(probs, labels, bins: int = BINS) -> float:
    """Σ over bins of (share of utterances in the bin) × |fraction positive − mean score|."""
    p, y = _check(probs, labels)
    if p.size == 0:
        return math.nan
    return float(sum(b["count"] / p.size * abs(b["positive_rate"] - b["mean_score"])
                     for b in reliability_bins(p, y, bins)))


def brier(probs, labels) -> float:
    p, y = _check(probs, labels)
    return float(np.mean((p - y) ** 2)) if p.size else math.nan


def log_loss(probs, labels) -> float:
    """Mean negative log-likelihood (nats), scores clipped to [EPS, 1 − EPS]."""
    p, y = _check(probs, labels)
    if p.size == 0:
        return math.nan
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def quality(probs, labels, bins: int = BINS) -> dict:
    """{n, positives, ece, brier, log_loss} of scores against binary labels."""
    p, y = _check(probs, labels)
    return {"n": int(p.size), "positives": int(y.sum()), "ece": expected_calibration_error(p, y, bins),
            "brier": brier(p, y), "log_loss": log_loss(p, y)}


def reliability_diagram(panels: list[dict], path: Path, title: str) -> Path:
    """One panel per emotion: fraction positive against mean score per bin, before and after
    calibration, each point sized by its bin's count. `panels`: {"emotion", "before",
    "after" (bins from `reliability_bins`, or None), "ece_before", "ece_after"}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels):
        ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect")
        for key, colour, name in (("before", "tab:red", "before"), ("after", "tab:blue", "after")):
            bins = panel.get(key)
            if not bins:
                continue
            x = [b["mean_score"] for b in bins]
            y = [b["positive_rate"] for b in bins]
            total = sum(b["count"] for b in bins)
            sizes = [12 + 200 * b["count"] / total for b in bins]
            ece = panel.get(f"ece_{key}")
            ax.plot(x, y, "-", color=colour, lw=1, alpha=0.7)
            ax.scatter(x, y, s=sizes, color=colour, alpha=0.7,
                       label=f"{name} (ECE {ece:.3f})" if ece is not None and math.isfinite(ece) else name)
        ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="mean score", ylabel="fraction positive")
        ax.set_title(panel["emotion"], fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
