"""An utterance encoded in pieces, so that most of it is encoded while it is being said.

A bundle trained with `model.audio_piece_s` cuts every utterance into pieces of that
many seconds from its first sample (the last one shorter); the tower encodes each piece
on its own, and the pooled statistics of the whole utterance are merged from the
pieces' frame moments (count, mean and variance of each layer's frames). The merge is
exact: the utterance's statistics are those of all its pieces' frames together, so it
does not matter which pieces were encoded early, in which order or in which batch. The
trainer and the runtime cut and merge through this module (numpy or torch arrays alike),
so they agree. Pure: no I/O, no threads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from emoclap.audio import chunks, length_batches, pad_batch

VARIANCE_FLOOR = 1e-6  # added under the square root, as the trainer's masked statistics do


def bounds(samples: int, piece_samples: int, min_samples: int = 1) -> list[tuple[int, int]]:
    """(start, end) of each piece of an utterance of `samples`: whole pieces from the start,
    then the rest, unless the rest is shorter than `min_samples` (too short for the tower to
    give a frame; it is the utterance's trailing padding and is left out). An utterance
    shorter than one piece is one piece."""
    if piece_samples <= 0:
        raise ValueError(f"piece_samples must be positive, got {piece_samples}")
    if samples <= piece_samples:
        return [(0, samples)]
    out = [(s, s + piece_samples) for s in range(0, samples - piece_samples + 1, piece_samples)]
    rest = out[-1][1]
    if samples - rest >= max(1, min_samples):
        out.append((rest, samples))
    return out


@dataclass(frozen=True)
class Moments:
    """One piece's frame moments: `count` frames, per layer their `mean` and `variance`
    ([L, H] each), and the last layer's frames [count, H] where the text path reads them;
    `samples`: the piece's length, so a piece encoded early is used only where it fits."""
    samples: int
    count: int
    mean: np.ndarray
    variance: np.ndarray
    frames: np.ndarray | None = None


@dataclass(frozen=True)
class PieceSpec:
    """How a bundle's utterances are cut (its manifest's `audio_encoder.piece_samples`) and
    what its head reads."""
    samples: int          # a piece's length
    min_samples: int      # a shorter rest is left out (`bounds`)
    with_std: bool        # the head reads the mean and the standard deviation
    offsets: bool         # the piece graph takes each piece's start in its utterance


# (waveform [b, n], lengths [b], offsets [b] or None) → count [b], mean and variance
# [b, L, H], and frames [b, T, H] or None: one call of a bundle's piece graph.
PieceRun = Callable[[np.ndarray, np.ndarray, np.ndarray | None], tuple]


def encode_pieces(rows: list[tuple[np.ndarray, int]], spec: PieceSpec, run: PieceRun,
                  rows_per_call: int) -> list[Moments]:
    """Each (piece audio, its start in the utterance) → its `Moments`, in padded batches of
    pieces of similar length."""
    out: list[Moments | None] = [None] * len(rows)
    for idx in length_batches([a.size for a, _ in rows], rows_per_call):
        wave, lengths = pad_batch([rows[i][0] for i in idx])
        offsets = np.array([rows[i][1] for i in idx], np.int64) if spec.offsets else None
        count, mean, variance, frames = run(wave, lengths, offsets)
        for j, i in enumerate(idx):
            n = int(round(float(count[j])))
            out[i] = Moments(int(rows[i][0].size), n, np.asarray(mean[j]), np.asarray(variance[j]),
                             None if frames is None else np.asarray(frames[j][:n]))
    return out


def pooled(moments: list[Moments], with_std: bool) -> np.ndarray:
    """[L, S] statistics of an utterance from its pieces' moments (merged in float64)."""
    counts = np.array([m.count for m in moments], np.float64)
    if counts.sum() <= 0:
        counts = np.ones_like(counts)  # no frame anywhere: the graph's own zeros, averaged
    mean, variance = merge(counts, np.stack([m.mean for m in moments]).astype(np.float64),
                           np.stack([m.variance for m in moments]).astype(np.float64))
    return statistics(mean, variance, with_std, np.concatenate).astype(np.float32)


def encode_utterances(audios: list[np.ndarray], spec: PieceSpec, run: PieceRun,
                      head: Callable[[np.ndarray], np.ndarray], rows_per_call: int,
                      known: list[dict[int, Moments]] | None = None) -> tuple[np.ndarray, list[list[Moments]]]:
    """[n, D] embeddings of whole utterances (`head` maps [n, L, S] statistics to them) and
    each one's pieces' moments in order. `known[i]`: pieces of utterance i already encoded
    (by index); one whose length does not match the cut is encoded again."""
    cut = [bounds(a.size, spec.samples, spec.min_samples) for a in audios]
    found: list[list[Moments | None]] = []
    todo: list[tuple[int, int]] = []
    rows: list[tuple[np.ndarray, int]] = []
    for i, (audio, parts) in enumerate(zip(audios, cut)):
        have = known[i] if known else {}
        found.append([])
        for k, (start, end) in enumerate(parts):
            m = have.get(k)
            if m is not None and m.samples == end - start:
                found[i].append(m)
            else:
                found[i].append(None)
                todo.append((i, k))
                rows.append((audio[start:end], start))
    for (i, k), m in zip(todo, encode_pieces(rows, spec, run, rows_per_call) if rows else []):
        found[i][k] = m
    if not audios:
        return np.zeros((0, 0), np.float32), []
    embeddings = head(np.stack([pooled(ms, spec.with_std) for ms in found]))
    return np.asarray(embeddings, np.float32), found


def merge(counts, means, variances):
    """The mean and variance over every frame of the pieces given their frame counts [P],
    means and variances [P, ...] (population variance: the pieces' own plus the spread of
    their means). numpy and torch arrays alike."""
    total = counts.sum()
    weights = (counts / total).reshape((-1,) + (1,) * (means.ndim - 1))
    mean = (weights * means).sum(0)
    variance = (weights * (variances + (means - mean) ** 2)).sum(0)
    return mean, variance


def statistics(mean, variance, with_std: bool, concat):
    """What the head reads from the merged moments: the mean, or the mean and standard
    deviation side by side on the last axis (`concat` is the array library's)."""
    if not with_std:
        return mean
    return concat([mean, (variance + VARIANCE_FLOOR) ** 0.5], -1)


def words_pass(audios: list[np.ndarray], spec: PieceSpec, run: PieceRun, rows_per_call: int,
               chunk_samples: int, long_utterances: str = "split") -> list[list[Moments]]:
    """What a transcriber reads of each utterance: one pass of the piece graph over each
    chunk (`emoclap.audio.chunks`) of the whole utterance, its valid frames in `frames`.
    Not its pieces' frames: Whisper's decoder stops at a piece's end (bench/RESULTS.md,
    encoding in pieces). An utterance that is one piece is that piece (`as_known`)."""
    cut = [chunks(a, chunk_samples, long_utterances) for a in audios]
    rows = []
    for parts in cut:
        start = 0
        for c in parts:
            rows.append((c, start))
            start += c.size
    done = iter(encode_pieces(rows, spec, run, rows_per_call))
    return [[next(done) for _ in parts] for parts in cut]


def as_known(audio: np.ndarray, spec: PieceSpec, passes: list[Moments], known: dict | None) -> dict:
    """`known` for an utterance, with its words pass where that pass was its only piece."""
    known = dict(known or {})
    if len(passes) == 1 and bounds(audio.size, spec.samples, spec.min_samples) == [(0, audio.size)]:
        known[0] = passes[0]
    return known


class Shelf:
    """Pieces encoded ahead, held by their utterance's key until it arrives (`take`), for at
    most `ttl_s` (its utterance was dropped, or went to another worker) and `limit` pieces."""

    def __init__(self, ttl_s: float, limit: int = 4096):
        self.ttl_s, self.limit = ttl_s, limit
        self._held: dict[tuple, tuple[float, dict]] = {}  # key -> (first piece's arrival, index -> value)
        self._count = 0
        self.expired = 0  # pieces whose utterance never came

    def __len__(self) -> int:
        return self._count

    def put(self, key: tuple, index: int, value, now: float) -> None:
        self.expire(now)
        since, held = self._held.setdefault(key, (now, {}))
        self._count += index not in held
        held[index] = value
        while self._count > self.limit:
            oldest = next(iter(self._held))
            self.expired += len(self._held[oldest][1])
            self._count -= len(self._held.pop(oldest)[1])

    def take(self, key: tuple) -> dict:
        _, held = self._held.pop(key, (0.0, {}))
        self._count -= len(held)
        return held

    def expire(self, now: float) -> None:
        while self._held:
            key = next(iter(self._held))  # insertion order: the oldest first
            since, held = self._held[key]
            if now - since <= self.ttl_s:
                return
            del self._held[key]
            self._count -= len(held)
            self.expired += len(held)


def session_runs(pieces_session, head_session, frames: bool = False) -> tuple[PieceRun, Callable]:
    """The `run` and `head` of `encode_utterances` over a bundle's two graphs, given as
    anything with ONNX Runtime's `run(output_names, feeds)`."""
    names = ["count", "mean", "variance"] + (["frames"] if frames else [])

    def run(wave, lengths, offsets):
        feeds = {"waveform": wave, "lengths": lengths}
        if offsets is not None:
            feeds["offsets"] = offsets
        out = pieces_session.run(names, feeds)
        return out[0], out[1], out[2], (out[3] if frames else None)

    def head(stats):
        return head_session.run(["embedding"], {"statistics": stats.astype(np.float32)})[0]

    return run, head
