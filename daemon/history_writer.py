"""The serve stage's history writer: committed before published, and nothing lost to a
failing disk.

Rows are written off the event loop (SQLite, disk). A disk that refuses them (full,
read-only) does not stop publishing: the rows wait in memory, bounded, and go in, oldest
first, once a write succeeds again.
"""
from __future__ import annotations

import asyncio
import logging

from emoclap.record import without_transcript

from .history import History, Unwritten
from .metrics import Metrics

log = logging.getLogger("emoclapd.history")


class HistoryWriter:
    def __init__(self, history: History | None, metrics: Metrics, store_transcripts: bool):
        self.history = history
        self.metrics = metrics
        self.store_transcripts = store_transcripts  # transcripts are personal data: off unless asked
        self.unwritten = Unwritten()
        self.error: str | None = None  # the last write failure, until a write succeeds
        self._writing = asyncio.Lock()  # one writer: a retry never writes a batch being written

    async def commit(self, rows: list[tuple[dict, object]], visits=(), alerts=()) -> None:
        """Rows of (event, audio), closed visits and alert events, as one transaction."""
        if self.history is None:
            return
        if not self.store_transcripts:
            rows = [(without_transcript(event), audio) for event, audio in rows]
        self.unwritten.add(rows, list(visits), list(alerts))
        await self.retry()

    async def retry(self) -> None:
        """Write what waits, if anything does."""
        if self.unwritten:
            async with self._writing:
                await self._write()

    async def _write(self) -> None:
        while self.unwritten:
            rows, visits, alerts = self.unwritten.first()
            try:
                await asyncio.to_thread(self.history.write_many, rows, visits, alerts)
            except Exception as exc:  # noqa: BLE001 - publish even when the disk fails
                log.error("history: cannot write (%d row(s) waiting): %s", self.unwritten.rows, exc)
                self.error = str(exc)
                self.metrics.history_failures.inc(self.unwritten.trim())
                self.metrics.history_waiting.set(self.unwritten.rows)
                return
            self.unwritten.pop()
            self.metrics.history_waiting.set(self.unwritten.rows)
        if self.error is not None:
            log.info("history: writing again")
        self.error = None

    async def close(self) -> None:
        """A last try for what waits; what still cannot be written is counted lost."""
        await self.retry()
        if self.unwritten:
            log.error("history: %d row(s) could not be written before stopping", self.unwritten.rows)
            self.metrics.history_failures.inc(self.unwritten.rows)

    def problem(self) -> str | None:
        if self.error is None:
            return None
        return (f"history: cannot write: {self.error} ({self.unwritten.rows} row(s) waiting, "
                f"{self.unwritten.limit_bytes >> 20} MiB at most)")

