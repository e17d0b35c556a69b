"""Audio in the one form every stage works on: 16 kHz mono float32 in [-1, 1]."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000
# What the audio encoder is given: shorter utterances are not embedded (and not scored);
# longer ones are embedded in chunks, whose embeddings are averaged.
MIN_UTTERANCE_S = 0.25
MAX_CHUNK_S = 10.0


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


def chunks(audio: np.ndarray, chunk_samples: int, long_utterances: str = "split") -> list[np.ndarray]:
    """The pieces an utterance is embedded in: itself when it fits in `chunk_samples`,
    else equal chunks ("split"; none a sliver too short to say anything) or its start ("cap")."""
    n = audio.size
    if n <= chunk_samples:
        return [audio]
    if long_utterances == "cap":
        return [audio[:chunk_samples]]
    parts = math.ceil(n / chunk_samples)
    size = math.ceil(n / parts)
    return [audio[i:i + size] for i in range(0, n, size)]


def embed_in_chunks(audios: list[np.ndarray], chunk_samples: int, long_utterances: str, dim: int,
                    run: Callable[[list[np.ndarray]], np.ndarray]) -> np.ndarray:
    """[n, dim] utterance embeddings from `run(rows)` → [len(rows), dim] unit embeddings of
    their chunks: one chunk's own, or the duration-weighted mean normalised again. The
    daemon's encoder and the trainer's calibration embed through this, so they agree."""
    rows, owner, weight = [], [], []
    for i, a in enumerate(audios):
        for chunk in chunks(a, chunk_samples, long_utterances):
            rows.append(chunk)
            owner.append(i)
            weight.append(chunk.size)
    if not rows:
        return np.zeros((0, dim), np.float32)
    chunk_emb = run(rows)
    if len(rows) == len(audios):
        return chunk_emb
    mix = np.zeros((len(audios), len(rows)), np.float32)
    mix[owner, np.arange(len(rows))] = weight
    emb = mix @ chunk_emb
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)
