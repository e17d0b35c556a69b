"""A prompt file's scoring knobs: the audio path's temperature and bias, the text path's,
and the fused score's weight on each path's logit (README "How a score is made"); their
limits, and how a value is written into a file."""
from __future__ import annotations

import math

# Each knob's (low, high, low allowed). A temperature left out is the bundle's logit
# scale; a bias 0; a weight 1.
KNOB_LIMITS = {"temperature": (0.0, 1000.0, False), "bias": (-100.0, 100.0, True),
               "text_temperature": (0.0, 1000.0, False), "text_bias": (-100.0, 100.0, True),
               "audio_weight": (0.0, 10.0, True), "text_weight": (0.0, 10.0, True)}
KNOB_DEFAULTS = {"bias": 0.0, "text_bias": 0.0, "audio_weight": 1.0, "text_weight": 1.0}


def knob_problem(key: str, value: float) -> str | None:
    """Why `value` cannot be knob `key` ("must be ..."), or None."""
    low, high, low_ok = KNOB_LIMITS[key]
    if not (math.isfinite(value) and (low <= value if low_ok else low < value) and value <= high):
        more = "at least" if low_ok else "greater than"
        return f"must be {more} {low:g} and at most {high:g}"
    return None


def knob_text(value: float) -> str:
    """A knob as written into a file: 6 significant digits, always a TOML float."""
    text = f"{float(value):.6g}"
    return text if any(c in text for c in ".e") else text + ".0"


KNOBS = tuple(KNOB_LIMITS)
