"""Messages handed over inside one process: the typed object, no framing, no copy.

`ToLoop` is the broker's link to the serve stage, which always share a process: results
go to the event loop as the objects they are.

An `Inbox` is what an inproc:// endpoint is when its reader and its writers share a
process: a bounded queue of `wire.Message`s with many writers (capture threads, the
server's ingest) and one reader, the broker, which polls it beside its ZeroMQ sockets
through an eventfd. Its bound and its refusals are a ZeroMQ link's: a writer that finds
it full counts the message dropped (`queue_full`), or waits where it was asked to
apply back-pressure, so the accounting is the same whichever transport runs.
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections import deque

from emoclap import wire


class Inbox:
    def __init__(self, limit: int):
        self.limit = limit
        self._items: deque[wire.Message] = deque()
        self._room = threading.Condition()
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # readable while items wait
        self.closed = False

    def put(self, msg: wire.Message, block: bool = False, timeout_s: float | None = None) -> bool:
        """False if it stays full (or is closed): the caller counts the message dropped."""
        with self._room:
            if block:
                self._room.wait_for(lambda: self.closed or len(self._items) < self.limit, timeout_s)
            if self.closed or len(self._items) >= self.limit:
                return False
            self._items.append(msg)
            os.eventfd_write(self.fd, 1)
        return True

    def take(self, most: int) -> list[wire.Message]:
        """Up to `most` messages, oldest first; never waits."""
        with self._room:
            out = [self._items.popleft() for _ in range(min(most, len(self._items)))]
            if out and not self._items:  # readable no more; while items remain it stays readable
                os.eventfd_read(self.fd)
            self._room.notify_all()
        return out

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        with self._room:
            if not self.closed:
                self.closed = True
                self._room.notify_all()
                os.close(self.fd)


class ToLoop:
    """Messages from one thread to a task on an event loop, bounded as a link is: the
    writer hands a message over only while fewer than `limit` wait untaken (`room`),
    and holds the rest itself, so a slow reader slows the writer instead of growing a
    queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int):
        self.loop = loop
        self.limit = limit
        self._queue: asyncio.Queue[wire.Message] = asyncio.Queue()
        self.delivered = 0  # counted by the writer (the broker's thread)
        self.taken = 0  # counted by the loop

    def room(self) -> bool:
        return self.delivered - self.taken < self.limit

    def deliver(self, msg: wire.Message) -> None:
        self.delivered += 1
        self.loop.call_soon_threadsafe(self._queue.put_nowait, msg)

    async def get(self) -> wire.Message:
        msg = await self._queue.get()
        self.taken += 1
        return msg

    def get_nowait(self) -> wire.Message | None:
        try:
            msg = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        self.taken += 1
        return msg
