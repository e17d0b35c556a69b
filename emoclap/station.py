"""One station's stream: raw chunks at the input rate → numbered utterances.

Everything per station lives here (resampler, segmenter, stream clock, sequence
numbers, the quality check), so two stations' voice activity never mixes even when one
sound card, one file or one server feeds both. Pure computation: whoever owns the
stream sends the utterances it returns.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import soxr

from emoclap.audio import SAMPLE_RATE, to_float
from emoclap.quality import QualityOptions, measure
from emoclap.record import Piece, Utterance
from emoclap.segmenter import Segmenter, SegmenterOptions


class StationStream:
    def __init__(self, name: str, role: str, options: SegmenterOptions,
                 input_rate: int = SAMPLE_RATE, clock: Callable[[], float] = time.time,
                 quality: QualityOptions | None = None, piece_samples: int = 0):
        if options.sample_rate != SAMPLE_RATE:
            raise ValueError(f"the segmenter must run at {SAMPLE_RATE} Hz")
        self.name, self.role = name, role
        self.options = options
        # Replaced whole by a reload (frozen), so an utterance sees one set of thresholds.
        self.quality = quality or QualityOptions()
        self.input_rate = input_rate
        self.clock = clock
        self.piece_samples = piece_samples  # > 0: cut pieces of utterances in progress (emoclap.pieces)
        self.seq = 0
        self.segmenter: Segmenter | None = None
        self._unreported_short = 0  # from segmenters replaced by a restart
        self._restart()

    def _restart(self) -> None:
        if self.segmenter is not None:
            self._unreported_short += self.segmenter.dropped_short - self._reported_short
        self.segmenter = Segmenter(self.name, self.options, self.piece_samples)
        self._reported_short = 0
        self.t0 = self.clock()  # wall-clock time of stream position 0
        self._resampler = (None if self.input_rate == SAMPLE_RATE else
                           soxr.ResampleStream(self.input_rate, SAMPLE_RATE, 1, dtype="float32"))

    def feed(self, samples: np.ndarray, last: bool = False) -> list[Utterance]:
        """A chunk (float32 or int16 at the input rate) → the utterances it finished."""
        samples = to_float(samples).reshape(-1)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
        segments = self.segmenter.push(samples)
        if last:
            segments += self.segmenter.flush()
        now = self.clock()
        out = []
        thresholds = self.quality
        for seg in segments:
            self.seq += 1
            quality = measure(seg.audio, seg.voiced, seg.noise, self.segmenter.frame_samples)
            out.append(Utterance(self.name, self.role, self.seq, seg.start, seg.end, self.t0, now,
                                 audio=seg.audio, quality=quality.as_dict(),
                                 insufficient=thresholds.verdict(quality)))
        return out

    def take_pieces(self) -> list[Piece]:
        """Pieces of the utterance in progress cut since the last call."""
        return [Piece(self.name, self.role, self.t0, p.start, p.index, p.offset, p.audio)
                for p in self.segmenter.take_pieces()]

    def finish(self) -> list[Utterance]:
        """End of stream: the utterance in progress is cut and returned, not lost."""
        return self.feed(np.zeros(0, np.float32), last=True)

    def restart(self) -> list[Utterance]:
        """After a gap (a device came back): finish, then start a new stream clock."""
        out = self.finish()
        self._restart()
        return out

    def take_too_short(self) -> int:
        """Voiced spans dropped as too short since the last call."""
        now = self.segmenter.dropped_short
        n = now - self._reported_short + self._unreported_short
        self._reported_short, self._unreported_short = now, 0
        return n
