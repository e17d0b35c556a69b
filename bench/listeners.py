"""`/ws` clients that stay connected through a long run and record every utterance event.

The soak and the chaos run need clients that outlive faults: each one reconnects (with a
short back-off) when the daemon closes it or goes away, and counts how often that
happened. They run on an event loop in a thread of their own, so the benchmark itself
can block on subprocesses and signals. Every utterance event is kept as a `Seen` row;
`overhead` is the time from the daemon having the audio that closed the utterance to this
client having its scores (bench/probe.fed_at).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass

import websockets

from bench.probe import fed_at
from bench.workload import Workload


@dataclass(frozen=True)
class Seen:
    client: int
    key: tuple  # (station, stream start ms, seq): one utterance of one daemon life
    time: float  # the utterance's wall-clock end (the event's `time`)
    received: float
    overhead: float


class Listeners:
    def __init__(self, port: int, clients: int, work: Workload, vad_s: float, frame: int, token: str = ""):
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.clients, self.work, self.vad_s, self.frame = clients, work, vad_s, frame
        self.seen: list[Seen] = []
        self.closed: list[tuple[int, float, str]] = []  # (client, when, why) for every lost connection
        self.connected = [False] * clients
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="listeners", daemon=True)

    def __enter__(self) -> "Listeners":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not all(self.connected) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not all(self.connected):
            raise RuntimeError(f"{self.connected.count(False)} of {self.clients} /ws clients could not connect")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def events(self, since: float = 0.0, until: float = float("inf")) -> list[Seen]:
        """Events of utterances that ended in [since, until)."""
        with self._lock:
            return [s for s in self.seen if since <= s.time < until]

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        await asyncio.gather(*(self._client(i) for i in range(self.clients)))

    async def _client(self, i: int) -> None:
        while not self._stop.is_set():
            try:
                async with websockets.connect(self.url, additional_headers=self.headers, max_queue=None,
                                              open_timeout=5) as ws:
                    self.connected[i] = True
                    while not self._stop.is_set():
                        try:
                            text = await asyncio.wait_for(ws.recv(), 0.5)
                        except asyncio.TimeoutError:
                            continue
                        received = time.time()
                        if '"type":"utterance"' in text[:30]:
                            self._keep(i, json.loads(text), received)
                    return
            except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as exc:
                if self.connected[i]:
                    self.closed.append((i, time.time(), type(exc).__name__))
                self.connected[i] = False
                await asyncio.sleep(0.2)

    def _keep(self, i: int, msg: dict, received: float) -> None:
        t0 = msg["time"] - msg["end"]
        seen = Seen(i, (msg["station"], round(t0 * 1000), msg["seq"]), msg["time"], received,
                    received - fed_at(msg, self.work.loop_samples, self.vad_s, self.frame))
        with self._lock:
            self.seen.append(seen)

