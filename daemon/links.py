"""Links between stages, with drop accounting, and binding that refuses an endpoint in use.

Inside one process a link hands `wire.Message` objects to its reader's inbox; between
processes it is ZeroMQ PUSH -> PULL. Either has a high-water mark, so no queue grows
without bound.
A sender that cannot queue a message counts it as dropped (`queue_full`) instead of
waiting, unless it was asked to apply back-pressure (file replay as fast as possible).
Drop counts reach the score/publish stage in `status` messages, so one process's
`/metrics` accounts for every utterance whichever box dropped it.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import replace

import zmq

from emoclap import wire
from emoclap.record import Piece, Utterance

log = logging.getLogger("emoclapd.links")

_context_lock = threading.Lock()
MAX_OBSERVATIONS = 1000


def context() -> zmq.Context:
    """The process-wide context: inproc:// links only connect within one context."""
    with _context_lock:
        return zmq.Context.instance()


class LinkError(RuntimeError):
    """An endpoint that cannot be bound; the message names it and why."""


_ipc_locks: dict[str, int] = {}  # path -> open lock file, held while this process lives


def _claim_ipc(path: str, what: str) -> None:
    """ZeroMQ binds an ipc path by replacing the file, so a second binder would silently
    take a live endpoint over: hold `<path>.lock`, and refuse a path someone listens on."""
    lock_path = path + ".lock"
    ours = path in _ipc_locks  # bound here before: a socket closed a moment ago may still listen
    if not ours:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise LinkError(f"{what}: ipc://{path}: cannot open {lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LinkError(f"{what}: ipc://{path} is in use by another process "
                            f"(it holds {lock_path})") from None
        _ipc_locks[path] = fd
    deadline = time.monotonic() + (1.0 if ours else 0.0)
    while _listening(path, what):
        if time.monotonic() >= deadline:
            raise LinkError(f"{what}: ipc://{path} is in use: something listens on it")
        time.sleep(0.02)


def _listening(path: str, what: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
            raise LinkError(f"{what}: ipc://{path}: {exc.strerror or exc}") from None
        return False
    finally:
        probe.close()


def bind(sock: zmq.Socket, endpoint: str, what: str = "endpoint") -> None:
    """Bind, refusing an endpoint in use with an error that names it (`what`: the
    configuration key) instead of taking it over or failing in a thread."""
    if endpoint.startswith("ipc://"):
        _claim_ipc(endpoint[len("ipc://"):], what)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise LinkError(f"{what}: cannot bind {endpoint}: {exc.strerror}") from None


def pull_socket(endpoint: str, hwm: int, what: str = "endpoint") -> zmq.Socket:
    sock = context().socket(zmq.PULL)
    sock.set_hwm(hwm)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        bind(sock, endpoint, what)
    except LinkError:
        sock.close()
        raise
    return sock


_local: dict[str, object] = {}  # inproc endpoint -> the Inbox its in-process reader bound
_local_lock = threading.Lock()


def bind_local(endpoint: str, inbox) -> None:
    """An in-process reader's inproc:// endpoint: writers in this process hand it
    `wire.Message` objects directly (daemon.handoff), as inproc:// links only ever
    connect within one process anyway."""
    with _local_lock:
        if endpoint in _local:
            raise LinkError(f"cannot bind {endpoint}: in use in this process")
        _local[endpoint] = inbox


def unbind_local(endpoint: str) -> None:
    with _local_lock:
        _local.pop(endpoint, None)


class _ZmqPort:
    """Messages framed onto a PUSH socket (another process, another host)."""

    def __init__(self, endpoint: str, hwm: int, linger_ms: int):
        self.sock = context().socket(zmq.PUSH)
        self.sock.set_hwm(hwm)
        self.sock.setsockopt(zmq.LINGER, linger_ms)
        self.sock.connect(endpoint)

    def send(self, msg: wire.Message, block: bool) -> bool:
        try:
            self.sock.send_multipart(wire.encode(msg), flags=0 if block else zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def finishing(self, linger_ms: int) -> None:
        """The last sends wait at most the linger time."""
        self.sock.setsockopt(zmq.SNDTIMEO, linger_ms)

    def close(self, linger_ms: int | None = None) -> None:
        self.sock.close(linger=linger_ms)


class _LocalPort:
    """Messages handed to an in-process reader's inbox as they are."""

    def __init__(self, inbox):
        self.inbox = inbox
        self.timeout_s: float | None = None

    def send(self, msg: wire.Message, block: bool) -> bool:
        return self.inbox.put(msg, block, self.timeout_s)

    def finishing(self, linger_ms: int) -> None:
        self.timeout_s = linger_ms / 1000

    def close(self, linger_ms: int | None = None) -> None:
        pass  # the inbox is its reader's


def speech_only(utt: Utterance) -> Utterance:
    """What a `speech` message carries of an utterance: its times, never its audio."""
    return replace(utt, audio=None, embedding=None, text_embedding=None, transcript=None)


def _port(endpoint: str, hwm: int, linger_ms: int):
    with _local_lock:
        inbox = _local.get(endpoint)
    return _LocalPort(inbox) if inbox is not None else _ZmqPort(endpoint, hwm, linger_ms)


class Sender:
    """One link downstream (one thread) plus the drop counts and states it reports.

    The link is the reader's inbox where the reader bound its inproc:// endpoint in this
    process, else a PUSH socket. `state` maps station -> state word; `dropped` counts
    (station, reason) since the last status message that got through.
    """

    def __init__(self, endpoint: str, hwm: int, status_interval_s: float = 1.0,
                 block: bool = False, linger_ms: int = 2000):
        self.port = _port(endpoint, hwm, linger_ms)
        self.block = block
        self.linger_ms = linger_ms
        self.state: dict[str, str] = {}
        self.dropped: Counter[tuple[str, str]] = Counter()
        self.overflows: Counter[str] = Counter()
        self.segmented: Counter[str] = Counter()  # utterances cut and handed on, by station
        self.gauges: dict[str, float] = {}
        self.observations: list[tuple[int, float]] = []
        self.status_interval_s = status_interval_s
        self._last_status = 0.0

    def drop(self, station: str, reason: str, n: int = 1) -> None:
        self.dropped[(station, reason)] += n

    def too_short(self, station: str, n: int) -> None:
        """Voiced blips the segmenter cut and refused: cut (so accounted for) and dropped."""
        if n:
            self.segmented[station] += n
            self.drop(station, "too_short", n)

    def overflow(self, station: str, n: int = 1) -> None:
        """Audio blocks lost between the sound card and the segmenter."""
        self.overflows[station] += n

    def set_state(self, station: str, state: str) -> None:
        if self.state.get(station) != state:
            log.info("station %s: %s", station, state)
            self.state[station] = state
            self._last_status = 0.0  # report a state change at once

    def absorb(self, status: dict) -> None:
        """Fold an upstream status into this sender's, to be reported downstream."""
        if status.get("states", {}) != {k: self.state.get(k) for k in status.get("states", {})}:
            self._last_status = 0.0
        self.state.update(status.get("states", {}))
        for station, reason, n in status.get("dropped", []):
            self.dropped[(station, reason)] += n
        for station, n in status.get("overflows", {}).items():
            self.overflows[station] += n
        for station, n in status.get("segmented", {}).items():
            self.segmented[station] += n
        self.gauges.update(status.get("gauges", {}))
        self.observations.extend(tuple(o) for o in status.get("batches", []))

    def send(self, msg: wire.Message, block: bool | None = None) -> bool:
        return self.port.send(msg, self.block if block is None else block)

    def send_utterances(self, utterances: list[Utterance]) -> int:
        """Segments to the encode stage; one that finds the queue full is counted dropped."""
        sent = 0
        for utt in utterances:
            if self.send(wire.Message("segment", utterance=utt)):
                sent += 1
            else:
                self.drop(utt.station, "queue_full")
        return sent

    def send_speech(self, utterances: list[Utterance]) -> None:
        """Utterances of roles that are not scored: their times only, never their audio."""
        for utt in utterances:
            if not self.send(wire.Message("speech", utterance=speech_only(utt))):
                self.drop(utt.station, "queue_full")

    def send_pieces(self, pieces: list[Piece]) -> None:
        """Pieces of utterances in progress, best effort: one that finds the queue full is
        left out (its utterance is encoded whole), not counted as a drop."""
        for p in pieces:
            self.send(wire.Message("piece", piece=p), block=False)

    def dispatch(self, utterances: list[Utterance], policy) -> None:
        """Each utterance to the encoder, or, for a role the privacy policy does not score,
        as speech activity only."""
        for utt in utterances:  # counted before the link can refuse them: accepted is what was cut
            self.segmented[utt.station] += 1
        scored, speech = policy.split(utterances)
        self.send_utterances(scored)
        self.send_speech(speech)

    def tick(self, force: bool = False) -> None:
        """Send a status message when one is due; counts are kept until one gets through."""
        now = time.monotonic()
        del self.observations[:-MAX_OBSERVATIONS]  # bounded while statuses cannot get through
        if not force and now - self._last_status < self.status_interval_s:
            return
        self._last_status = now
        header = {
            "states": dict(self.state),
            "dropped": [[s, r, n] for (s, r), n in self.dropped.items()],
            "overflows": dict(self.overflows),
            "segmented": dict(self.segmented),
            "gauges": dict(self.gauges),
            "batches": list(self.observations),
        }
        if self.send(wire.Message("status", header)):
            self.dropped.clear()
            self.overflows.clear()
            self.segmented.clear()
            self.observations.clear()
            # An ended station has been reported; keeping it would grow without bound.
            for station in [s for s, state in self.state.items() if state == "ended"]:
                del self.state[station]

    def abandon(self) -> None:
        """Gone at once, reporting nothing more (what an edge that crashed does)."""
        self.port.close(0)

    def close(self, eos: bool = False) -> None:
        """Report the last counts (and end-of-stream), waiting at most the linger time."""
        self.port.finishing(self.linger_ms)
        self.block = True
        self.tick(force=True)
        if eos:
            self.send(wire.Message("eos"))
        self.port.close()
