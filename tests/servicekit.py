"""Helpers for tests that run the encode and serve stages in this process."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import numpy as np

from emoclap import wire
from emoclap.record import Utterance
from daemon.service import Service
from tests.stagekit import config

REPO = Path(__file__).resolve().parent.parent


def service_config(tmp_path: Path, bundle: Path, stations: str = "", **server):
    cfg = config(stations)
    cfg.bundle, cfg.prompts = str(bundle), str(REPO / "prompts")
    cfg.cache = str(tmp_path / "prompt-cache.sqlite3")
    cfg.history.path = str(tmp_path / "history.sqlite3")
    cfg.server.port = 0
    cfg.rolling.interval_s = 0.2
    for key, value in server.items():
        setattr(cfg.server, key, value)
    return cfg


def with_service(cfg, body, stages=("encode", "serve")):
    """Start the stages, run `await body(service)`, stop them; returns body's result."""
    async def main():
        svc = Service(cfg, stages)
        await svc.start()
        try:
            return await body(svc)
        finally:
            await svc.stop()
    return asyncio.run(main())


def url(svc, path: str) -> str:
    return f"ws://127.0.0.1:{svc.parts.server.port}{path}"


def http_url(svc, path: str) -> str:
    return f"http://127.0.0.1:{svc.parts.server.port}{path}"


def embedding_messages(n: int, dim: int, station: str = "s1", seed: int = 0):
    """`embedding` messages as the encode stage sends them (random unit vectors)."""
    rng = np.random.default_rng(seed)
    t0 = time.time()
    for i in range(n):
        v = rng.normal(size=dim).astype(np.float32)
        yield wire.embedding(Utterance(station, "customer", i + 1, i * 2.0, i * 2.0 + 1.5, t0, time.time(),
                                       embedding=v / np.linalg.norm(v)))


def push(svc, messages) -> int:
    """Hand framed messages to the serve stage as the broker hands its results on
    (decoded, in order), standing in for the encode fleet; returns how many went."""
    inbox, n = svc.parts.serve.inbox, 0
    for frames in messages:
        inbox.loop.call_soon_threadsafe(inbox.deliver, wire.decode(frames))
        n += 1
    return n


async def receive(ws, kind: str, count: int, timeout: float = 30.0) -> list[dict]:
    """Messages of type `kind` until `count` of them arrived (others are skipped)."""
    got = []
    async def loop():
        while len(got) < count:
            msg = json.loads(await ws.recv())
            if msg["type"] == kind:
                got.append(msg)
    await asyncio.wait_for(loop(), timeout)
    return got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_replay_config(folder: Path, bundle: Path, wav: Path, port: int, *,
                        prompts: Path = REPO / "prompts", sections: str = "",
                        station: str = "") -> Path:
    """config.toml for `emoclapd run` replaying a stereo dialogue as two stations:
    `staff` (left channel) and `customer` (right). `sections` adds top-level tables,
    `station` adds keys to both stations."""
    path = folder / "config.toml"
    stations = "".join(f"""
[[stations]]
name = "{name}"
role = "{name}"
file = "{wav}"
channel = {channel}
{station}""" for name, channel in (("staff", 0), ("customer", 1)))
    path.write_text(f"""bundle = "{bundle}"
prompts = "{prompts}"
cache = "cache.sqlite3"
[history]
path = "history.sqlite3"
[server]
port = {port}
{sections}{stations}""")
    return path
