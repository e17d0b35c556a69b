"""Fan-out of score events to WebSocket clients, each with its own bounded queue.

`ClientQueue` is the policy, free of I/O: a queued `rolling` snapshot is replaced by a
newer one, a full queue sheds its oldest `rolling` snapshots first, and when only
events remain the client is declared too slow. `Hub` pairs each queue with a writer
task, so one stalled client never delays the others.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import deque

log = logging.getLogger("emoclapd.hub")

CLOSE_TOO_SLOW = 1013  # "try again later"


class ClientQueue:
    def __init__(self, limit: int):
        self.limit = limit
        self.items: deque[tuple[str, str]] = deque()
        self.shed = 0  # stale snapshots dropped
        self.full = False

    def put(self, kind: str, text: str) -> bool:
        """Queue a message; False means the client cannot keep up and must go."""
        if self.full:
            return False
        if kind == "rolling":
            self._remove_rolling(1)
        if len(self.items) >= self.limit and not self._remove_rolling(1):
            self.full = True
            return False
        self.items.append((kind, text))
        return True

    def _remove_rolling(self, n: int) -> int:
        removed = 0
        for item in list(self.items):
            if removed >= n:
                break
            if item[0] == "rolling":
                self.items.remove(item)
                removed += 1
        self.shed += removed
        return removed

    def get(self) -> tuple[str, str] | None:
        return self.items.popleft() if self.items else None

    def __len__(self) -> int:
        return len(self.items)


class Client:
    def __init__(self, ws, limit: int, stations: set[str] | None = None):
        self.ws = ws
        self.queue = ClientQueue(limit)
        self.stations = stations  # None: every station
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.closing = False

    def wants(self, station: str | None) -> bool:
        return station is None or self.stations is None or station in self.stations


class Hub:
    def __init__(self, queue_limit: int, on_slow=None):
        self.queue_limit = queue_limit
        self.clients: set[Client] = set()
        self.on_slow = on_slow  # called once per client closed for slowness

    def add(self, ws) -> Client:
        client = Client(ws, self.queue_limit)
        client.task = asyncio.create_task(self._writer(client))
        self.clients.add(client)
        return client

    async def remove(self, client: Client) -> None:
        self.clients.discard(client)
        if client.task is not None:
            client.task.cancel()

    def send(self, client: Client, message: dict) -> None:
        self._put(client, message["type"], json.dumps(message, separators=(",", ":")))

    def broadcast(self, message: dict, station: str | None = None) -> None:
        text = json.dumps(message, separators=(",", ":"))
        for client in list(self.clients):
            if client.wants(station):
                self._put(client, message["type"], text)

    def broadcast_each(self, build) -> None:
        """Send `build(client)` to every client (per-client filtered messages); None skips."""
        for client in list(self.clients):
            message = build(client)
            if message is not None:
                self.send(client, message)

    def _put(self, client: Client, kind: str, text: str) -> None:
        if client.closing:
            return
        if client.queue.put(kind, text):
            client.wake.set()
            return
        client.closing = True
        log.warning("closing a client %s: %d messages queued, not reading",
                    getattr(client.ws, "remote_address", ""), len(client.queue))
        if self.on_slow:
            self.on_slow()
        asyncio.create_task(self._evict(client, CLOSE_TOO_SLOW, "client too slow: send queue full"))

    async def _evict(self, client: Client, code: int, reason: str, timeout: float = 2.0) -> None:
        # The writer may be stuck in a send to a full socket; it goes first, then the close
        # frame is queued; a client that does not answer it within `timeout` is cut off.
        if client.task is not None:
            client.task.cancel()
        try:
            await asyncio.wait_for(client.ws.close(code, reason), timeout)
        except Exception:  # noqa: BLE001 - closing a broken connection may fail any way
            pass
        transport = getattr(client.ws, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.abort()

    def depth(self) -> int:
        return max((len(c.queue) for c in self.clients), default=0)

    async def _writer(self, client: Client) -> None:
        try:
            while True:
                await client.wake.wait()
                client.wake.clear()
                while (item := client.queue.get()) is not None and not client.closing:
                    await client.ws.send(item[1])
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a broken connection ends only its own writer
            pass

    async def close_all(self, code: int, reason: str, flush_s: float = 2.0) -> None:
        """Deliver what is queued (for at most `flush_s`), then close every client."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + flush_s
        while loop.time() < deadline and any(len(c.queue) and not c.closing for c in self.clients):
            await asyncio.sleep(0.02)
        for client in list(self.clients):
            client.closing = True
        await asyncio.gather(*(self._evict(c, code, reason) for c in list(self.clients)),
                             return_exceptions=True)
