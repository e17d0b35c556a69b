"""The capture stage: one segmenter per station, utterances pushed to the encode stage.

A `StationPipe` owns everything per station (segmenter, stream clock, sequence
numbers), so two stations' voice activity never mixes even when one sound card or
one file feeds both. Sources (files, sound cards, WebSocket ingest) push 16 kHz mono
float32 chunks into pipes; pipes send segments through a `links.Sender`.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soxr

from . import wire
from .config import Config, ConfigError, StationConfig
from .links import Sender
from .segmenter import Segmenter, SegmenterOptions

log = logging.getLogger("emoclapd.capture")

SAMPLE_RATE = 16_000


def segmenter_options(cfg: Config) -> SegmenterOptions:
    return replace(cfg.segmenter, sample_rate=SAMPLE_RATE)


class StationPipe:
    """One station's path from raw chunks to segment messages."""

    def __init__(self, name: str, role: str, options: SegmenterOptions, sender: Sender,
                 input_rate: int = SAMPLE_RATE):
        self.name, self.role = name, role
        self.options = options
        self.sender = sender
        self.input_rate = input_rate
        self.seq = 0
        self.sent = 0
        self._restart()

    def _restart(self) -> None:
        self.segmenter = Segmenter(self.name, self.options)
        self.t0 = time.time()  # wall-clock time of stream position 0
        self._short = 0
        self._resampler = (None if self.input_rate == SAMPLE_RATE else
                           soxr.ResampleStream(self.input_rate, SAMPLE_RATE, 1, dtype="float32"))

    def feed(self, samples: np.ndarray, last: bool = False) -> None:
        """Push a chunk (float32 or int16 at the input rate); send finished utterances."""
        samples = np.asarray(samples)
        if samples.dtype == np.int16:
            samples = samples.astype(np.float32) / 32768.0
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples.astype(np.float32), last=last)
        segments = self.segmenter.push(samples)
        if last:
            segments += self.segmenter.flush()
        self._send(segments)

    def finish(self) -> None:
        """End of stream: the utterance in progress is cut and sent, not lost."""
        self.feed(np.zeros(0, np.float32), last=True)

    def restart(self) -> None:
        """After a gap (a device came back): finish, then start a new stream clock."""
        self.finish()
        self._restart()

    def _send(self, segments) -> None:
        short = self.segmenter.dropped_short - self._short
        if short:
            self._short = self.segmenter.dropped_short
            self.sender.drop(self.name, "too_short", short)
        for seg in segments:
            self.seq += 1
            header = {"station": self.name, "role": self.role, "start": round(seg.start, 4),
                      "end": round(seg.end, 4), "t0": self.t0, "emitted": time.time(),
                      "seq": self.seq}
            if self.sender.send_segment(wire.Message("segment", header, seg.audio)):
                self.sent += 1


def mix(block: np.ndarray, channels: list[int] | None) -> np.ndarray:
    """[samples, channels] -> mono: one channel as is, several averaged."""
    if channels is None:
        return block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
    if len(channels) == 1:
        return block[:, channels[0]]
    return block[:, channels].mean(axis=1)


class SourceThread(threading.Thread):
    """Base for a source feeding one or more stations from one input (file or device).

    The ZeroMQ socket is created inside the thread, which is its only user.
    """

    def __init__(self, cfg: Config, stations: list[StationConfig], label: str):
        super().__init__(name=f"source {label}", daemon=True)
        self.cfg = cfg
        self.stations = stations
        self.label = label
        self.stop_event = threading.Event()
        self.pipes: dict[str, StationPipe] = {}
        self.sender: Sender | None = None
        self.error: BaseException | None = None

    def open_pipes(self, input_rate: int, block: bool = False) -> None:
        st = self.cfg.stages
        self.sender = Sender(st.utterances, st.hwm, st.status_interval_s, block=block)
        opts = segmenter_options(self.cfg)
        for s in self.stations:
            self.pipes[s.name] = StationPipe(s.name, s.role, opts, self.sender, input_rate)
            self.sender.set_state(s.name, "starting")

    def feed_block(self, block: np.ndarray, last: bool = False) -> None:
        """[samples, channels] float32 to every station's pipe."""
        for s in self.stations:
            self.pipes[s.name].feed(mix(block, s.channel_list()), last=last)
        self.sender.tick()

    def set_state(self, state: str) -> None:
        for s in self.stations:
            self.sender.set_state(s.name, state)

    def run(self) -> None:
        try:
            self.capture()
        except Exception as exc:  # noqa: BLE001 - a source must report, not vanish
            self.error = exc
            log.error("source %s failed: %s", self.label, exc)
            if self.sender is not None:
                self.set_state("failed")
        finally:
            if self.sender is not None:
                for pipe in self.pipes.values():
                    try:
                        pipe.finish()
                    except Exception:  # noqa: BLE001
                        log.exception("station %s: flushing failed", pipe.name)
                self.sender.close()

    def capture(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stop_event.set()


def build_sources(cfg: Config, stream_factory=None) -> list[SourceThread]:
    """One source thread per file or device; stations sharing one input share a thread."""
    from .sources import DeviceSource, ReplaySource

    groups: dict[tuple, list[StationConfig]] = {}
    for i, s in enumerate(cfg.stations):
        if s.source == "replay" and not Path(s.file).is_file():
            raise ConfigError(f"{cfg.source}: stations[{i}].file: no such file: {s.file}")
        key = (s.source, s.file if s.source == "replay" else s.device,
               s.realtime, s.loop, s.sample_rate, s.block_ms)
        groups.setdefault(key, []).append(s)
    sources: list[SourceThread] = []
    for (kind, *_), stations in groups.items():
        if kind == "replay":
            sources.append(ReplaySource(cfg, stations))
        else:
            sources.append(DeviceSource(cfg, stations, stream_factory))
    return sources
