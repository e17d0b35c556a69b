"""Sound-card and file sources: device loss and return (simulated at the PortAudio
boundary, everything else real), per-station isolation, overflow counting."""
import threading
import time

import numpy as np
import pytest

from daemon.sources import build_sources
from daemon.sources import DeviceError, DeviceSource, sounddevice_stream
from tests.stagekit import Watch, config, stereo_dialogue, write_stereo

TURNS = [(0, 0.6), (0, "Good morning, how can I help you today?"), (0, 1.0),
         (1, "I am looking for a warm winter coat."), (1, 1.0),
         (0, "This one is very popular this season."), (0, 1.0)]


class FakeCard:
    """A two-channel sound card that can be unplugged: it plays `audio` in blocks,
    4x faster than real time, into the callback of whichever stream is open."""

    def __init__(self, audio):
        self.audio = audio.T.copy()  # [samples, channels]
        self.pos = 0
        self.plugged = True
        self.opened = 0

    def factory(self, device, channels, samplerate, blocksize, callback):
        if not self.plugged:
            raise DeviceError(f"no input device matching {device!r} (inputs: none)")
        self.opened += 1
        return FakeStream(self, blocksize, callback)


class FakeStream:
    def __init__(self, card, blocksize, callback):
        self.card, self.blocksize, self.callback = card, blocksize, callback
        self.active = False
        self._stop = threading.Event()

    def start(self):
        self.active = True
        threading.Thread(target=self._play, daemon=True).start()

    def _play(self):
        card = self.card
        while not self._stop.is_set() and card.plugged:
            block = card.audio[card.pos % len(card.audio):][: self.blocksize]
            if len(block) < self.blocksize:
                block = np.concatenate([block, card.audio[: self.blocksize - len(block)]])
            card.pos += self.blocksize
            self.callback(block, self.blocksize, None, None)
            time.sleep(self.blocksize / 16000 / 4)
        self.active = False  # what PortAudio does when the device goes away

    def stop(self):
        self._stop.set()

    def close(self):
        self._stop.set()


STATIONS = """
[[stations]]
name = "desk-staff"
source = "device"
device = "Fake Card"
channel = 0
role = "staff"
[[stations]]
name = "desk-customer"
source = "device"
device = "Fake Card"
channel = 1
role = "customer"
"""


def test_device_loss_and_return(tmp_path):
    stereo, spans = stereo_dialogue(tmp_path, TURNS)
    card = FakeCard(stereo)
    cfg = config(STATIONS)
    watch = Watch(cfg.stages.utterances)
    (source,) = build_sources(cfg, card.factory)  # one card -> one stream for both stations
    assert isinstance(source, DeviceSource) and source.channels == 2
    source.start()
    try:
        watch.poll(15, until=lambda w: len(w.segments("desk-customer")) >= 1
                   and len(w.segments("desk-staff")) >= 2)
        assert watch.states("desk-staff")[-1] == "online"
        card.plugged = False
        watch.poll(5, until=lambda w: w.states("desk-customer")[-1:] == ["offline"])
        assert watch.states("desk-customer")[-1] == "offline"
        assert source.is_alive()
        before = len(watch.segments())
        time.sleep(1.5)  # stays offline while retrying with back-off
        assert watch.states("desk-staff")[-1] == "offline"
        card.plugged = True
        watch.poll(15, until=lambda w: w.states("desk-staff")[-1] == "online"
                   and len(w.segments()) >= before + 2)
        assert watch.states("desk-staff")[-3:] == ["online", "offline", "online"]
        assert len(watch.segments()) >= before + 2, "no utterances after the device came back"
        assert card.opened == 2
    finally:
        source.stop()
        source.join(5)
        watch.poll(0.5)
        watch.close()
    assert all(seg.utterance.audio.size > 0 for seg in watch.segments())
    assert all(m.get("role") == "customer" for m in watch.segments("desk-customer"))


def test_overflows_are_counted_not_blocking(tmp_path):
    stereo, _ = stereo_dialogue(tmp_path, TURNS[:2])
    card = FakeCard(stereo)
    cfg = config(STATIONS)
    for s in cfg.stations:
        s.queue_blocks = 1
    source = build_sources(cfg, card.factory)[0]
    # the callback must return at once even when nobody empties the queue
    source._callback(np.zeros((320, 2), np.float32), 320, None, None)
    started = time.perf_counter()
    for _ in range(50):
        source._callback(np.zeros((320, 2), np.float32), 320, None, None)
    assert time.perf_counter() - started < 0.5
    assert source.overflows == 50


def test_no_device_is_a_clear_message_and_retried(caplog, tmp_path):
    with pytest.raises(DeviceError) as err:
        sounddevice_stream("no-such-card-xyz", 1, 16000, 320, lambda *a: None)
    text = str(err.value)
    assert "no-such-card-xyz" in text or "no sound input device" in text or "unavailable" in text
    cfg = config(STATIONS.replace("Fake Card", "no-such-card-xyz"))
    watch = Watch(cfg.stages.utterances)
    source = build_sources(cfg)[0]
    source.start()
    try:
        watch.poll(2, until=lambda w: w.states("desk-staff") == ["offline"])
        assert watch.states("desk-staff")[-1] == "offline"
        assert source.is_alive()
    finally:
        source.stop()
        source.join(5)
        watch.close()


def test_replay_channels_map_to_stations(tmp_path):
    stereo, spans = stereo_dialogue(tmp_path, TURNS)
    path = write_stereo(tmp_path / "d.wav", stereo)
    cfg = config(f"""
[[stations]]
name = "a"
role = "customer"
file = "{path}"
channel = 0
realtime = false
[[stations]]
name = "b"
role = "customer"
file = "{path}"
channel = 1
realtime = false
""")
    watch = Watch(cfg.stages.utterances)
    (source,) = build_sources(cfg)
    source.start()
    watch.poll(20, until=lambda w: w.states("a")[-1:] == ["ended"] and w.states("b")[-1:] == ["ended"])
    source.stop()
    source.join(5)
    watch.poll(0.3)
    watch.close()
    for station, channel in (("a", 0), ("b", 1)):
        got = [(m.get("start"), m.get("end")) for m in watch.segments(station)]
        assert len(got) == len(spans[channel]), (station, got, spans[channel])
        for (start, end), (on, off) in zip(got, spans[channel]):
            assert start <= on + 0.15 and end >= off - 0.3
