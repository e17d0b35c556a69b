"""How each corpus's ratings become the bipolar emotions' 1..7 ratings.

Dimensions map directly (valence is both pleasant–unpleasant and positive–negative);
categories map only onto the dimensions whose direction is not in doubt (signs of
Russell & Mehrabian's PAD estimates, 1977), everything else stays unrated: the labels
exclude unrated utterances per emotion, so a guess would only add noise.
"""
from __future__ import annotations

import math

VALENCE = ("pleasant", "positive")
AROUSAL = ("aroused",)
DOMINANCE = ("dominant",)
EMOTIONS = ("pleasant", "aroused", "dominant", "credible", "interested", "positive",
            "purchase_intention")

# category -> (valence, arousal, dominance) direction: +1, -1, 0 (the scale's middle),
# None (unrated).
CATEGORIES: dict[str, tuple[int | None, int | None, int | None]] = {
    "neutral": (0, 0, 0),
    "calm": (1, -1, None),
    "happy": (1, 1, 1),
    "sad": (-1, -1, -1),
    "angry": (-1, 1, 1),
    "fearful": (-1, 1, -1),
    "disgust": (-1, None, None),   # arousal and dominance near zero in PAD: no direction
    "surprised": (None, 1, None),  # pleasant or not depends on the surprise
}
ALIASES = {"anger": "angry", "ang": "angry", "a": "angry", "fear": "fearful", "fea": "fearful",
           "f": "fearful", "happiness": "happy", "hap": "happy", "h": "happy", "joy": "happy",
           "sadness": "sad", "s": "sad", "disgusted": "disgust", "dis": "disgust", "d": "disgust",
           "surprise": "surprised", "neu": "neutral", "n": "neutral"}


def round_half_out(x: float) -> int:
    """Nearest integer, halves away from the scale's centre 4, so the mapping stays symmetric."""
    d = x - 4.0
    return 4 + int(math.copysign(math.floor(abs(d) + 0.5), d))


def rescale(value: float, low: float, high: float) -> int:
    """A rating on low..high, linearly onto 1..7 (1 + (v - low) * 6 / (high - low)), rounded."""
    if not low <= value <= high:
        raise ValueError(f"rating {value:g} is outside {low:g}..{high:g}")
    return round_half_out(1 + (value - low) * 6 / (high - low))


def dimensions(valence: float | None, arousal: float | None, dominance: float | None,
               low: float, high: float) -> dict[str, int]:
    """One annotator's V/A/D ratings on low..high as emotion -> 1..7 (missing ones unrated)."""
    out: dict[str, int] = {}
    for value, names in ((valence, VALENCE), (arousal, AROUSAL), (dominance, DOMINANCE)):
        if value is not None:
            out.update(dict.fromkeys(names, rescale(value, low, high)))
    return out


def category(name: str, level: float) -> dict[str, int]:
    """A perceived or acted category at intensity `level` (0..1) as emotion -> 1..7:
    4 + direction * round(3 * level); neutral is 4 whatever its level."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in CATEGORIES:
        raise ValueError(f"unknown emotion category {name!r} (known: {', '.join(CATEGORIES)})")
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"intensity {level:g} is outside 0..1")
    out: dict[str, int] = {}
    for direction, names in zip(CATEGORIES[key], (VALENCE, AROUSAL, DOMINANCE)):
        if direction is not None:
            out.update(dict.fromkeys(names, round_half_out(4 + direction * 3 * level)))
    return out
