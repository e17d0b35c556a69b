"""Acoustic variation for training: speaking rate, rooms, background noise and other
talkers (0-20 dB SNR), band-limited microphones and telephone lines, loudness.

The synthetic corpus is clean espeak-ng speech; a sales floor has rooms, music, other
customers talking and cheap microphones. Each augmented view of an utterance draws its
own changes from a generator seeded by the utterance, so a run is reproducible; babble
talkers come from `babble`, the other utterances being featurised with it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import soxr
from scipy.signal import fftconvolve

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
    wet = fftconvolve(audio, ir)[: audio.size]
    return wet / (np.abs(ir).sum() ** 0.5 + 1e-12)


def _babble(rng: np.random.Generator, n: int, talkers: Sequence[np.ndarray]) -> np.ndarray:
    """3-6 other talkers at equal level, each from a random point, looped to length n."""
    mix = np.zeros(n)
    for k in rng.choice(len(talkers), size=min(len(talkers), int(rng.integers(3, 7))), replace=False):
        talk = np.asarray(talkers[k], np.float64)
        talk = np.tile(talk, -(-n // max(talk.size, 1)) + 1)
        start = int(rng.integers(talk.size - n + 1))
        talk = talk[start:start + n]
        mix += talk / (talk.std() + 1e-12)
    return mix / (mix.std() + 1e-12)


def _microphone(rng: np.random.Generator, audio: np.ndarray) -> np.ndarray:
    """A telephone line (8 kHz and back) or a cheap microphone's band."""
    if rng.random() < 0.4:
        narrow = soxr.resample(audio, SAMPLE_RATE, 8000)
        out = soxr.resample(narrow, 8000, SAMPLE_RATE)[: audio.size]
        low, high = 300.0, 3400.0
    else:
        out, low, high = audio, rng.uniform(60.0, 400.0), rng.uniform(3000.0, 7500.0)
    spectrum = np.fft.rfft(out, audio.size)
    f = np.fft.rfftfreq(audio.size, 1.0 / SAMPLE_RATE)
    spectrum[(f < low) | (f > high)] = 0.0
    return np.fft.irfft(spectrum, audio.size)


def augment(audio: np.ndarray, rng: np.random.Generator, babble: Sequence[np.ndarray] = ()) -> np.ndarray:
    """One random variant of a 16 kHz utterance (float32, same rate, length may change)."""
    out = np.asarray(audio, np.float64)
    if rng.random() < 0.6:  # speaking rate (and pitch with it, as a different voice)
        factor = rng.uniform(0.88, 1.12)
        out = soxr.resample(out, SAMPLE_RATE, SAMPLE_RATE / factor)
    if rng.random() < 0.5:
        out = _room(rng, out)
    if rng.random() < 0.8:
        power = np.mean(out ** 2) + 1e-12
        snr_db = rng.uniform(0.0, 20.0)
        if len(babble) >= 3 and rng.random() < 0.5:
            noise = _babble(rng, out.size, babble)
        else:
            noise = _noise(rng, out.size, rng.choice(["white", "pink", "brown"]))
        out = out + noise * np.sqrt(power / 10 ** (snr_db / 10))
    if rng.random() < 0.35:
        out = _microphone(rng, out)
    peak = np.abs(out).max() + 1e-12
    gain = 10 ** (rng.uniform(-18.0, 0.0) / 20) / peak * rng.uniform(0.3, 1.0)
    return np.clip(out * gain, -1.0, 1.0).astype(np.float32)


def views(audio: np.ndarray, count: int, seed: int, key: int,
          babble: Sequence[np.ndarray] = ()) -> list[np.ndarray]:
    """`count` views of one utterance: the clean one first, then augmented ones."""
    out = [np.asarray(audio, np.float32)]
    for v in range(1, count):
        out.append(augment(audio, np.random.default_rng([seed, key, v]), babble))
    return out
