"""Simple acoustic descriptors of an utterance: pitch, loudness, timing, voice quality.

Cheap, dependency-free equivalents of the usual prosodic features (F0 level and range,
final contour, loudness, pauses, spectral balance, harmonicity). Used to check that
a corpus carries its labels in the audio, and as material for feature-based queries.
"""
from __future__ import annotations

import numpy as np

from emoclap.audio import SAMPLE_RATE

FRAME = 640      # 40 ms: two periods of an 50 Hz voice
HOP = 160        # 10 ms
F0_RANGE = (60.0, 400.0)

FEATURES = ("f0_median", "f0_range", "f0_final_slope", "voiced_fraction", "loudness",
            "loudness_var", "pause_fraction", "active_duration", "spectral_centroid",
            "high_band_ratio", "zero_crossings", "harmonicity", "loudness_modulation")


def _frames(audio: np.ndarray) -> np.ndarray:
    if audio.size < FRAME:
        audio = np.pad(audio, (0, FRAME - audio.size))
    count = 1 + (audio.size - FRAME) // HOP
    index = np.arange(FRAME)[None, :] + HOP * np.arange(count)[:, None]
    return audio[index]


def describe(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Feature vector (order of FEATURES) for float audio at 16 kHz."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"expected {SAMPLE_RATE} Hz audio, got {sample_rate}")
    frames = _frames(audio.astype(np.float64))
    frames = frames - frames.mean(axis=1, keepdims=True)
    rms = np.sqrt((frames ** 2).mean(axis=1)) + 1e-9
    db = 20 * np.log10(rms)
    active = db > db.max() - 35
    first, last = np.flatnonzero(active)[[0, -1]]
    span = slice(first, last + 1)

    windowed = frames * np.hanning(FRAME)
    spectrum = np.abs(np.fft.rfft(windowed, 2 * FRAME)) ** 2
    autocorr = np.fft.irfft(spectrum)[:, :FRAME]
    lo, hi = int(SAMPLE_RATE / F0_RANGE[1]), int(SAMPLE_RATE / F0_RANGE[0])
    lag = lo + np.argmax(autocorr[:, lo:hi], axis=1)
    peak = autocorr[np.arange(len(lag)), lag] / (autocorr[:, 0] + 1e-12)
    voiced = active & (peak > 0.5)
    semitones = 12 * np.log2(SAMPLE_RATE / lag / 100.0)

    freqs = np.fft.rfftfreq(2 * FRAME, 1 / SAMPLE_RATE)
    power = spectrum[active]
    centroid = (power * freqs).sum(axis=1) / (power.sum(axis=1) + 1e-12)
    high = power[:, freqs > 2500].sum(axis=1) / (power.sum(axis=1) + 1e-12)
    crossings = (np.diff(np.signbit(frames[active]), axis=1) != 0).mean(axis=1)

    if voiced.sum() >= 3:
        pitch = semitones[voiced]
        tail = pitch[int(0.75 * len(pitch)):]
        f0 = (np.median(pitch), np.percentile(pitch, 90) - np.percentile(pitch, 10),
              np.median(tail) - np.median(pitch))
    else:
        f0 = (0.0, 0.0, 0.0)
    loud = db[active]
    return np.array([
        *f0,
        voiced[span].mean(),
        loud.mean(),
        loud.std(),
        1.0 - active[span].mean(),
        (last - first + 1) * HOP / SAMPLE_RATE,
        centroid.mean(),
        high.mean(),
        crossings.mean(),
        peak[voiced].mean() if voiced.any() else 0.0,
        np.abs(np.diff(loud)).mean() if loud.size > 1 else 0.0,
    ])
