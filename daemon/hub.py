"""Fan-out of score events to WebSocket clients, each with its own bounded queue.

The policy (`emoclap.scorestream.ClientQueue`) and the conversation
(`emoclap.scorestream.ScoreSession`) are free of I/O; `Hub` pairs each client's queue
with a writer task, so one stalled client never delays the others.
"""
from __future__ import annotations

import asyncio
import logging
import time

from emoclap.scorestream import ClientQueue, ScoreSession, dumps

log = logging.getLogger("emoclapd.hub")

CLOSE_TOO_SLOW = 1013  # "try again later"


class Client:
    def __init__(self, ws, limit: int):
        self.ws = ws
        self.queue = ClientQueue(limit)
        self.session = ScoreSession()
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.closing = False


class Hub:
    def __init__(self, queue_limit: int, on_slow=None, on_sent=None):
        self.queue_limit = queue_limit
        self.clients: set[Client] = set()
        self.on_slow = on_slow  # called once per client closed for slowness
        self.on_sent = on_sent  # called with the seconds an utterance event waited for its send

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
        self._put(client, message["type"], dumps(message))

    def broadcast(self, message: dict, station: str | None = None) -> None:
        text = dumps(message)
        for client in list(self.clients):
            if client.session.wants(station):
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
        if client.queue.put(kind, text, time.monotonic()):
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
                    if item[0] == "utterance" and self.on_sent is not None:
                        self.on_sent(time.monotonic() - item[2])
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
