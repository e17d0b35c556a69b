"""Alert events POSTed to an HTTP(S) webhook, from a thread of their own.

The serve stage only puts an event on a bounded queue (never waits); one thread POSTs
them in order, each with a timeout and retries with doubling back-off. A queue that is
full drops the new event and counts it, so a dead receiver costs memory for `queue`
events at most and never slows scoring. Header values (an `Authorization` secret) are
never logged, and neither is the URL's query; credentials in the URL itself are refused.
"""
from __future__ import annotations

import http.client
import json
import logging
import queue
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

log = logging.getLogger("emoclapd.webhook")

EVENTS = ("fired", "cleared")
KEYS = ("url", "timeout_s", "retries", "backoff_s", "headers", "events", "queue")
TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")  # an HTTP header name
RESERVED = {"content-length", "content-type", "host", "transfer-encoding", "connection"}
MAX_ANSWER_BYTES = 65536  # of a receiver's answer body, read and discarded
RETRY_STATUS = {408, 425, 429}  # 4xx answers worth asking again; other 4xx will not change


@dataclass
class WebhookConfig:
    url: str = field(default="", repr=False)  # may carry a secret in its query
    timeout_s: float = 5.0   # connecting, and each read of the answer
    retries: int = 3         # attempts after the first
    backoff_s: float = 1.0   # wait before the first retry, doubling
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may carry a secret
    events: tuple[str, ...] = ("fired",)
    queue: int = 1000        # events waiting; more are dropped and counted

    def where(self) -> str:
        """The URL for logs: no query (it may hold a token)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _number(value, key: str, low: float, high: float, integer: bool = False):
    """`value` if it is a number (an integer) in [low, high]; ValueError naming `key`."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{key}: expected {kind} from {low:g} to {high:g}, got {value!r}")
    return value if integer else float(value)


def parse_webhook(table, key: str = "webhook") -> WebhookConfig:
    """The `[webhook]` table; ValueError names the key (`webhook.url: ...`)."""
    if not isinstance(table, dict):
        raise ValueError(f"{key}: expected a table")
    for name in table:
        if name not in KEYS:
            raise ValueError(f"{key}.{name}: unknown key (known: {', '.join(KEYS)})")
    url = table.get("url")
    if not isinstance(url, str) or not url:
        raise ValueError(f"{key}.url: required: an http:// or https:// URL")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"{key}.url: not a valid URL: {exc}") from None
    if (len(url) > 2048 or parts.scheme not in ("http", "https") or not parts.hostname
            or any(c.isspace() or not c.isprintable() for c in url)):
        raise ValueError(f"{key}.url: expected an http:// or https:// URL with a host, at most "
                         "2048 characters, no spaces")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{key}.url: credentials in the URL are refused; give them in [{key}.headers]")
    headers = table.get("headers", {})
    if not isinstance(headers, dict) or len(headers) > 64:
        raise ValueError(f"{key}.headers: expected a table of at most 64 header names and string values")
    for name, value in headers.items():
        if not TOKEN_RE.fullmatch(name) or name.lower() in RESERVED:
            raise ValueError(f"{key}.headers: {name!r} is not a header name that may be set here")
        if (not isinstance(value, str) or len(value) > 8192
                or any(ord(c) < 32 or ord(c) == 127 for c in value)):
            raise ValueError(f"{key}.headers.{name}: expected a string of at most 8192 characters "
                             "without control characters")
    events = table.get("events", ["fired"])
    if (not isinstance(events, list) or not events or any(e not in EVENTS for e in events)
            or len(set(events)) != len(events)):
        raise ValueError(f"{key}.events: expected a non-empty list of {' and '.join(map(repr, EVENTS))}, "
                         "each at most once")
    return WebhookConfig(url, _number(table.get("timeout_s", 5.0), f"{key}.timeout_s", 0.05, 300),
                         _number(table.get("retries", 3), f"{key}.retries", 0, 20, integer=True),
                         _number(table.get("backoff_s", 1.0), f"{key}.backoff_s", 0, 3600),
                         dict(headers), tuple(events),
                         _number(table.get("queue", 1000), f"{key}.queue", 1, 100000, integer=True))


class DeliveryError(Exception):
    def __init__(self, reason: str, retry: bool = True):
        super().__init__(reason)
        self.retry = retry


class WebhookSender:
    """The queue and its thread. `submit` from the event loop; `close` at shutdown."""

    def __init__(self, cfg: WebhookConfig, metrics=None):
        self.cfg = cfg
        self.metrics = metrics
        self._queue: queue.Queue[dict] = queue.Queue(cfg.queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emoclapd-webhook", daemon=True)
        self.failed_in_a_row = 0
        self.last_error: str | None = None  # of the last failed delivery; None after a success
        self.busy = False

    def start(self) -> WebhookSender:
        self._thread.start()
        return self

    def submit(self, alert: dict) -> bool:
        """Queue an alert event if its state is one the webhook wants; never blocks."""
        if alert.get("state") not in self.cfg.events or self._stop.is_set():
            return False
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self._count("dropped")
            log.warning("webhook: queue full (%d): alert %s dropped", self.cfg.queue, alert.get("id"))
            return False
        self._depth()
        return True

    def configure(self, cfg: WebhookConfig) -> None:
        """A reloaded [webhook]: the next delivery uses it (the queue keeps its size)."""
        self.cfg = cfg

    def problem(self) -> str | None:
        """For /healthz, while the last delivery failed."""
        if self.last_error is None:
            return None
        return f"webhook: last {self.failed_in_a_row} deliveries failed: {self.last_error}"

    def close(self, flush_s: float = 2.0) -> None:
        """Let the queue drain for at most `flush_s`, then stop; what is left is dropped."""
        deadline = time.monotonic() + flush_s
        while (not self._queue.empty() or self.busy) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        left = 0
        while True:
            try:
                self._queue.get_nowait()
                left += 1
            except queue.Empty:
                break
        if left:
            self._count("dropped", left)
            log.warning("webhook: %d alert(s) not delivered at shutdown", left)
        self._depth()
        if self._thread.is_alive():
            self._thread.join(timeout=0.5)  # one stuck in a read is a daemon thread: it goes with us

    # ---- the thread
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                alert = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self.busy = True
            try:
                self._deliver(alert)
            except Exception as exc:  # noqa: BLE001 - the thread outlives any one delivery
                log.error("webhook: delivery of %s failed unexpectedly: %s", alert.get("id"), exc)
                self._failed(f"unexpected error: {exc}")
            finally:
                self.busy = False
                self._depth()

    def _deliver(self, alert: dict) -> None:
        body = json.dumps(alert, separators=(",", ":"), allow_nan=False).encode()
        attempt = 0
        while True:
            cfg = self.cfg  # a reload applies from the next attempt
            try:
                post(cfg, body)
            except DeliveryError as exc:
                if exc.retry and attempt < cfg.retries and not self._stop.is_set():
                    if self.metrics is not None:
                        self.metrics.webhook_retries.inc()
                    if self._stop.wait(cfg.backoff_s * 2 ** attempt):
                        self._count("dropped")  # shutting down mid back-off
                        return
                    attempt += 1
                    continue
                log.warning("webhook: alert %s to %s failed after %d attempt(s): %s",
                            alert.get("id"), cfg.where(), attempt + 1, exc)
                self._failed(str(exc))
                return
            self.failed_in_a_row, self.last_error = 0, None
            self._count("ok")
            return

    def _failed(self, reason: str) -> None:
        self.failed_in_a_row += 1
        self.last_error = reason
        self._count("failed")

    def _count(self, outcome: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.webhook_deliveries.labels(outcome).inc(n)

    def _depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels("webhook").set(self._queue.qsize())


def post(cfg: WebhookConfig, body: bytes) -> int:
    """One POST; the 2xx status, or DeliveryError with a reason fit for logs (no secrets).
    Redirects are not followed: they would carry the headers somewhere else."""
    parts = urlsplit(cfg.url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=cfg.timeout_s,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=cfg.timeout_s)
    headers = {"Content-Type": "application/json", "User-Agent": "emoclapd", **cfg.headers}
    try:
        conn.request("POST", path, body=body, headers=headers)
        answer = conn.getresponse()
        answer.read(MAX_ANSWER_BYTES)
        status = answer.status
    except TimeoutError:
        raise DeliveryError(f"no answer within {cfg.timeout_s:g} s") from None
    except ssl.SSLError as exc:
        raise DeliveryError(f"TLS: {exc.reason or exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}"[:300]) from None
    finally:
        conn.close()
    if 200 <= status < 300:
        return status
    if 300 <= status < 400:
        raise DeliveryError(f"HTTP {status} (redirects are not followed)", retry=False)
    raise DeliveryError(f"HTTP {status}", retry=status >= 500 or status in RETRY_STATUS)
