"""Audio sources: WAV/FLAC replay and sound-card input (sounddevice/PortAudio).

The sound-card adapter keeps the audio callback trivial: it copies the block into a
bounded queue and returns; a full queue or a PortAudio overflow is counted. A device
that fails to open, or stops delivering, puts its stations `offline` and is retried
with back-off until it returns. The stream is made by a factory (default:
`sounddevice_stream`) so the loss of a device can be reproduced at that boundary.
"""
from __future__ import annotations

import logging
import queue
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from emoclap.audio import SAMPLE_RATE, AudioError, read_channels

from .capture import SourceThread
from .config import Config, ConfigError, StationConfig

log = logging.getLogger("emoclapd.sources")


class DeviceError(RuntimeError):
    """No usable input device; the message says which and what exists."""


class ReplaySource(SourceThread):
    """Plays one file into the stations mapped to its channels, paced or at full speed."""

    def __init__(self, cfg: Config, stations: list[StationConfig], piece_samples: int = 0):
        super().__init__(cfg, stations, stations[0].file, piece_samples)
        first = stations[0]
        self.path, self.realtime, self.loop = first.file, first.realtime, first.loop

    def capture(self) -> None:
        # Full-speed replay waits for the encoder instead of dropping: nothing is live.
        self.open_streams(SAMPLE_RATE, block=not self.realtime)
        try:
            audio = read_channels(self.path).T  # [samples, channels]
        except AudioError:
            self.set_state("failed")
            raise
        for s in self.stations:
            for ch in s.channel_list() or []:
                if ch >= audio.shape[1]:
                    self.set_state("failed")
                    raise AudioError(f"{self.path}: station {s.name} wants channel {ch}, "
                                     f"the file has {audio.shape[1]}")
        self.set_state("online")
        chunk = SAMPLE_RATE // 10 if self.realtime else SAMPLE_RATE
        started, fed = time.monotonic(), 0
        while not self.stop_event.is_set():
            for pos in range(0, audio.shape[0], chunk):
                if self.stop_event.is_set():
                    return
                self.feed_block(audio[pos:pos + chunk])
                fed += min(chunk, audio.shape[0] - pos)
                if self.realtime:
                    ahead = started + fed / SAMPLE_RATE - time.monotonic()
                    if ahead > 0 and self.stop_event.wait(ahead):
                        return
            if not self.loop:
                break
        self.finish_streams()
        self.set_state("ended")
        self.sender.tick(force=True)
        self.stop_event.wait()  # keep reporting `ended` until the daemon stops


class Stream(Protocol):
    active: bool

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


StreamFactory = Callable[..., Stream]


def sounddevice_stream(device, channels: int, samplerate: int | None, blocksize: int,
                       callback) -> Stream:
    """Open a PortAudio input stream; `device` is an index, a name substring or None."""
    try:
        import sounddevice as sd
    except OSError as exc:  # PortAudio library missing
        raise DeviceError(f"sound input unavailable: {exc} (install libportaudio2)") from None
    try:
        inputs = [(i, d) for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot list sound devices: {exc}") from None
    if not inputs:
        raise DeviceError("no sound input device found")
    if isinstance(device, str):
        matches = [i for i, d in inputs if device.lower() in d["name"].lower()]
        if not matches:
            names = ", ".join(f"{i}: {d['name']}" for i, d in inputs)
            raise DeviceError(f"no input device matching {device!r} (inputs: {names})")
        device = matches[0]
    try:
        return sd.InputStream(device=device, channels=channels, samplerate=samplerate,
                              blocksize=blocksize, dtype="float32", callback=callback)
    except (sd.PortAudioError, ValueError) as exc:
        raise DeviceError(f"cannot open input device {device}: {exc}") from None


class DeviceSource(SourceThread):
    """One sound card feeding the stations mapped to its channels."""

    BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 10.0

    def __init__(self, cfg: Config, stations: list[StationConfig],
                 stream_factory: StreamFactory | None = None, piece_samples: int = 0):
        first = stations[0]
        super().__init__(cfg, stations, f"device {first.device if first.device is not None else 'default'}",
                         piece_samples)
        self.device = first.device
        self.rate = first.sample_rate or SAMPLE_RATE
        self.block = max(1, self.rate * first.block_ms // 1000)
        self.channels = 1 + max((c for s in stations for c in (s.channel_list() or [0])), default=0)
        self.factory = stream_factory or sounddevice_stream
        self.stall_s = max(1.0, 10 * first.block_ms / 1000)
        self.queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=first.queue_blocks)
        self.overflows = 0

    def _callback(self, indata, frames, time_info, status) -> None:
        # Runs on the audio thread: copy out and return, never wait.
        if status and getattr(status, "input_overflow", False):
            self.overflows += 1
        try:
            self.queue.put_nowait(indata.copy())
        except queue.Full:
            self.overflows += 1

    def capture(self) -> None:
        self.open_streams(self.rate)
        self.set_state("offline")
        backoff, last_error, reported = self.BACKOFF_MIN_S, None, 0
        while not self.stop_event.is_set():
            try:
                stream = self.factory(device=self.device, channels=self.channels,
                                      samplerate=self.rate, blocksize=self.block,
                                      callback=self._callback)
                stream.start()
            except Exception as exc:  # noqa: BLE001 - any open failure means "retry later"
                if str(exc) != last_error:
                    log.warning("%s: %s; retrying", self.label, exc)
                    last_error = str(exc)
                self.sender.tick()
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, self.BACKOFF_MAX_S)
                continue
            log.info("%s: open (%d channels at %d Hz)", self.label, self.channels, self.rate)
            backoff, last_error = self.BACKOFF_MIN_S, None
            self.set_state("online")
            reported = self._pump(stream, reported)
            try:
                stream.stop()
                stream.close()
            except Exception:  # noqa: BLE001 - a vanished device may refuse to close
                pass
            if not self.stop_event.is_set():
                log.warning("%s: stopped delivering audio; reopening", self.label)
                self.set_state("offline")
                self.finish_streams(restart=True)
                self._drain_queue()

    def _pump(self, stream: Stream, reported: int) -> int:
        """Move blocks from the callback queue into the streams until the stream dies."""
        last_data = time.monotonic()
        while not self.stop_event.is_set():
            try:
                block = self.queue.get(timeout=0.1)
            except queue.Empty:
                if not stream.active or time.monotonic() - last_data > self.stall_s:
                    break
                self.sender.tick()
                continue
            last_data = time.monotonic()
            self.feed_block(block)
            reported = self._report_overflows(reported)
            self.sender.gauges[f"queue:{self.label}"] = self.queue.qsize()
        return reported

    def _report_overflows(self, reported: int) -> int:
        now = self.overflows
        if now != reported:
            for s in self.stations:
                self.sender.overflow(s.name, now - reported)
        return now

    def _drain_queue(self) -> None:
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return


def check_files(cfg: Config) -> None:
    """Every replay station's file exists (before anything else is loaded or started)."""
    for i, s in enumerate(cfg.stations):
        if s.source == "replay" and not Path(s.file).is_file():
            raise ConfigError(f"{cfg.source}: stations[{i}].file: no such file: {s.file}")


def build_sources(cfg: Config, stream_factory=None, piece_samples: int = 0) -> list[SourceThread]:
    """One source thread per file or device; stations sharing one input share a thread.
    `piece_samples`: the bundle's piece length (daemon.capture.piece_samples), 0 for none."""
    check_files(cfg)
    groups: dict[tuple, list[StationConfig]] = {}
    for s in cfg.stations:
        key = (s.source, s.file if s.source == "replay" else s.device,
               s.realtime, s.loop, s.sample_rate, s.block_ms)
        groups.setdefault(key, []).append(s)
    sources: list[SourceThread] = []
    for (kind, *_), stations in groups.items():
        if kind == "replay":
            sources.append(ReplaySource(cfg, stations, piece_samples))
        else:
            sources.append(DeviceSource(cfg, stations, stream_factory, piece_samples))
    return sources
