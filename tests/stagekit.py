"""Helpers for stage tests: a configuration in code, a PULL socket to watch a link."""
from __future__ import annotations

import itertools
import time

import numpy as np
import zmq

from emoclap import wire
from emoclap.audio import write_wav
from daemon.config import parse_config
from daemon.links import pull_socket
from tests.speech import dialogue

_ids = itertools.count()


def endpoint() -> str:
    return f"inproc://test-{next(_ids)}"


def config(stations: str = "", **stages):
    cfg = parse_config(stations)
    cfg.stages.utterances = stages.get("utterances", endpoint())
    cfg.stages.hwm = stages.get("hwm", cfg.stages.hwm)
    cfg.stages.status_interval_s = 0.1
    return cfg


class Watch:
    """Binds a link's PULL end and collects what arrives."""

    def __init__(self, address: str, hwm: int = 1000):
        self.sock = pull_socket(address, hwm)
        self.messages: list[wire.Message] = []

    def poll(self, seconds: float, until=None) -> list[wire.Message]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.sock.poll(50):
                while True:
                    try:
                        self.messages.append(wire.decode(self.sock.recv_multipart(zmq.NOBLOCK)))
                    except zmq.Again:
                        break
            if until is not None and until(self):
                break
        return self.messages

    def segments(self, station=None):
        return [m for m in self.messages if m.kind == "segment"
                and (station is None or m.get("station") == station)]

    def states(self, station):
        """The station's states in the order reported, repeats collapsed."""
        seen = []
        for m in self.messages:
            state = m.get("states", {}).get(station) if m.kind == "status" else None
            if state and (not seen or seen[-1] != state):
                seen.append(state)
        return seen

    def dropped(self, reason=None):
        return sum(n for m in self.messages if m.kind == "status"
                   for _, r, n in m.get("dropped", []) if reason in (None, r))

    def close(self):
        self.sock.close()


def stereo_dialogue(folder, turns):
    """turns: [(channel, text or silence seconds)] -> (stereo [2, n], spans per channel)."""
    parts = [[], []]
    for channel, part in turns:
        audio, _ = dialogue([part], folder)
        parts[channel].append(audio)
        parts[1 - channel].append(np.zeros_like(audio))
    spans = [[], []]
    t = 0.0
    for i in range(len(turns)):
        n = parts[0][i].size
        if isinstance(turns[i][1], str):
            spans[turns[i][0]].append((t, t + n / 16000))
        t += n / 16000
    return np.stack([np.concatenate(parts[0]), np.concatenate(parts[1])]), spans


def write_stereo(path, stereo):
    write_wav(path, stereo)
    return path
