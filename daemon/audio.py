"""Reading audio files into the 16 kHz float32 form every stage works on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000


class AudioError(ValueError):
    """An audio file that cannot be read; the message names the file."""


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
