"""Acoustic variation for training: loudness, speaking rate, background noise, room tone.

The synthetic corpus has a handful of clean espeak-ng voices; real counters have other
voices, distances, rooms and noise. Each augmented view of an utterance draws its own
changes from a seeded generator, so a run is reproducible and a view is the same every
time it is computed.
"""
from __future__ import annotations

import numpy as np
import soxr

from emoclap.audio import SAMPLE_RATE


def _noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    white = rng.standard_normal(n)
    if colour == "white":
        return white
    # Pink (1/f) and brown (1/f²) noise by shaping the spectrum: hum, fans and traffic
    # sound more like these than like white noise.
    spectrum = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    spectrum /= np.sqrt(f) if colour == "pink" else f
    shaped = np.fft.irfft(spectrum, n)
    return shaped / (shaped.std() + 1e-12)


def _room(rng: np.random.Generator, audio: np.ndarray) -> np.ndarray:
    """A synthetic room: exponentially decaying noise as the impulse response."""
    rt60 = rng.uniform(0.15, 0.7)
    length = int(rt60 * SAMPLE_RATE)
    t = np.arange(length) / SAMPLE_RATE
    ir = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0 / rng.uniform(0.3, 1.0)  # the direct path, louder when the speaker is close
    wet = np.convolve(audio, ir)[: audio.size]
    return wet / (np.abs(ir).sum() ** 0.5 + 1e-12)


def augment(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random variant of a 16 kHz utterance (float32, same rate, length may change)."""
    out = np.asarray(audio, np.float64)
    if rng.random() < 0.6:  # speaking rate (and pitch with it, as a different voice)
        factor = rng.uniform(0.88, 1.12)
        out = soxr.resample(out, SAMPLE_RATE, SAMPLE_RATE / factor)
    if rng.random() < 0.5:
        out = _room(rng, out)
    if rng.random() < 0.7:
        power = np.mean(out ** 2) + 1e-12
        snr_db = rng.uniform(5.0, 30.0)
        noise = _noise(rng, out.size, rng.choice(["white", "pink", "brown"]))
        out = out + noise * np.sqrt(power / 10 ** (snr_db / 10))
    peak = np.abs(out).max() + 1e-12
    gain = 10 ** (rng.uniform(-18.0, 0.0) / 20) / peak * rng.uniform(0.3, 1.0)
    return np.clip(out * gain, -1.0, 1.0).astype(np.float32)


def views(audio: np.ndarray, count: int, seed: int, key: int) -> list[np.ndarray]:
    """`count` views of one utterance: the clean one first, then augmented ones."""
    out = [np.asarray(audio, np.float32)]
    for v in range(1, count):
        out.append(augment(audio, np.random.default_rng([seed, key, v])))
    return out
