"""The gateway's broker: utterances from the edges, out to the encode workers and back,
results on to the serve stage, in its stage's process.

One thread runs `emoclap.dispatcher.Dispatcher` (zguide's Paranoid Pirate queue with
credit-based flow control): utterances come in on `[stages] utterances` (an inproc://
endpoint is an in-process inbox, where capture threads and the server's ingest hand
over the `Utterance` objects themselves; ipc:// or tcp:// is a PULL socket for capture
agents elsewhere), go out to the encode workers on a ROUTER bound on `[stages] workers`
(encode workers CONNECT DEALERs: any number, over inproc, ipc or tcp; framed once, where
they leave for a worker), and their results go on to the serve stage, always in this
process, as the decoded messages they are (`handoff.ToLoop`). Status and speech messages
go straight on; a segment of a role the gateway does not score goes on as speech and
never reaches a worker. Results wait in the outbox when the serve stage's link is full;
while it is, no work is handed out and no utterance taken, so a slow serve stage slows
the fleet instead of losing results. Every drop is counted with its station and reason.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque

import zmq

from emoclap import fleet, wire
from emoclap.dispatcher import Dispatcher, Options

from .config import Config
from .handoff import Inbox, ToLoop
from .links import bind, bind_local, context, pull_socket, speech_only, unbind_local
from .metrics import Metrics

log = logging.getLogger("emoclapd.broker")

RTT_SAMPLES = 8  # heartbeats whose round trip the median is taken over
MAX_FRAME = 32 << 20  # bytes: about 8 min of audio; a peer that sends more is disconnected


class Broker(threading.Thread):
    QUIET_S = 0.2  # draining ends once no utterance arrived for this long
    BURST = 256  # messages taken from one socket per turn of the loop
    LOSS_REPORTED_S = 300.0  # a worker that died unannounced is in /healthz this long, or until one joins

    def __init__(self, cfg: Config, metrics: Metrics, to_serve: ToLoop, consumed):
        super().__init__(name="broker", daemon=True)
        st = cfg.stages
        self.cfg, self.metrics = cfg, metrics
        self.policy = cfg.privacy.policy()
        self.dispatcher = Dispatcher(Options(st.heartbeat_interval_s, st.heartbeat_liveness,
                                             st.max_attempts, st.request_timeout_s, st.broker_queue))
        self.lock = threading.Lock()  # the dispatcher, between this thread and /healthz
        self._metrics_lock = threading.Lock()
        self.outbox: deque[wire.Message] = deque()
        self.outbox_limit = st.hwm
        self.to_serve = to_serve
        self.forwarded = 0  # embeddings handed to the serve stage's link
        # consumed(): embeddings the serve stage published or dropped; what it holds is backlog.
        self.consumed = consumed
        self.last_worker = time.monotonic()  # when an encode worker was last heard
        self.stop_event, self.drain_event = threading.Event(), threading.Event()
        self.drain_deadline, self.drain_patience_s, self.drain_limit = math.inf, 30.0, math.inf
        self._seen = (0, 0)  # requeued, duplicates: already added to the metrics
        self._rtts: dict[bytes, deque] = {}  # each worker's last link round trips
        self.slow_link_s = st.slow_link_ms / 1000
        self.losses: list[tuple[float, str, str]] = []  # (when, worker, why): died without BYE, none joined since
        # Bound here, so an endpoint in use fails at start-up with its key, not in a thread.
        self.endpoint = st.utterances
        self.inbox, self.pull = None, None
        if st.utterances.startswith("inproc://"):
            self.inbox = Inbox(st.hwm)
            bind_local(st.utterances, self.inbox)
        else:
            self.pull = pull_socket(st.utterances, st.hwm, "stages.utterances")
            self.pull.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
        self.router = context().socket(zmq.ROUTER)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished worker is an error, not silence
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.set_hwm(2 * fleet.MAX_CREDIT)
        try:
            bind(self.router, st.workers, "stages.workers")
        except Exception:
            self._close_input()
            self.router.close()
            raise

    # ---- control, from other threads
    def drain(self, timeout_s: float = 30.0) -> None:
        """Finish every accepted utterance, send `eos`, stop. What is left is counted
        dropped only once no worker has answered anything for `timeout_s`: a fleet that
        is slow (a busy CPU, a long backlog) but still working loses nothing at stop. The
        whole drain ends by 4 × `timeout_s` even so, since edges on other hosts may keep
        sending."""
        now = time.monotonic()
        self.drain_patience_s = timeout_s
        self.drain_deadline, self.drain_limit = now + timeout_s, now + 4 * timeout_s
        self.drain_event.set()

    def draining(self) -> int | None:
        """Utterances still to finish while draining (for /healthz); None while running."""
        if not self.drain_event.is_set():
            return None
        with self.lock:
            return self._backlog()

    def stop(self) -> None:
        self.stop_event.set()

    def snapshot(self) -> dict:
        """The fleet for /healthz: workers, queue, in flight, backlog, counts."""
        now = time.monotonic()
        with self.lock:
            d = self.dispatcher
            return {"workers": d.view(now), "alive": d.alive(), "queue": len(d.queue),
                    "inflight": d.inflight(), "backlog": self._backlog(), "accepted": d.accepted,
                    "requeued": d.requeued, "duplicates": d.duplicates}

    def problems(self, stations_online: bool) -> list[str]:
        now = time.monotonic()
        # Silent for two heartbeats: hung, cut off or overloaded, before it is declared dead.
        quiet = 2 * self.dispatcher.options.heartbeat_interval_s
        with self.lock:
            alive, pending = self.dispatcher.alive(), self.dispatcher.pending()
            out = [f"encode worker {_label(p.info, p.id)}: {p.info['problem']}"
                   for p in self.dispatcher.workers.values() if p.info.get("problem")]
            out += [f"encode worker {_label(p.info, p.id)}: silent for {now - p.heard:.1f} s"
                    for p in self.dispatcher.workers.values() if now - p.heard > quiet]
            out += [f"encode worker {_label(p.info, p.id)}: link round trip {p.info['rtt_ms']:.0f} ms (median of "
                    f"the last {RTT_SAMPLES} heartbeats; stages.slow_link_ms {self.slow_link_s * 1000:g})"
                    for p in self.dispatcher.workers.values() if p.info.get("rtt_ms", 0) > self.slow_link_s * 1000]
            self.losses = [x for x in self.losses if now - x[0] < self.LOSS_REPORTED_S]
            out += [f"encode worker {who} lost {now - when:.0f} s ago ({why}); none has joined since"
                    for when, who, why in self.losses]
        if alive == 0 and (pending or stations_online):
            out.insert(0, f"no encode worker alive ({pending} utterance(s) waiting)")
        return out

    # ---- the loop
    def run(self) -> None:
        try:
            drained = self._loop()
            if drained:
                self.outbox.append(wire.Message("eos"))
            while self.outbox:  # what is left goes: the serve stage takes it before it stops
                self.to_serve.deliver(self.outbox.popleft())
        except Exception:  # noqa: BLE001
            log.exception("broker failed")
        finally:
            self._close_input()
            self.router.close()

    def _close_input(self) -> None:
        if self.inbox is not None:
            unbind_local(self.endpoint)
            self.inbox.close()
        if self.pull is not None:
            self.pull.close()

    def _loop(self) -> bool:
        both, workers_only = zmq.Poller(), zmq.Poller()
        for poller in (both, workers_only):
            poller.register(self.router, zmq.POLLIN)
        edges = self.pull if self.pull is not None else self.inbox.fd
        both.register(edges, zmq.POLLIN)
        tick_ms = max(5, min(50, int(self.dispatcher.options.heartbeat_interval_s * 250)))
        quiet_since, next_gauges = None, 0.0
        while not self.stop_event.is_set():
            with self.lock:
                reading = self.dispatcher.room() and len(self.outbox) < self.outbox_limit
            events = dict((both if reading else workers_only).poll(tick_ms))
            now, got = time.monotonic(), 0
            with self.lock:
                if self.router in events:
                    self._from_workers(now)
                if reading and edges in events:
                    got = self._from_edges(now)
                infos = {w: p.info for w, p in self.dispatcher.workers.items()}
                dead, drops = self.dispatcher.expire(now)
                for worker in dead:
                    self._rtts.pop(worker, None)
                    log.warning("encode worker %s lost: silent for over %.1f s", worker.hex(),
                                self.dispatcher.timeout_s)
                    self._lost(worker, infos.get(worker, {}), f"silent for over {self.dispatcher.timeout_s:.1f} s", now)
                self._count(drops)
                if len(self.outbox) < self.outbox_limit:
                    for worker, req in self.dispatcher.assign(now):
                        self._send(worker, fleet.work(req.payload), now)
                for worker in self.dispatcher.heartbeats(now):
                    self._send(worker, fleet.broker_heartbeat(now), now)
                self._sync_counters()
            self._flush()
            if now >= next_gauges:
                self.update_metrics()
                next_gauges = now + 0.25
            if self.drain_event.is_set():
                quiet_since = None if got else (quiet_since or now)
                if self._drained(now, quiet_since):
                    self.update_metrics()
                    return True
        return False

    def _drained(self, now: float, quiet_since: float | None) -> bool:
        if quiet_since is None or now - quiet_since < self.QUIET_S:
            return now >= self.drain_deadline and self._give_up()
        d = self.dispatcher
        if d.pending() == 0 and not self.outbox:
            return True
        if now >= self.drain_deadline or (not d.workers and now - quiet_since >= d.timeout_s):
            return self._give_up()  # nobody left to finish them
        return False

    def _give_up(self) -> bool:
        with self.lock:
            drops = self.dispatcher.give_up()
        if drops:
            log.error("stopping: %d utterance(s) left unencoded, counted dropped", len(drops))
        self._count(drops)
        return True

    # ---- edges → queue
    def _from_edges(self, now: float) -> int:
        if self.inbox is not None:  # in this process: the messages themselves, no decoding
            got = 0
            while got < self.BURST and self.dispatcher.room() and (taken := self.inbox.take(1)):
                got += 1
                try:
                    self._take(taken[0], None, now)
                except Exception:  # noqa: BLE001 - one message never stops the broker
                    log.exception("broker: a message from an edge failed")
                    self.metrics.drop("?", "bad_message")
            return got
        got = 0
        while got < self.BURST and self.dispatcher.room():
            try:
                frames = self.pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            got += 1
            try:
                self._take(wire.decode(frames), frames, now)
            except wire.WireError as exc:
                log.warning("broker: skipped a malformed message: %s", exc)
                self.metrics.drop("?", "bad_message")
            except Exception:  # noqa: BLE001 - one message never stops the broker
                log.exception("broker: a message from an edge failed")
                self.metrics.drop("?", "bad_message")
        return got

    def _take(self, msg: wire.Message, frames: list[bytes] | None, now: float) -> None:
        """`frames`: the message as it came over a socket (None: handed over in-process)."""
        if msg.kind == "piece":
            # To the worker its utterance will go to; dropped where nobody can use it.
            worker = self.dispatcher.piece_holder(msg.piece.station) if self.policy.encodes_early(msg.piece.role) else None
            if worker is not None:
                self._send(worker, fleet.piece(frames or wire.encode(msg)), now)
            return
        if msg.kind in ("status", "speech"):
            self.outbox.append(msg)
        elif msg.kind != "segment":
            log.warning("broker: skipped a %s message on the utterances link", msg.kind)
            self.metrics.drop("?", "bad_message")
        elif not self.policy.scores(msg.utterance.role):  # an edge with another policy
            self.outbox.append(wire.Message("speech", utterance=speech_only(msg.utterance)))
        else:
            # Framed once, here, for the workers (and any retry); a socket's frames as they came.
            reason = self.dispatcher.submit(fleet.key_of(msg.utterance), frames or wire.encode(msg), now)
            if reason is not None:
                self.metrics.drop(msg.utterance.station, reason)

    # ---- workers
    def _from_workers(self, now: float) -> None:
        for _ in range(self.BURST):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            worker, body = frames[0].bytes, [f.bytes for f in frames[1:]]
            try:
                self._command(worker, fleet.decode(body, "broker"), frames[-1], now)
            except wire.WireError as exc:
                log.warning("broker: skipped a malformed message from worker %s: %s", worker.hex(), exc)
                self.metrics.worker_bad_messages.inc()
            except Exception:  # noqa: BLE001 - one message never stops the broker
                log.exception("broker: a message from worker %s failed", worker.hex())
                self.metrics.worker_bad_messages.inc()

    def _command(self, worker: bytes, cmd: fleet.Command, frame: zmq.Frame, now: float) -> None:
        d = self.dispatcher
        if cmd.name == "READY":
            info = {k: cmd.fields.get(k, "") for k in ("name", "host")}
            info.update(pid=cmd.fields.get("pid", 0), address=_peer_address(frame))
            if d.join(worker, cmd.fields["credit"], info, now):
                self.losses.clear()  # capacity is back (a restart, a healed link)
                log.info("encode worker %s joined: %s pid %s at %s, credit %d", worker.hex(), info["host"],
                         info["pid"], info["address"] or "in process", cmd.fields["credit"])
            self.last_worker = now
            return
        if cmd.name == "BYE":
            if worker in d.workers:
                log.info("encode worker %s left", worker.hex())
            self._rtts.pop(worker, None)
            self._count(d.leave(worker, now))
            return
        if cmd.name == "HEARTBEAT":
            if not d.heard(worker, now):
                self._send(worker, fleet.reconnect(), now)
                return
            worker_info = d.workers[worker].info
            if worker_info.get("problem") != cmd.fields.get("problem"):
                worker_info["problem"] = cmd.fields.get("problem")  # shown in /healthz, None when cleared
            if "pong" in cmd.fields:
                rtt = now - cmd.fields["pong"] - cmd.fields.get("held", 0.0)
                if 0 <= rtt < 3600:  # a pong from this broker's clock (not a restarted one's)
                    rtts = self._rtts.setdefault(worker, deque(maxlen=RTT_SAMPLES))
                    rtts.append(rtt)
                    worker_info["rtt_ms"] = round(1000 * sorted(rtts)[len(rtts) // 2], 1)
            for size, seconds in cmd.fields.get("batches", []):
                self.metrics.batch_size.observe(size)
                self.metrics.batch_latency.observe(seconds)
            for outcome, n in cmd.fields.get("pieces", {}).items():
                self.metrics.unused_pieces.labels(outcome).inc(n)
        else:  # RESULT or DROP
            f = cmd.fields
            key = fleet.key_of(cmd.message.utterance) if cmd.message else (f["station"], f["t0"], f["seq"])
            outcome = d.finish(worker, key, now, f.get("reason"))
            if outcome == "ok" and self.drain_event.is_set():
                self.drain_deadline = min(now + self.drain_patience_s, self.drain_limit)  # progress: wait on
            if outcome == "stale":
                self._send(worker, fleet.reconnect(), now)
                return
            if outcome == "ok" and cmd.message is not None:
                self.outbox.append(cmd.message)
                self.forwarded += cmd.message.kind == "embedding"
            elif outcome == "ok":
                self.metrics.drop(key[0], f["reason"])
        self.last_worker = now

    def _send(self, worker: bytes, frames: list[bytes], now: float) -> None:
        try:
            self.router.send_multipart([worker, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # gone (EHOSTUNREACH) or not reading (EAGAIN)
            if worker in self.dispatcher.workers:
                log.warning("encode worker %s unreachable (%s): its work goes to others",
                            worker.hex(), exc.strerror)
                self._lost(worker, self.dispatcher.workers[worker].info, f"unreachable: {exc.strerror}", now)
                self._rtts.pop(worker, None)
                self._count(self.dispatcher.leave(worker, now))

    def _lost(self, worker: bytes, info: dict, why: str, now: float) -> None:
        self.losses = [*self.losses[-15:], (now, _label(info, worker), why)]

    # ---- serve stage
    def _flush(self) -> None:
        while self.outbox and self.to_serve.room():
            self.to_serve.deliver(self.outbox.popleft())

    # ---- accounting
    def _count(self, drops: list[tuple[tuple, str]]) -> None:
        for key, reason in drops:
            self.metrics.drop(key[0], reason)

    def _sync_counters(self) -> None:
        requeued, duplicates = self.dispatcher.requeued, self.dispatcher.duplicates
        if requeued > self._seen[0]:
            self.metrics.requeued.inc(requeued - self._seen[0])
        if duplicates > self._seen[1]:
            self.metrics.duplicates.inc(duplicates - self._seen[1])
        self._seen = (requeued, duplicates)

    def _backlog(self) -> int:
        """Accepted and neither published nor dropped: waiting, in flight, or encoded and
        not yet taken by the serve stage (outbox, link)."""
        return self.dispatcher.pending() + max(0, self.forwarded - self.consumed())

    def update_metrics(self) -> None:
        """The fleet gauges: every quarter second, and for each /metrics request."""
        snap = self.snapshot()
        with self._metrics_lock:  # this thread and the server's both call it
            self.metrics.set_workers(snap["workers"])
        self.metrics.broker_queue.set(snap["queue"])
        self.metrics.backlog.set(snap["backlog"])
        self.metrics.upstream_age.set(round(time.monotonic() - self.last_worker, 1))


def _label(info: dict, worker: bytes) -> str:
    """How /healthz names a worker: what it said of itself (host:pid), else its id."""
    return info.get("name") or worker.hex()


def _peer_address(frame: zmq.Frame) -> str:
    """The worker's IP address over tcp (ZeroMQ's Peer-Address); empty otherwise."""
    try:
        return frame.get("Peer-Address") or ""
    except (zmq.ZMQError, AttributeError, TypeError):
        return ""
