"""Audio in the one form every stage works on: 16 kHz mono float32 in [-1, 1]."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000


class AudioError(ValueError):
    """An audio file that cannot be read; the message names the file."""


def to_float(samples: np.ndarray) -> np.ndarray:
    """int16 PCM → float32 in [-1, 1); float input passes through as float32."""
    samples = np.asarray(samples)
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return samples.astype(np.float32, copy=False)


def read_channels(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """All channels of a file as float32 [channels, samples] at `sample_rate`."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"{path}: cannot read audio: {exc}") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no audio samples")
    if rate != sample_rate:
        data = soxr.resample(data, rate, sample_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(data.T)


def read_mono(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A file down-mixed to mono float32 [samples] at `sample_rate`."""
    channels = read_channels(path, sample_rate)
    return channels.mean(axis=0) if channels.shape[0] > 1 else channels[0]


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float audio ([samples] or [channels, samples]) as 16-bit PCM WAV."""
    data = audio.T if audio.ndim == 2 else audio
    sf.write(str(path), np.clip(data, -1.0, 1.0), sample_rate, subtype="PCM_16")


def pad_batch(clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded float32 [n, longest] and int64 lengths [n]: the audio encoder's inputs."""
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    wave = np.zeros((len(clips), int(lengths.max(initial=0))), dtype=np.float32)
    for i, c in enumerate(clips):
        wave[i, : len(c)] = c
    return wave, lengths


def length_batches(lengths: list[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (shortest first), so padding is small."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), max(1, batch_size))]
