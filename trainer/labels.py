"""Binary labels from 1..7 annotator ratings, as in the method.

Per emotion: z-normalise the ratings, average them per utterance, take the most frequent
average as the threshold, exclude the utterances at it, and label the rest 0 (below) or
1 (above). Excluded and unrated utterances get EXCLUDED (-1).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from trainer.manifest import Utterance

EXCLUDED = -1
NORMALISATIONS = ("pooled", "annotator")
# Averages of z-scores are floats; equal averages must count as one value for the mode.
_DECIMALS = 9


class LabelError(ValueError):
    pass


@dataclass(frozen=True)
class EmotionLabels:
    emotion: str
    labels: np.ndarray          # int8 per utterance: 0, 1 or EXCLUDED
    combined: np.ndarray        # float per utterance: mean normalised rating (nan if unrated)
    threshold: float
    at_threshold: int           # rated utterances excluded because they sit on the threshold

    @property
    def negatives(self) -> int:
        return int((self.labels == 0).sum())

    @property
    def positives(self) -> int:
        return int((self.labels == 1).sum())

    @property
    def unrated(self) -> int:
        return int(np.isnan(self.combined).sum())


def _normaliser(ratings: list[tuple[int, str, int]], emotion: str, how: str):
    """Return f(annotator, score) -> z-score for the chosen normalisation."""
    def stats(values: list[int], who: str) -> tuple[float, float]:
        std = float(np.std(values))
        if std == 0.0:
            raise LabelError(f"emotion '{emotion}': {who} gave every utterance the same "
                             f"score ({values[0]}), so it cannot be normalised")
        return float(np.mean(values)), std

    if how == "pooled":
        mean, std = stats([s for _, _, s in ratings], "the annotators together")
        return lambda annotator, score: (score - mean) / std
    if how != "annotator":
        raise LabelError(f"normalisation must be one of {NORMALISATIONS}, got {how!r}")
    per: dict[str, list[int]] = {}
    for _, annotator, score in ratings:
        per.setdefault(annotator, []).append(score)
    table = {a: stats(v, f"annotator '{a}'") for a, v in per.items()}
    return lambda annotator, score: (score - table[annotator][0]) / table[annotator][1]


def label_emotion(utterances: Sequence[Utterance], emotion: str,
                  normalisation: str = "pooled") -> EmotionLabels:
    ratings = [(i, annotator, scores[emotion])
               for i, u in enumerate(utterances)
               for annotator, scores in u.ratings.items() if emotion in scores]
    if not ratings:
        raise LabelError(f"emotion '{emotion}': no utterance is rated")
    z = _normaliser(ratings, emotion, normalisation)
    sums = np.zeros(len(utterances))
    counts = np.zeros(len(utterances))
    for i, annotator, score in ratings:
        sums[i] += z(annotator, score)
        counts[i] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        combined = np.round(sums / counts, _DECIMALS)  # nan where unrated
    rated = combined[~np.isnan(combined)]
    frequency = Counter(rated.tolist())
    top = max(frequency.values())
    # Ties between equally frequent values go to the one nearest the median, which
    # keeps the two classes closest to balanced; then to the lower one.
    median = float(np.median(rated))
    threshold = min((v for v, n in frequency.items() if n == top),
                    key=lambda v: (abs(v - median), v))
    labels = np.full(len(utterances), EXCLUDED, dtype=np.int8)
    labels[combined < threshold] = 0
    labels[combined > threshold] = 1
    return EmotionLabels(emotion=emotion, labels=labels, combined=combined,
                         threshold=float(threshold), at_threshold=top)


def rated_emotions(utterances: Iterable[Utterance]) -> list[str]:
    """Every emotion rated anywhere in the corpus, sorted."""
    return sorted(set().union(*(u.emotions for u in utterances)))


def binary_labels(utterances: Sequence[Utterance], emotions: Iterable[str] | None = None,
                  normalisation: str = "pooled") -> dict[str, np.ndarray]:
    """emotion -> int8 labels per utterance (0, 1 or EXCLUDED)."""
    names = rated_emotions(utterances) if emotions is None else list(emotions)
    return {e: label_emotion(utterances, e, normalisation).labels for e in names}
