"""Hidden emotional state of synthetic speakers and how it shapes their voice.

Every utterance has an intensity in [-1, 1] for each of the six bipolar emotions
(+1: the positive pole). Customers also have a purchase intention that depends on
some of them. Intensities drive vocal controls through a mixing matrix in which every
emotion moves several controls and every control is moved by several emotions, so no
single control gives one label away and the mapping is still learnable from audio.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMOTIONS = ("pleasant", "aroused", "dominant", "credible", "interested", "positive")
PURCHASE = "purchase_intention"

CONTROLS = ("pitch_level", "pitch_range", "final_contour", "rate", "loudness", "pauses",
            "harshness", "tremor", "brightness")

# Rows: controls; columns: EMOTIONS (pleasant, aroused, dominant, credible, interested,
# positive). Units: control standard deviations per unit of intensity.
MIXING = np.array([
    # pl    ar    do    cr    in    po
    [0.30, 0.55, -0.35, 0.00, 0.25, 0.00],   # pitch_level
    [0.00, 0.45, 0.00, 0.00, 0.55, 0.30],    # pitch_range
    [0.00, 0.00, -0.45, -0.55, 0.35, 0.00],  # final_contour (+ rises, - falls)
    [0.00, 0.55, 0.30, 0.30, 0.25, 0.00],    # rate
    [0.00, 0.40, 0.55, 0.00, 0.00, 0.30],    # loudness
    [0.00, -0.45, 0.00, -0.55, -0.30, 0.00], # pauses
    [-0.60, 0.00, 0.35, 0.00, 0.00, -0.40],  # harshness
    [0.00, 0.00, -0.50, -0.40, 0.00, -0.25], # tremor
    [0.55, 0.00, 0.00, 0.00, 0.00, 0.45],    # brightness
])

# Correlations between emotions, as in real speech: pleasant and positive go together,
# interest comes with arousal. Moderate, so each label stays separately learnable.
_CORRELATION = np.array([
    [1.0, 0.1, 0.0, 0.2, 0.2, 0.5],
    [0.1, 1.0, 0.2, 0.0, 0.3, 0.1],
    [0.0, 0.2, 1.0, 0.1, 0.0, 0.0],
    [0.2, 0.0, 0.1, 1.0, 0.2, 0.2],
    [0.2, 0.3, 0.0, 0.2, 1.0, 0.2],
    [0.5, 0.1, 0.0, 0.2, 0.2, 1.0],
])
_CHOLESKY = np.linalg.cholesky(_CORRELATION)

# Purchase intention (customers): driven by interest, positivity, trust and pleasantness.
_PURCHASE_WEIGHTS = np.array([0.45, 0.0, 0.0, 0.75, 0.95, 0.8])


@dataclass(frozen=True)
class Affect:
    intensities: np.ndarray       # [6] in [-1, 1], order of EMOTIONS
    purchase: float | None        # in [-1, 1]; customers only

    def as_dict(self) -> dict[str, float]:
        out = {e: round(float(v), 4) for e, v in zip(EMOTIONS, self.intensities)}
        if self.purchase is not None:
            out[PURCHASE] = round(float(self.purchase), 4)
        return out


def _correlated(rng: np.random.Generator, scale: float) -> np.ndarray:
    return scale * (_CHOLESKY @ rng.standard_normal(len(EMOTIONS)))


class MoodWalk:
    """A speaker's mood over one dialogue: a persistent disposition plus a slow drift,
    with utterance-level variation on top, so rolling scores have something to track."""

    def __init__(self, rng: np.random.Generator, role: str):
        self.rng = rng
        self.role = role
        disposition = _correlated(rng, 0.45)
        if role == "staff":
            # Sales staff are trained to sound pleasant, positive and credible.
            disposition += np.array([0.25, 0.1, 0.1, 0.2, 0.1, 0.25])
        self.state = disposition
        self.drift = _correlated(rng, 0.25)

    def next(self) -> Affect:
        self.state = 0.85 * self.state + 0.15 * self.drift + _correlated(self.rng, 0.2)
        # Most speech is near neutral, as in real annotations; strong states are rarer.
        utterance = self.state + _correlated(self.rng, 0.4)
        intensities = np.tanh(utterance)
        purchase = None
        if self.role == "customer":
            drive = _PURCHASE_WEIGHTS @ intensities + 0.35 * self.rng.standard_normal()
            purchase = float(np.tanh(0.6 * drive))
        return Affect(intensities=intensities, purchase=purchase)


def vocal_controls(affect: Affect, rng: np.random.Generator) -> dict[str, float]:
    """Control values (about unit scale) for one utterance, with rendering noise."""
    values = 1.6 * (MIXING @ affect.intensities) + 0.2 * rng.standard_normal(len(CONTROLS))
    return {name: float(v) for name, v in zip(CONTROLS, values)}
