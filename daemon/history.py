"""Utterance, visit and alert history in SQLite (WAL), and its export as CSV or JSON Lines.

Every `utterance` event, every `closed` visit and every `alert` (fired and cleared) is
committed here before it is published, so what a client saw is always in the history.
Raw audio is kept only when `history.store_audio`. Tables added later (`visits`,
`alerts`) are created when an older database is opened.
"""
from __future__ import annotations

import csv
import json
import math
import sqlite3
import threading
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, TextIO

import numpy as np

from emoclap.record import csv_header, csv_row

SCHEMA = """
CREATE TABLE IF NOT EXISTS utterances (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,          -- wall-clock end of the utterance, Unix seconds
    station TEXT NOT NULL,
    role TEXT NOT NULL,
    event TEXT NOT NULL,         -- the published `utterance` message, JSON
    audio BLOB                   -- 16 kHz float32, only with store_audio
);
CREATE INDEX IF NOT EXISTS utterances_time ON utterances(time);
CREATE TABLE IF NOT EXISTS visits (
    id TEXT PRIMARY KEY,         -- the visit id, STATION-<unix start ms>
    start REAL NOT NULL,         -- wall-clock start of its first customer utterance
    station TEXT NOT NULL,
    event TEXT NOT NULL          -- the published `closed` visit message, JSON
);
CREATE INDEX IF NOT EXISTS visits_start ON visits(start);
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT NOT NULL,            -- the alert id, RULE@STATION-<unix ms>: fired and cleared share it
    state TEXT NOT NULL,         -- fired or cleared
    time REAL NOT NULL,          -- the event's time, Unix seconds
    station TEXT NOT NULL,
    rule TEXT NOT NULL,
    event TEXT NOT NULL,         -- the published `alert` message, JSON
    PRIMARY KEY (id, state)
);
CREATE INDEX IF NOT EXISTS alerts_time ON alerts(time);
"""

# Columns added after the first release, with their types: an older database gains them
# (ALTER TABLE) when it is opened; its earlier rows keep NULL there.
ADDED_COLUMNS = (("utterances", "insufficient", "TEXT"),  # why it was too poor to count, or NULL
                 ("utterances", "quality", "TEXT"))       # its measured quality, JSON

VISIT_COLUMNS = ["visit", "station", "start", "end", "duration", "utterances", "talk_share",
                 "intention_first", "intention_last", "intention_max", "intention_slope_per_min"]
ALERT_COLUMNS = ["id", "state", "time", "rule", "station", "role", "emotion", "direction", "threshold",
                 "rearm", "value", "count", "visit", "seq"]


class HistoryError(ValueError):
    """A bad export request or an unusable database; the message says which."""


def parse_time(text: str, key: str) -> float:
    """ISO 8601 date or date-time (UTC unless it names a zone), or Unix seconds."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise HistoryError(f"{key}: expected an ISO 8601 time or Unix seconds, got {text!r}")
        return value
    try:
        moment = datetime.fromisoformat(text)
    except (ValueError, TypeError):
        raise HistoryError(f"{key}: expected an ISO 8601 time or Unix seconds, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


class History:
    def __init__(self, path: str | Path, store_audio: bool = False):
        self.path = Path(path)
        self.store_audio = store_audio
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self._add_columns()
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"{self.path}: cannot open history database: {exc}") from None
        self.written = 0
        self._lock = threading.Lock()  # writes come from worker threads, reads from exports

    def _add_columns(self) -> None:
        for table, column, kind in ADDED_COLUMNS:
            if column not in {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}:
                with self.db:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def write(self, event: dict, audio: np.ndarray | None = None) -> int:
        return self.write_many([(event, audio)])

    def write_many(self, rows: list[tuple[dict, np.ndarray | None]], visits: list[dict] = (),
                   alerts: list[dict] = ()) -> int:
        """Commit events (with their audio when it is kept), closed visits and alert events
        in one transaction; returns the row id of the last event."""
        def row(event, audio):
            blob = (np.asarray(audio, "<f4").tobytes()
                    if self.store_audio and audio is not None and audio.size else None)
            quality = event.get("quality")
            return (event["time"], event["station"], event["role"],
                    json.dumps(event, separators=(",", ":"), allow_nan=False), blob,
                    event.get("insufficient"),
                    None if quality is None else json.dumps(quality, separators=(",", ":"), allow_nan=False))
        last = 0
        with self._lock, self.db:
            for event, audio in rows:
                last = self.db.execute(
                    "INSERT INTO utterances (time, station, role, event, audio, insufficient, quality) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", row(event, audio)).lastrowid
            for visit in visits:  # a replayed close (same id) keeps the latest
                self.db.execute("INSERT OR REPLACE INTO visits (id, start, station, event) VALUES (?, ?, ?, ?)",
                                (visit["visit"], visit["start"], visit["station"],
                                 json.dumps(visit, separators=(",", ":"), allow_nan=False)))
            for alert in alerts:  # likewise a replayed alert
                self.db.execute("INSERT OR REPLACE INTO alerts (id, state, time, station, rule, event) "
                                "VALUES (?, ?, ?, ?, ?, ?)",
                                (alert["id"], alert["state"], alert["time"], alert["station"], alert["rule"],
                                 json.dumps(alert, separators=(",", ":"), allow_nan=False)))
        self.written += len(rows)
        return last

    def events(self, since: float | None = None, until: float | None = None,
               station: str | None = None) -> Iterator[dict]:
        return self._select("utterances", "time", since, until, station)

    def visits(self, since: float | None = None, until: float | None = None,
               station: str | None = None) -> Iterator[dict]:
        """Closed visits that started in [since, until)."""
        return self._select("visits", "start", since, until, station)

    def alerts(self, since: float | None = None, until: float | None = None,
               station: str | None = None) -> Iterator[dict]:
        """Alert events (fired and cleared) whose time is in [since, until)."""
        return self._select("alerts", "time", since, until, station)

    def _select(self, table: str, key: str, since, until, station) -> Iterator[dict]:
        sql, args = f"SELECT event FROM {table} WHERE 1=1", []
        if since is not None:
            sql, args = sql + f" AND {key} >= ?", args + [since]
        if until is not None:
            sql, args = sql + f" AND {key} < ?", args + [until]
        if station is not None:
            sql, args = sql + " AND station = ?", args + [station]
        for (text,) in self.db.execute(sql + f" ORDER BY {key}, rowid", args):
            yield json.loads(text)

    def audio(self, row_id: int) -> np.ndarray | None:
        row = self.db.execute("SELECT audio FROM utterances WHERE id = ?", (row_id,)).fetchone()
        return None if row is None or row[0] is None else np.frombuffer(row[0], "<f4")

    def close(self) -> None:
        with self._lock:  # after a write still running in a worker thread
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self.db.close()


class Unwritten:
    """History rows waiting for a disk that refused them, in commit order, bounded in bytes
    (events and any audio kept with them): past the bound the oldest go, counted."""

    def __init__(self, limit_bytes: int = 64 << 20):
        self.limit_bytes = limit_bytes
        self._batches: deque[tuple[list, list, list, int]] = deque()
        self.rows = 0
        self.bytes = 0

    def __bool__(self) -> bool:
        return bool(self._batches)

    def add(self, rows: list, visits: list, alerts: list) -> None:
        if rows or visits or alerts:
            size = sum(len(json.dumps(e, default=str)) + (getattr(a, "nbytes", 0) or 0) for e, a in rows)
            size += sum(len(json.dumps(x, default=str)) for x in (*visits, *alerts))
            self._batches.append((rows, visits, alerts, size))
            self.rows += len(rows) + len(visits) + len(alerts)
            self.bytes += size

    def first(self) -> tuple[list, list, list]:
        return self._batches[0][:3]

    def pop(self) -> None:
        rows, visits, alerts, size = self._batches.popleft()
        self.rows -= len(rows) + len(visits) + len(alerts)
        self.bytes -= size

    def trim(self) -> int:
        """Drop the oldest batches past the bound; returns how many rows went."""
        lost = 0
        while self.bytes > self.limit_bytes and len(self._batches) > 1:
            before = self.rows
            self.pop()
            lost += before - self.rows
        return lost


def export(events: Iterator[dict], out: TextIO, fmt: str, visits: bool = False, alerts: bool = False) -> int:
    """Write events as `jsonl` (one event per line) or `csv` (one score column per emotion;
    with `visits`, the visit columns; with `alerts`, the alert columns)."""
    if fmt == "jsonl":
        n = 0
        for n, event in enumerate(events, 1):
            out.write(json.dumps(event, ensure_ascii=False) + "\n")
        return n
    if fmt != "csv":
        raise HistoryError(f"--format: expected csv or jsonl, got {fmt!r}")
    rows = list(events)
    if visits:
        return export_visits(rows, out)
    if alerts:
        writer = csv.writer(out)
        writer.writerow(ALERT_COLUMNS)
        for a in rows:
            writer.writerow([iso(a["time"]) if k == "time" else "" if a.get(k) is None else a[k]
                             for k in ALERT_COLUMNS])
        return len(rows)
    emotions = sorted({name for e in rows for name in e.get("scores", {})})
    writer = csv.writer(out)
    writer.writerow(csv_header(["time", "station", "role"], emotions))
    for e in rows:
        writer.writerow(csv_row([iso(e["time"]), e["station"], e["role"]], e, emotions))
    return len(rows)


def export_visits(rows: list[dict], out: TextIO) -> int:
    """Visits as CSV: one row each, the purchase-intention trajectory in four columns
    (empty where the visit had no scored customer utterance)."""
    writer = csv.writer(out)
    writer.writerow(VISIT_COLUMNS)
    for v in rows:
        trend = v.get("purchase_intention") or {}
        writer.writerow([v["visit"], v["station"], iso(v["start"]), iso(v["end"]), v["duration"],
                         v["utterances"], "" if v["talk_share"] is None else v["talk_share"],
                         *("" if trend.get(k) is None else trend[k]
                           for k in ("first", "last", "max", "slope_per_min"))])
    return len(rows)
