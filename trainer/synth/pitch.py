"""Pitch range for engines without a range control: the utterance's own f0 contour,
tracked here, becomes a chain of sox `bend` segments that widen or narrow its
excursions around the median (what espeak-ng's SSML prosody range does inside the
engine)."""
from __future__ import annotations

import numpy as np
import soxr

RATE = 16000
FRAME = 800          # 50 ms: three periods of the lowest voice (60 Hz)
HOP = 160            # 10 ms
LOW, HIGH = 60.0, 700.0
KNOT = 0.08          # seconds between the bend's knots
OUTLIER = 6.0        # semitones from the neighbourhood's median: an octave error, dropped


def track(audio: np.ndarray, rate: int) -> np.ndarray:
    """f0 every 10 ms in semitones above 100 Hz; NaN where unvoiced or quiet."""
    x = soxr.resample(np.asarray(audio, np.float32), rate, RATE).astype(np.float64)
    if x.size < FRAME:
        return np.full(0, np.nan)
    frames = x[np.arange(FRAME)[None] + HOP * np.arange(1 + (x.size - FRAME) // HOP)[:, None]]
    frames = frames - frames.mean(axis=1, keepdims=True)
    level = np.sqrt((frames ** 2).mean(axis=1))
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames * np.hanning(FRAME), 2 * FRAME)) ** 2)[:, :FRAME]
    ac = ac / (ac[:, :1] + 1e-12)
    lo, hi = int(RATE / HIGH), int(RATE / LOW)
    seg = ac[:, lo:hi]
    best = seg.max(axis=1)
    # The shortest lag whose correlation is within 10% of the best: no octave drops.
    local = (seg[:, 1:-1] > seg[:, :-2]) & (seg[:, 1:-1] >= seg[:, 2:])
    good = local & (seg[:, 1:-1] >= 0.9 * best[:, None])
    first = np.where(good.any(axis=1), good.argmax(axis=1) + 1, seg.argmax(axis=1))
    f0 = 12 * np.log2(RATE / (lo + first) / 100.0)
    voiced = (best > 0.5) & (level > 0.1 * (level.max() or 1.0))
    f0 = np.where(voiced, f0, np.nan)
    # A bend that followed an octave jump would be a 12-semitone swoop: such frames go.
    keep = f0.copy()
    for i in np.flatnonzero(voiced):
        near = f0[max(0, i - 10):i + 11]
        if abs(f0[i] - np.nanmedian(near)) > OUTLIER:
            keep[i] = np.nan
    return keep


def range_bend(audio: np.ndarray, rate: int, factor: float) -> tuple[str, ...]:
    """sox effect arguments that scale the f0 excursions of `audio` around their median by
    `factor` (1: unchanged), or () when there is too little voicing to follow."""
    f0 = track(audio, rate)
    voiced = np.flatnonzero(np.isfinite(f0))
    if voiced.size < 10 or abs(factor - 1) < 0.02:
        return ()
    times = np.arange(f0.size) * HOP / RATE + FRAME / RATE / 2
    contour = np.interp(times, times[voiced], f0[voiced])       # bridge unvoiced stretches
    contour = np.convolve(contour, np.ones(7) / 7, mode="same")  # 70 ms: no jitter in the bend
    knots = np.arange(0.0, times[-1], KNOT)
    excursion = np.clip(np.interp(knots, times, contour) - np.median(f0[voiced]), -8, 8)
    offset = 100 * (factor - 1) * excursion
    offset[0] = 0.0                                              # a bend starts from the original
    segments, delay, reached = [], 0.0, 0.0
    for target in offset[1:]:
        cents = int(round(target - reached))
        if cents == 0:  # sox refuses a bend of 0 cents: wait instead
            delay += KNOT
            continue
        segments.append(f"{delay:.3f},{cents},{KNOT:.3f}")
        reached += cents
        delay = 0.0
    # 50 pitch updates a second and 16x over-sampling: at the defaults (25, 16) or at -o 4
    # the moving bend costs Whisper-base twice the errors on OpenJTalk's speech.
    return ("bend", "-f", "50", "-o", "16", *segments) if segments else ()
