"""The gateway under test: `emoclapd run` as a restartable process, watched.

`Gateway` starts and stops it (SIGTERM, reading the accounting of its last log line),
`Watch` polls its /healthz and RSS every 0.25 s, `settled` waits for a moment when its
accounting balances (every utterance cut is published, dropped with a reason or in flight).
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from bench.service import REPO, proc_rss_mb

STOPPED = re.compile(r"stopped: (\d+) utterance\(s\) segmented, (\d+) published, (\d+) speech only, "
                     r"(\d+) dropped \(([^)]*)\), (\d+) stored")


def parse_stopped(fields: tuple) -> dict:
    """One `STOPPED` match → the accounting it states (in flight: none, the drain is over)."""
    seg, pub, speech, _, reasons, stored = fields
    dropped = {r: int(n) for r, n in (x.rsplit(" ", 1) for x in reasons.split(", ") if x != "none")}
    return {"segmented": int(seg), "published": int(pub), "speech": int(speech), "dropped": dropped,
            "stored": int(stored), "in_flight": 0}


def unaccounted(acc: dict) -> int:
    dropped = sum(n for reason, n in acc["dropped"].items() if reason != "bad_message")
    return int(acc["segmented"] - acc["published"] - acc["speech"] - dropped - acc.get("in_flight", 0))


class Gateway:
    """`emoclapd run`, restartable; each life appends to one log."""

    def __init__(self, config: Path, port: int, log: Path):
        self.config, self.port, self.log = config, port, log
        self.proc: subprocess.Popen | None = None
        self.lives: list[dict] = []  # each stopped life's last accounting line

    def start(self, timeout: float = 180.0) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(self.config)],
                                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
                                         env=dict(os.environ, OMP_NUM_THREADS="1"))
        deadline = time.monotonic() + timeout
        while self.health() is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start: " + self.log.read_text()[-3000:])
            time.sleep(0.3)

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 200.0) -> tuple[int, float, dict | None]:
        """SIGTERM; (exit code, seconds to exit, the accounting of its last log line)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        took = time.monotonic() - started
        lines = STOPPED.findall(self.log.read_text())
        life = None
        if len(lines) > len(self.lives):
            life = parse_stopped(lines[-1])
            self.lives.append(life)
        return code, took, life


class Watch(threading.Thread):
    """Polls /healthz and the gateway's RSS every 0.25 s."""

    def __init__(self, gateway: Gateway):
        super().__init__(name="watch", daemon=True)
        self.gateway, self.samples, self.stop = gateway, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.25):
            proc = self.gateway.proc
            rss = proc_rss_mb(proc.pid) if proc is not None and proc.poll() is None else 0.0
            self.samples.append((time.time(), self.gateway.health(), rss))

    def between(self, t0: float, t1: float) -> list[tuple]:
        return [s for s in list(self.samples) if t0 <= s[0] < t1]

    def latest(self) -> dict | None:
        for _, health, _ in reversed(list(self.samples)):
            if health is not None:
                return health
        return None


def wait_for(predicate, timeout: float, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def settled(gateway: Gateway, timeout: float = 20.0) -> dict | None:
    """The accounting at a moment it balances (nothing between a segmenter's count and
    its utterance's fate), or the last one seen if it never did within `timeout`."""
    last = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = gateway.health()
        if health is not None:
            last = health["accounting"]
            if unaccounted(last) == 0:
                return last
        time.sleep(0.1)
    return last


def stored_rows(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM utterances").fetchone()[0]
    except sqlite3.Error:
        return -1
