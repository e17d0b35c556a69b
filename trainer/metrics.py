"""Classification metrics of the method: WA, UA, per-class recall, Youden threshold, sign test."""
from __future__ import annotations

import numpy as np


def _valid(y, pred):
    y, pred = np.asarray(y), np.asarray(pred)
    keep = y >= 0
    return y[keep], pred[keep]


def weighted_accuracy(y, pred) -> float:
    """WA: accuracy over all (labelled) samples; label -1 = excluded."""
    y, pred = _valid(y, pred)
    return float(np.mean(y == pred)) if len(y) else float("nan")


def recalls(y, pred) -> dict[int, float]:
    y, pred = _valid(y, pred)
    return {int(c): float(np.mean(pred[y == c] == c)) for c in np.unique(y)}


def unweighted_accuracy(y, pred) -> float:
    """UA: mean of the per-class recalls of the classes present."""
    r = recalls(y, pred)
    return float(np.mean(list(r.values()))) if r else float("nan")


def youden_threshold(y, score) -> float:
    """Score threshold maximising TPR − FPR on the ROC curve (predict 1 when score ≥ it)."""
    from sklearn.metrics import roc_curve

    y, score = _valid(y, score)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, score)
    best = int(np.argmax(tpr - fpr))
    return float(min(thr[best], np.max(score)))  # roc_curve's first threshold is +inf


def sign_test(correct_a, correct_b) -> dict:
    """Two-tailed sign test on per-sample correctness: only discordant pairs count."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = a_only + b_only
    p = binomtest(a_only, n, 0.5, alternative="two-sided").pvalue if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p": float(p)}


def random_guess(y, seed: int = 0) -> np.ndarray:
    """The random row: each sample's class drawn uniformly."""
    return np.random.default_rng(seed).integers(0, 2, len(np.asarray(y)))


def summary(y, pred) -> dict:
    r = recalls(y, pred)
    return {"wa": weighted_accuracy(y, pred), "ua": unweighted_accuracy(y, pred),
            "recall_0": r.get(0, float("nan")), "recall_1": r.get(1, float("nan")),
            "n": int(np.sum(np.asarray(y) >= 0))}
