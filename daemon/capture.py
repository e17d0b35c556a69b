"""The capture stage: sources feed their stations' streams; utterances go to the encode stage.

Each station has its own `StationStream` (segmenter, clock, sequence numbers), so two
stations' voice activity never mixes even when one sound card or one file feeds both.
Sources (files, sound cards) push float32 blocks; finished utterances are sent through
a `links.Sender`, and a full queue is counted, never waited on (except for replay at
full speed, where nothing is live).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace

import numpy as np

from emoclap.audio import SAMPLE_RATE
from emoclap.station import StationStream

from .config import Config, StationConfig
from .links import Sender
from .speakers import make_gate

log = logging.getLogger("emoclapd.capture")


def mix(block: np.ndarray, channels: list[int] | None) -> np.ndarray:
    """[samples, channels] -> mono: one channel as is, several averaged."""
    if channels is None:
        return block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
    if len(channels) == 1:
        return block[:, channels[0]]
    return block[:, channels].mean(axis=1)


def piece_samples(cfg: Config, bundle) -> int:
    """`[stages] piece_s`: "auto" is the bundle's own where this process loads it (none
    elsewhere); a number is the gateway's bundle's, given to capture agents on other hosts."""
    value = cfg.stages.piece_s
    if value == "auto":
        return bundle.piece_samples if bundle is not None else 0
    samples = round(float(value) * SAMPLE_RATE)
    if bundle is not None and samples and samples != bundle.piece_samples:
        log.warning("stages.piece_s = %g but the bundle is encoded in pieces of %g s: pieces cut "
                    "here will be encoded again", value, bundle.piece_samples / SAMPLE_RATE)
    return samples


class SourceThread(threading.Thread):
    """Base for a source feeding one or more stations from one input (file or device).

    The ZeroMQ socket is created inside the thread, which is its only user.
    """

    def __init__(self, cfg: Config, stations: list[StationConfig], label: str, piece_samples: int = 0):
        super().__init__(name=f"source {label}", daemon=True)
        self.cfg = cfg
        self.piece_samples = piece_samples
        self.stations = stations
        self.label = label
        self.stop_event = threading.Event()
        self.streams: dict[str, StationStream] = {}
        self.sender: Sender | None = None
        self.error: BaseException | None = None
        self.policy = cfg.privacy.policy()
        self.speakers = None  # the staff-voice gate, made in the thread when an auto station needs it

    def open_streams(self, input_rate: int, block: bool = False) -> None:
        st = self.cfg.stages
        self.sender = Sender(st.utterances, st.hwm, st.status_interval_s, block=block)
        for s in self.stations:
            self.streams[s.name] = StationStream(s.name, s.role, self.cfg.segmenter, input_rate,
                                                 quality=self.cfg.quality,
                                                 piece_samples=self.piece_samples if self.policy.encodes_early(s.role) else 0)
            self.sender.set_state(s.name, "starting")
        if any(s.role == "auto" for s in self.stations):
            self.speakers = make_gate(self.cfg)

    def send(self, stream: StationStream, utterances) -> None:
        self.sender.too_short(stream.name, stream.take_too_short())
        self.sender.send_pieces(stream.take_pieces())
        if self.speakers is not None:  # before dispatch: a staff voice never reaches the encoder
            utterances = self.speakers.tag(utterances)
        self.sender.dispatch(utterances, self.policy)

    def feed_block(self, block: np.ndarray) -> None:
        """[samples, channels] float32 to every station's stream."""
        for s in self.stations:
            stream = self.streams[s.name]
            self.send(stream, stream.feed(mix(block, s.channel_list())))
        self.sender.tick()

    def finish_streams(self, restart: bool = False) -> None:
        """Cut every station's utterance in progress and send it (end of input, or a gap)."""
        for stream in self.streams.values():
            try:
                self.send(stream, stream.restart() if restart else stream.finish())
            except Exception:  # noqa: BLE001 - one station's flush must not stop the others
                log.exception("station %s: flushing failed", stream.name)

    def set_quality(self, quality) -> None:
        """Reloaded abstain thresholds, from each stream's next utterance: frozen options
        swapped whole (the thread reads one or the other, never a mix)."""
        self.cfg = replace(self.cfg, quality=quality)
        for stream in list(self.streams.values()):
            stream.quality = quality

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
                self.finish_streams()
                self.sender.close()

    def capture(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stop_event.set()
