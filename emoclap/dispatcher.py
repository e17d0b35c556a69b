"""The broker's bookkeeping for the encode fleet (see `emoclap.fleet`): which worker
has credit, the queue, the in-flight table keyed by utterance with deadline and
attempts, and worker liveness by heartbeat.

A sans-I/O state machine: the broker's adapter feeds it what arrived and the time, and
sends what it returns. Work goes to the worker with the most free credit. A worker
silent for `liveness` heartbeat intervals is dead and gets no more work; what it held
goes back to the front of the queue, at most `max_attempts` dispatches per request,
then it is dropped as `worker_lost`. Work waiting while no worker is alive is bounded
(`queue_limit`); past the bound it is dropped as `no_worker`. A worker that holds work
and answers nothing for `request_timeout_s` is stuck (slow is not: it answers some):
what it holds is retried too. Answers for a key already
finished, not asked of that worker, or from a worker declared dead are discarded and
counted as duplicates: nothing is published twice.
"""
from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field


MAX_PIECE_HOLDERS = 4096


@dataclass
class Options:
    heartbeat_interval_s: float = 0.5
    liveness: int = 3  # missed intervals before a peer is dead
    max_attempts: int = 3  # dispatches of one request before it is dropped as worker_lost
    request_timeout_s: float = 30.0  # a worker holding work and answering nothing this long is stuck
    queue_limit: int = 256  # requests waiting for a worker
    remember: int = 65536  # finished keys kept to recognise late duplicates


@dataclass
class Peer:
    """A worker as the broker sees it."""
    id: bytes
    credit: int
    heard: float
    joined: float
    info: dict = field(default_factory=dict)
    inflight: set = field(default_factory=set)
    pinged: float = -math.inf
    turn: int = 0  # when it last got work: ties go to the one that waited longest
    answered: int = 0  # answers that counted (results and drops)
    progress: float = -math.inf  # its last answer (or its joining): slow is not stuck

    @property
    def free(self) -> int:
        return self.credit - len(self.inflight)


@dataclass
class Request:
    key: tuple
    payload: object  # what the broker re-sends (its frames); opaque here
    accepted: float
    order: int = 0  # arrival order: retried work goes back ahead of newer work, oldest first
    attempts: int = 0
    worker: bytes | None = None  # the worker it is now given to
    deadline: float = math.inf
    prefer: bytes | None = None  # the worker that holds its pieces, while it has credit


class Dispatcher:
    """Workers, their credit and liveness, the queue and the in-flight table.

    Invariant: accepted == finished + sum(dropped) + len(requests); every key accepted
    ends finished or dropped exactly once."""

    def __init__(self, options: Options | None = None):
        self.options = options or Options()
        self.workers: dict[bytes, Peer] = {}
        self.requests: dict[tuple, Request] = {}
        self.queue: deque[tuple] = deque()
        self.done: OrderedDict[tuple, None] = OrderedDict()
        self.accepted = self.finished = self.requeued = self.duplicates = 0
        self.dropped: Counter[str] = Counter()
        self._turns = 0
        self.piece_holders: dict[str, bytes] = {}  # station -> the worker its pieces go to

    # ---- questions
    @property
    def timeout_s(self) -> float:
        return self.options.heartbeat_interval_s * self.options.liveness

    def alive(self) -> int:
        return len(self.workers)

    def pending(self) -> int:
        return len(self.requests)

    def inflight(self) -> int:
        return sum(1 for r in self.requests.values() if r.worker is not None)

    def room(self) -> bool:
        """Whether to take new work: yes while the queue has room, and always while no
        worker is alive (what cannot wait is counted `no_worker`, not left upstream)."""
        return len(self.queue) < self.options.queue_limit or not self.workers

    # ---- edges
    def piece_holder(self, station: str) -> bytes | None:
        """The worker a station's pieces go to, and so its utterances while that worker has
        credit (it encoded their pieces ahead): the one it had while it lives and takes work,
        else the freest. None while no worker takes work."""
        worker = self.piece_holders.get(station)
        if worker in self.workers and self.workers[worker].credit > 0:  # not one that is draining
            return worker
        peer = max((p for p in self.workers.values() if p.credit > 0), key=lambda p: (p.free, -p.turn), default=None)
        if peer is None:
            self.piece_holders.pop(station, None)
            return None
        self.piece_holders[station] = peer.id
        while len(self.piece_holders) > MAX_PIECE_HOLDERS:  # stations that came and went (ingest)
            del self.piece_holders[next(iter(self.piece_holders))]
        return peer.id

    def submit(self, key: tuple, payload, now: float) -> str | None:
        """A new utterance; returns the reason it was dropped, or None when queued. It goes
        to its station's piece holder where there is one (`piece_holder`)."""
        self.accepted += 1
        if key in self.requests or key in self.done:
            reason = "duplicate"
        elif len(self.queue) >= self.options.queue_limit:
            reason = "queue_full" if self.workers else "no_worker"
        else:
            reason = None
        if reason is not None:
            self.dropped[reason] += 1
            return reason
        self.requests[key] = Request(key, payload, now, self.accepted,
                                     prefer=self.piece_holders.get(key[0]))
        self.queue.append(key)
        return None

    # ---- workers
    def join(self, worker: bytes, credit: int, info: dict, now: float) -> bool:
        """READY: a new worker, or a known one changing its credit (0: draining).
        True when it is new."""
        peer = self.workers.get(worker)
        if peer is not None:
            peer.credit, peer.heard = credit, now
            peer.info.update(info)
            return False
        self.workers[worker] = Peer(worker, credit, now, now, dict(info), progress=now)
        return True

    def heard(self, worker: bytes, now: float) -> bool:
        """Any message from a worker proves it alive; False for one not known (dead)."""
        peer = self.workers.get(worker)
        if peer is None:
            return False
        peer.heard = now
        return True

    def assign(self, now: float) -> list[tuple[bytes, Request]]:
        """Queued requests to the workers with free credit, the freest first; a request
        taken from a stuck worker goes to another one (it waits while there is none)."""
        out, waiting = [], []
        while self.queue and any(p.free > 0 for p in self.workers.values()):
            key = self.queue.popleft()
            req = self.requests[key]
            peer = self.workers.get(req.prefer)
            if peer is None or peer.free <= 0 or key in peer.inflight or req.attempts:
                peer = max((p for p in self.workers.values() if p.free > 0 and key not in p.inflight),
                           key=lambda p: (p.free, -p.turn), default=None)
            if peer is None:
                waiting.append(key)
                continue
            self._turns += 1
            req.attempts += 1
            req.worker, req.deadline, peer.turn = peer.id, now + self.options.request_timeout_s, self._turns
            peer.inflight.add(req.key)
            out.append((peer.id, req))
        self.queue.extendleft(reversed(waiting))
        return out

    def finish(self, worker: bytes, key: tuple, now: float, reason: str | None = None) -> str:
        """A worker's answer: `ok` (the first: publish it, or count its drop `reason`),
        `duplicate` (finished already, or never asked of this worker) or `stale` (from a
        worker not known: declared dead). Only `ok` changes what is published."""
        peer = self.workers.get(worker)
        if peer is None:
            self.duplicates += 1
            return "stale"
        peer.heard = now
        if key not in peer.inflight:
            self.duplicates += 1
            return "duplicate"
        peer.inflight.discard(key)
        peer.progress = now
        req = self.requests.pop(key, None)
        if req is None:  # another worker's answer came first
            self.duplicates += 1
            return "duplicate"
        if req.worker is None:  # timed out and waiting again: it needs no other worker now
            self.queue.remove(key)
        self._remember(key)
        peer.answered += 1
        if reason is None:
            self.finished += 1
        else:
            self.dropped[reason] += 1
        return "ok"

    def leave(self, worker: bytes, now: float) -> list[tuple[tuple, str]]:
        """BYE, or a worker that can no longer be reached: what it held is retried."""
        peer = self.workers.pop(worker, None)
        if peer is None:
            return []
        return self._retry([self.requests[k] for k in peer.inflight
                            if k in self.requests and self.requests[k].worker == worker])

    def expire(self, now: float) -> tuple[list[bytes], list[tuple[tuple, str]]]:
        """Workers silent too long are dead, and requests past their deadline held by a
        worker that answered nothing for as long (stuck, not slow) are retried; returns
        (dead workers, drops)."""
        dead = [w for w, p in self.workers.items() if now - p.heard > self.timeout_s]
        drops = [d for w in dead for d in self.leave(w, now)]
        stuck = {w for w, p in self.workers.items() if now - p.progress > self.options.request_timeout_s}
        late = [r for r in self.requests.values() if r.worker in stuck and r.deadline < now]
        return dead, drops + self._retry(late)

    def heartbeats(self, now: float) -> list[bytes]:
        """Workers due a heartbeat from the broker."""
        due = [p for p in self.workers.values() if now - p.pinged >= self.options.heartbeat_interval_s]
        for p in due:
            p.pinged = now
        return [p.id for p in due]

    def give_up(self) -> list[tuple[tuple, str]]:
        """At shutdown: what is left is dropped, queued as `no_worker`, in flight as
        `worker_lost`."""
        out = [self._drop(r, "worker_lost" if r.worker is not None else "no_worker")
               for r in list(self.requests.values())]
        self.queue.clear()
        return out

    # ---- inside
    def _retry(self, requests: list[Request]) -> list[tuple[tuple, str]]:
        drops, again = [], []
        for req in requests:
            req.worker, req.deadline = None, math.inf
            if req.attempts >= self.options.max_attempts:
                drops.append(self._drop(req, "worker_lost"))
            else:
                again.append(req)
        again.sort(key=lambda r: r.order, reverse=True)
        self.queue.extendleft(r.key for r in again)  # oldest first, ahead of new work
        self.requeued += len(again)
        return drops

    def _drop(self, req: Request, reason: str) -> tuple[tuple, str]:
        del self.requests[req.key]
        self._remember(req.key)
        self.dropped[reason] += 1
        return req.key, reason

    def _remember(self, key: tuple) -> None:
        self.done[key] = None
        while len(self.done) > self.options.remember:
            self.done.popitem(last=False)

    def view(self, now: float) -> list[dict]:
        """Each worker for /healthz: id, what it said of itself, credit, in flight, age."""
        return [{"id": p.id.hex(), **p.info, "credit": p.credit, "inflight": len(p.inflight),
                 "answered": p.answered, "heard_s": round(now - p.heard, 3),
                 "up_s": round(now - p.joined, 1)}
                for p in self.workers.values()]
