"""Simulated annotators: each perceives the hidden intensities through their own bias,
scale use and noise, and answers on the 1..7 scale, so the label pipeline meets the
problems real annotations have (one rater scores high, another uses the middle)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.synth.affect import EMOTIONS, PURCHASE, Affect


@dataclass(frozen=True)
class Annotator:
    id: str
    bias: float      # shift on the 1..7 scale
    spread: float    # how much of the scale they use
    noise: float     # standard deviation of their perception noise

    def rate(self, intensity: float, rng: np.random.Generator) -> int:
        value = 4 + 2.6 * self.spread * intensity + self.bias + self.noise * rng.standard_normal()
        return int(np.clip(np.rint(value), 1, 7))


ANNOTATORS = (
    Annotator("ann1", bias=0.5, spread=1.0, noise=0.55),
    Annotator("ann2", bias=-0.6, spread=0.75, noise=0.6),
    Annotator("ann3", bias=0.1, spread=1.2, noise=0.75),
)


def rate_utterance(affect: Affect, role: str, rng: np.random.Generator
                   ) -> dict[str, dict[str, int]]:
    """annotator -> emotion -> score; purchase intention on customer lines only."""
    ratings = {}
    for annotator in ANNOTATORS:
        scores = {e: annotator.rate(float(v), rng) for e, v in zip(EMOTIONS, affect.intensities)}
        if role == "customer" and affect.purchase is not None:
            scores[PURCHASE] = annotator.rate(affect.purchase, rng)
        ratings[annotator.id] = scores
    return ratings
