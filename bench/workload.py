"""The capacity benchmark's stations: one-voice tracks whose speech fills a set share
of the loop, each station with its own order of sentences and pauses."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.service import TURNS
from emoclap.audio import SAMPLE_RATE, write_wav
from emoclap.segmenter import Segmenter, SegmenterOptions


@dataclass
class Workload:
    folder: Path
    clips: list[np.ndarray]
    pauses: list[int]    # samples of silence before the clips (each station shuffles them)
    loop_s: float
    segments: list[int]  # samples of each VAD segment of one loop (what the encoder gets)

    @property
    def loop_samples(self) -> int:
        return sum(self.pauses) + sum(c.size for c in self.clips)

    @property
    def speech_s(self) -> float:
        """Voiced audio of one loop, before the segmenter's padding."""
        return sum(c.size for c in self.clips) / SAMPLE_RATE

    @property
    def share(self) -> float:
        return sum(self.segments) / SAMPLE_RATE / self.loop_s

    @property
    def rate(self) -> float:
        """Utterances per second of one station."""
        return len(self.segments) / self.loop_s

    def track(self, i: int) -> np.ndarray:
        """Station i's loop: the same sentences and pauses, in its own order, and from its
        own phase: the loop starts and ends inside one of its pauses, station by station
        elsewhere. (Every loop ending on a sentence made all stations close an utterance
        in the same 100 ms once a loop: a burst of N utterances that was the capacity
        bench's p99, and no sales floor's.)"""
        rng = np.random.default_rng(i)
        order, pauses = rng.permutation(len(self.clips)), rng.permutation(self.pauses)
        parts = [x for j, p in zip(order, pauses) for x in (np.zeros(p, np.float32), self.clips[j])]
        k = int(rng.integers(len(pauses)))  # the pause the loop wraps in
        at = sum(x.size for x in parts[:2 * k]) + int(rng.integers(1, max(2, pauses[k])))
        return np.roll(np.concatenate(parts), -at)

    def files(self, n: int) -> list[Path]:
        """The first n stations' tracks as WAV files, written when missing."""
        paths = [self.folder / f"station-{i:03d}-phased.wav" for i in range(n)]
        for i, path in enumerate(paths):
            if not path.exists():
                write_wav(path, self.track(i))
        return paths


def segment(track: np.ndarray, options: SegmenterOptions, before_s: float = math.inf) -> list[int]:
    """Samples of each VAD segment of `track` that starts before `before_s`."""
    seg = Segmenter("probe", options)
    return [s.audio.size for s in seg.push(track) + seg.flush() if s.start < before_s]


def tracks(workdir: Path, share: float, options: SegmenterOptions) -> Workload:
    """One-voice tracks of the dialogue's sentences whose VAD segments fill `share` of
    the loop (kept in `workdir`)."""
    folder = workdir / f"tracks-{share:.2f}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "clips.npz").exists():
        from tests.speech import say
        clips = [say(text, folder) for _, text in TURNS if isinstance(text, str)]
        np.savez(folder / "clips.npz", *clips)
        for stale in folder.glob("*.wav"):
            stale.unlink()
    clips = list(np.load(folder / "clips.npz").values())
    pause = np.zeros(SAMPLE_RATE, np.float32)
    segs = segment(np.concatenate([x for c in clips for x in (pause, c)] + [pause]), options)
    speech = sum(c.size for c in clips)
    # Pauses of uneven length around the mean that makes the segments `share` of the loop
    # (never under 0.7 s, so that utterances stay apart).
    total = max(sum(segs) / share - speech, 0.7 * SAMPLE_RATE * len(clips))
    weights = np.linspace(0.6, 1.4, len(clips))
    pauses = [int(w / weights.sum() * total) for w in weights]
    work = Workload(folder, clips, pauses, (sum(pauses) + speech) / SAMPLE_RATE, [])
    # Two loops, so that the first loop's last utterance closes as it does when looping.
    work.segments = segment(np.tile(work.track(0), 2), options, work.loop_s)
    return work


def vad_wait_s(options: SegmenterOptions) -> float:
    """Seconds between an utterance's reported end and the frame that closes it."""
    frames = lambda ms: max(0, round(ms / options.frame_ms))  # noqa: E731
    return max(0, max(1, frames(options.hangover_ms)) - frames(options.post_padding_ms)) * options.frame_ms / 1000

