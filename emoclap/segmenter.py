"""Voice-activity segmentation of one station's stream into utterances (pure, no I/O)."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

from emoclap.audio import SAMPLE_RATE, to_float
from emoclap.quality import frame_energy

VAD_RATES = (8000, 16000, 32000, 48000)
NOISE_WINDOW_S = 5.0  # recent non-speech kept for the noise floor (see emoclap.quality)


@dataclass
class SegmenterOptions:
    sample_rate: int = SAMPLE_RATE
    frame_ms: int = 30           # webrtcvad reads 10, 20 or 30 ms frames
    aggressiveness: int = 2      # 0 (keeps most) .. 3 (drops most non-speech)
    pre_padding_ms: int = 200    # audio kept before the detected onset
    post_padding_ms: int = 200   # audio kept after the last voiced frame
    onset_ms: int = 90           # voiced run needed to open an utterance (ignores clicks)
    hangover_ms: int = 400       # silence that closes an utterance
    min_utterance_s: float = 0.3  # shorter voiced spans are dropped (counted)
    max_utterance_s: float = 15.0  # longer speech is cut here and continues as a new one

    def __post_init__(self):
        if self.sample_rate not in VAD_RATES:
            raise ValueError(f"sample_rate must be one of {VAD_RATES}, got {self.sample_rate}")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"frame_ms must be 10, 20 or 30, got {self.frame_ms}")
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0..3, got {self.aggressiveness}")
        for field in ("pre_padding_ms", "post_padding_ms", "onset_ms", "hangover_ms"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must not be negative")
        if not 0 <= self.min_utterance_s < self.max_utterance_s:
            raise ValueError("need 0 <= min_utterance_s < max_utterance_s")


@dataclass
class Segment:
    station: str
    start: float  # seconds since the stream began, padding included
    end: float
    audio: np.ndarray  # float32 mono at the segmenter's sample rate
    voiced: np.ndarray | None = None  # the VAD's decision per frame of `audio`
    noise: np.ndarray | None = None   # energies of the station's recent non-speech frames

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class PieceCut:
    """A whole piece (`piece_samples` long) of the utterance in progress, cut once it is sure
    to lie inside the utterance however it ends."""
    start: float  # the utterance's start, as its Segment will have it
    index: int
    offset: int  # samples from the utterance's first
    audio: np.ndarray


class Segmenter:
    """Feeds frames to webrtcvad and cuts utterances; one instance per station.

    With `piece_samples`, it also cuts the utterance in progress into whole pieces that
    long as they are spoken (`take_pieces`), for a bundle encoded in pieces."""

    def __init__(self, station: str, options: SegmenterOptions | None = None, piece_samples: int = 0):
        self.station = station
        self.piece_samples = piece_samples
        self._pieces: list[PieceCut] = []
        self._cut = 0  # pieces of the utterance in progress cut so far
        self.options = opts = options or SegmenterOptions()
        self._vad = webrtcvad.Vad(opts.aggressiveness)
        self._frame = self.frame_samples = opts.sample_rate * opts.frame_ms // 1000
        ms = lambda v: max(0, round(v / opts.frame_ms))  # noqa: E731
        self._pre_frames = ms(opts.pre_padding_ms)
        self._post_frames = ms(opts.post_padding_ms)
        self._onset_frames = max(1, ms(opts.onset_ms))
        self._hang_frames = max(1, ms(opts.hangover_ms))
        self._max_frames = max(1, int(opts.max_utterance_s * 1000 / opts.frame_ms))
        # However the utterance in progress ends, it keeps every frame up to this many
        # before the newest: it closes after `hangover` silent frames and keeps `post` of them.
        self._settled_lag = max(0, self._hang_frames - 1 - self._post_frames)
        self._pending = np.zeros(0, np.float32)
        self._index = 0  # frames consumed so far
        self._history: deque[tuple[np.ndarray, bool]] = deque(maxlen=self._pre_frames + self._onset_frames)
        # Idle frames the VAD called non-speech: O(1) per frame, bounded, no audio kept.
        self._noise: deque[float] = deque(maxlen=max(1, round(NOISE_WINDOW_S * 1000 / opts.frame_ms)))
        self._voiced_run = 0
        self._active: list[np.ndarray] | None = None
        self._flags: list[bool] = []  # the VAD's decision per frame of `_active`
        self._start = 0  # frame index of the active utterance's first frame
        self._last_voiced = 0  # index (exclusive) after the last voiced frame
        self._onset = 0  # first voiced frame of the active utterance
        self.dropped_short = 0
        self.cut_long = 0

    def _t(self, frame_index: int) -> float:
        return frame_index * self._frame / self.options.sample_rate

    def push(self, samples: np.ndarray) -> list[Segment]:
        """Feed samples (float32 in [-1, 1] or int16, any length); returns finished utterances."""
        audio = to_float(samples).reshape(-1)
        if self._pending.size:
            audio = np.concatenate([self._pending, audio])
        whole = audio.size // self._frame * self._frame
        self._pending = audio[whole:].copy()
        out: list[Segment] = []
        for offset in range(0, whole, self._frame):
            segment = self._step(audio[offset:offset + self._frame])
            if segment is not None:
                out.append(segment)
        return out

    def flush(self) -> list[Segment]:
        """End of stream: the utterance in progress, if long enough."""
        out = []
        if self._active is not None:
            segment = self._close(self._index)
            if segment is not None:
                out.append(segment)
        self._pending = np.zeros(0, np.float32)
        self._history.clear()
        self._voiced_run = 0
        return out

    def _step(self, frame: np.ndarray) -> Segment | None:
        pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        voiced = self._vad.is_speech(pcm, self.options.sample_rate)
        self._index += 1
        if self._active is None:
            self._history.append((frame, voiced))
            if not voiced:
                self._noise.append(frame_energy(frame))
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run >= self._onset_frames:
                frames = list(self._history)[-(self._onset_frames + self._pre_frames):]
                self._active = [f for f, _ in frames]
                self._flags = [v for _, v in frames]
                self._start = self._index - len(frames)
                self._last_voiced = self._index
                self._onset = self._index - self._onset_frames
                self._history.clear()
                self._cut = 0
            return None
        self._active.append(frame)
        self._flags.append(voiced)
        if voiced:
            self._last_voiced = self._index
        if self._index - self._start >= self._max_frames:
            # Overlong speech: emit what we have and keep going as a fresh utterance.
            self.cut_long += 1
            segment = self._emit(self._start, self._index)
            self._active, self._flags, self._start = [], [], self._index
            self._last_voiced = self._onset = self._index
            self._cut = 0
            return segment
        if self._index - self._last_voiced >= self._hang_frames:
            segment = self._close(self._index)
            self._voiced_run = 0
            return segment
        if self.piece_samples:
            self._cut_pieces()
        return None

    def _cut_pieces(self) -> None:
        settled = (self._index - self._settled_lag - self._start) * self._frame
        size = self.piece_samples
        while (self._cut + 1) * size <= settled:
            lo, hi = self._cut * size, (self._cut + 1) * size
            first = lo // self._frame
            audio = np.concatenate(self._active[first:-(-hi // self._frame)])
            self._pieces.append(PieceCut(self._t(self._start), self._cut, lo,
                                         audio[lo - first * self._frame:hi - first * self._frame]))
            self._cut += 1

    def take_pieces(self) -> list[PieceCut]:
        """Pieces cut since the last call."""
        out, self._pieces = self._pieces, []
        return out

    def _close(self, now: int) -> Segment | None:
        end = min(now, self._last_voiced + self._post_frames)
        # Frames past the post-padding are all non-speech (the last voiced one came before).
        tail = self._active[end - self._start:] if self._active else []
        for frame in tail:
            self._noise.append(frame_energy(frame))
        voiced_span = self._t(self._last_voiced - self._onset)
        segment = None
        if voiced_span >= self.options.min_utterance_s and end > self._start:
            segment = self._emit(self._start, end)
        else:
            self.dropped_short += 1
        self._active = None
        for frame in tail[-self._history.maxlen:] if self._history.maxlen else []:
            self._history.append((frame, False))
        return segment

    def _emit(self, start: int, end: int) -> Segment:
        frames = self._active[: end - start]
        audio = np.concatenate(frames) if frames else np.zeros(0, np.float32)
        return Segment(self.station, self._t(start), self._t(end), audio,
                       np.array(self._flags[: end - start], bool), np.array(self._noise, np.float32))
