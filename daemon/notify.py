"""systemd integration without a dependency: sd_notify(3) and journald-friendly logs."""
from __future__ import annotations

import logging
import os
import socket
import sys


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1") to the service manager; False when not under one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        # Non-blocking: a manager that is not reading must never stall the event loop.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                           | socket.SOCK_NONBLOCK) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half the WatchdogSec), or None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


class _JournalFormatter(logging.Formatter):
    """`<priority>logger: message`, which journald reads as the entry's priority."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
                logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", "\n    ")
        return f"<{self.PRIORITY.get(record.levelno, 6)}>{text}"


class RepeatFilter(logging.Filter):
    """Lets a message through once per `window_s` per (logger, template); the next one
    after a quiet spell says how many were held back. A failing disk or a hostile client
    then costs a line a minute, not a line per utterance or frame."""

    def __init__(self, window_s: float = 60.0, clock=None, max_keys: int = 1024):
        super().__init__()
        import time

        self.window_s = window_s
        self.clock = clock or time.monotonic
        self.max_keys = max_keys
        self._seen: dict[tuple, list] = {}  # key -> [last shown, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.msg)
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} (and {seen[1]} more like it in the last {now - seen[0]:.0f} s)"
        if len(self._seen) >= self.max_keys and key not in self._seen:
            self._seen.clear()  # bounded: many distinct messages are not a flood of one
        self._seen[key] = [now, 0]
        return True


def setup_logging(level: str = "INFO") -> None:
    """Plain lines on stderr; priority-prefixed, without timestamps, under journald."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # One line per HTTP request or connection is noise in a journal.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
