"""The encode stage: one worker of the gateway's encode fleet.

It connects a DEALER to the broker (`[stages] workers`), says READY with its credit
(how many utterances it holds at most: two batches, so one fills while the other
runs), embeds what it is given through the shared batcher, and answers each with
RESULT (the embedding) or DROP (too short, encoder error), in the order batches finish.
The socket is served by this thread alone and never waits for the encoder (the batcher
has its own thread), so heartbeats go out every interval even behind a long batch. A
broker not heard for `heartbeat_liveness` intervals is taken for dead: the worker drops
what it holds (the broker gives that work to others), opens a fresh socket after a
back-off, and says READY again (Paranoid Pirate). Draining (SIGTERM) says READY with
credit 0, finishes what it holds, then BYE.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

import numpy as np
import zmq

from emoclap import fleet, latency, pieces, wire
from emoclap.record import piece_key
from .batcher import finished
from .config import Config
from .links import LinkError, context
from .transcriber import Reading

log = logging.getLogger("emoclapd.worker")


class ObservedEncoder:
    """Wraps an encoder to record (batch size, seconds) of every batch it runs."""

    def __init__(self, encoder):
        self.encoder = encoder
        self._lock = threading.Lock()
        self._seen: list[tuple[int, float]] = []

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode(self, audios, **options):
        started = time.perf_counter()
        out = self.encoder.encode(audios, **options)
        with self._lock:
            self._seen.append((len(audios), time.perf_counter() - started))
        return out

    def take(self) -> list[tuple[int, float]]:
        with self._lock:
            seen, self._seen = self._seen, []
        return seen


class EncodeWorker(threading.Thread):
    QUIET_S = 0.2  # a draining worker leaves once no work arrived for this long

    def __init__(self, cfg: Config, batcher, observed: ObservedEncoder | None = None,
                 max_pending: int | None = None):
        super().__init__(name="encode", daemon=True)
        st = cfg.stages
        self.endpoint = st.workers
        self.batcher = batcher
        self.observed = observed
        self.forward_audio = cfg.history.store_audio
        self.forward_transcript = cfg.transcripts.leave_encoder
        self.policy = cfg.privacy.policy()
        self.credit = min(max_pending or 2 * cfg.encoder.max_batch, fleet.MAX_CREDIT)
        self.interval_s, self.liveness = st.heartbeat_interval_s, st.heartbeat_liveness
        self.pending: dict[tuple, tuple] = {}  # key -> (utterance, future, taken, its pieces encoded ahead)
        # A bundle encoded in pieces: pieces of utterances still being spoken, encoded as
        # they come and held until their utterance does (or for as long as one can last).
        self.piece_spec = getattr(getattr(batcher, "encoder", None), "pieces", None)
        self.shelf = pieces.Shelf(cfg.segmenter.max_utterance_s + 10.0)
        self.pieces_refused = 0
        self._pieces_told = (0, 0)  # (refused, expired) as of the last heartbeat
        self.sock: zmq.Socket | None = None
        self.broker: fleet.Liveness | None = None
        self.stop_event = threading.Event()
        self.drain_event = threading.Event()
        self.connects = 0
        self._rejoin = False  # the broker said RECONNECT
        self._ping: tuple[float, float] | None = None  # the broker's last ping, and when it came
        # Connected here, so a bad endpoint fails at start-up, not in a thread.
        self._connect(self.credit)

    def drain(self) -> None:
        """Take no more work, finish what it holds, say BYE and stop."""
        self.drain_event.set()

    def stop(self) -> None:
        self.stop_event.set()

    # ---- the loop
    def run(self) -> None:
        try:
            self._loop()
        except Exception:  # noqa: BLE001
            log.exception("encode stage failed")
        finally:
            if self.sock is not None:
                self.sock.close(linger=1000 if self.drain_event.is_set() else 0)

    def _loop(self) -> None:
        quiet_since, draining = None, False
        while not self.stop_event.is_set():
            now = time.monotonic()
            got = self._receive(5 if self.pending else 50)
            self._complete()
            if self.broker.ping_due(now):
                pong = None if self._ping is None else (self._ping[0], time.monotonic() - self._ping[1])
                self._ping = None
                self._send(fleet.heartbeat(len(self.pending),
                                           self.observed.take() if self.observed else None,
                                           self._problem(), pong, self._unused_pieces(now)))
            if self.drain_event.is_set():
                if not draining:
                    draining = True
                    self._send(fleet.ready(0, *self._who()))
                quiet_since = None if got else (quiet_since or now)
                if not self.pending and quiet_since and now - quiet_since >= self.QUIET_S:
                    self._send(fleet.bye())
                    return
                if self.broker.dead(now):
                    return  # nobody to hand anything to
            elif self._rejoin or self.broker.dead(now):
                self._reconnect(now)

    def _problem(self) -> str | None:
        """What keeps the encoder from working (a Triton server gone), for the heartbeat."""
        problem = getattr(self.observed.encoder if self.observed else None, "problem", None)
        try:
            return problem() if callable(problem) else None
        except Exception:  # noqa: BLE001 - a health probe never stops the worker
            log.exception("encode: the encoder's health check failed")
            return None

    def _who(self) -> tuple[str, str, int]:
        host = socket.gethostname()
        return f"{host}:{os.getpid()}", host, os.getpid()

    def _connect(self, credit: int) -> None:
        self.sock = context().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.set_hwm(4 * fleet.MAX_CREDIT)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 32 << 20)  # a broker gone mad cannot fill memory
        try:
            self.sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self.sock.close()
            raise LinkError(f"stages.workers: cannot connect to {self.endpoint}: {exc.strerror}") from None
        self.connects += 1
        self.broker = fleet.Liveness(self.interval_s, self.liveness, time.monotonic())
        self._send(fleet.ready(credit, *self._who()))

    def _reconnect(self, now: float) -> None:
        """The broker is gone (or does not know us): what we hold is its to give to
        others; a fresh socket, after a back-off that grows while it stays away."""
        if self.pending:
            log.warning("encode: leaving %d utterance(s) to the broker to give to others", len(self.pending))
        if not self._rejoin:
            log.warning("encode: broker at %s not heard for %.1f s; reconnecting", self.endpoint,
                        now - self.broker.heard_at)
        self.pending.clear()
        delay = 0.0 if self._rejoin else self.broker.backoff(now)
        self._rejoin = False
        self.sock.close(linger=0)
        if self.stop_event.wait(delay):
            self.sock = None
            return
        liveness = self.broker
        self._connect(self.credit)
        self.broker.delay_s = liveness.delay_s  # keep growing until the broker answers

    def _send(self, frames: list[bytes]) -> None:
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:  # no broker connected: it will hear nothing, and requeue
            pass

    def _receive(self, timeout_ms: int) -> int:
        if not self.sock.poll(timeout_ms):
            return 0
        got = 0
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return got
            now = time.monotonic()
            try:
                cmd = fleet.decode(frames, "worker")
            except wire.WireError as exc:
                log.warning("encode: skipped a malformed message from the broker: %s", exc)
                continue
            self.broker.heard(now)
            if cmd.name == "RECONNECT":
                log.info("encode: the broker does not know this worker; joining again")
                self._rejoin = True
                return got
            if cmd.name == "HEARTBEAT" and "ping" in cmd.fields:
                self._ping = (cmd.fields["ping"], now)
            if cmd.name == "WORK":
                got += 1
                self._work(cmd.message.utterance)
            elif cmd.name == "PIECE":
                self._piece(cmd.message.piece, now)

    def _unused_pieces(self, now: float) -> dict[str, int]:
        """Pieces refused or expired since the last heartbeat (the gateway's /metrics counts them)."""
        self.shelf.expire(now)
        told, self._pieces_told = self._pieces_told, (self.pieces_refused, self.shelf.expired)
        return {"refused": self.pieces_refused - told[0], "expired": self.shelf.expired - told[1]}

    def _piece(self, piece, now: float) -> None:
        if self.piece_spec is None or piece.audio.size != self.piece_spec.samples \
                or not self.policy.encodes_early(piece.role):
            self.pieces_refused += 1  # not this bundle's length (a capture agent's stages.piece_s), or a role not to encode early
            return
        self.shelf.put(piece.utterance_key, piece.index, self.batcher.submit_piece(piece.audio, piece.offset), now)

    def _work(self, utt) -> None:
        key = fleet.key_of(utt)
        if key in self.pending:
            return  # sent again while we hold it: one answer will do
        known = self.shelf.take(piece_key(utt.station, utt.t0, utt.start))
        if not self.policy.scores(utt.role):  # this worker's policy is stricter than the gateway's
            self._send(fleet.result(wire.speech(utt)))
            return
        try:
            future = self.batcher.submit(utt.audio, utt.station, read_words=utt.insufficient is None, known=known)
        except Exception as exc:  # noqa: BLE001
            log.warning("encode: %s: cannot queue: %s", utt.station, exc)
            self._send(fleet.drop(key, "encoder_error"))
            return
        self.pending[key] = (utt, future, time.time(), known)

    def _pieces_of(self, utt, known: dict) -> tuple[int, int] | None:
        """(encoded while spoken, all) of an utterance's pieces; None for a whole-utterance bundle."""
        spec = self.piece_spec
        if spec is None or utt.audio is None:
            return None
        cut = pieces.bounds(utt.audio.size, spec.samples, spec.min_samples)
        ahead = sum(1 for k, m in finished(known).items() if k < len(cut) and m.samples == cut[k][1] - cut[k][0])
        return ahead, len(cut)

    def _complete(self) -> None:
        for key in [k for k, (_, f, _, _) in self.pending.items() if f.done()]:
            utt, future, taken, known = self.pending.pop(key)
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - one bad utterance never stops the stage
                # An outage the encoder already reported (once) is not logged per utterance.
                (log.debug if getattr(exc, "reported", False) else log.warning)(
                    "encode: %s seq %s failed: %s", utt.station, utt.seq, exc)
                self._send(fleet.drop(key, "encoder_error"))
                continue
            if result is None:  # shorter than the encoder's minimum
                self._send(fleet.drop(key, "too_short"))
                continue
            if not isinstance(result, Reading):  # an encoder that reads the audio path alone
                result = Reading(result)
            utt.embedding, utt.encoded = np.asarray(result.embedding, np.float32).reshape(-1), time.time()
            utt.text_embedding, utt.transcript = result.text_embedding, result.transcript
            utt.pieces = self._pieces_of(utt, known)
            computed = dict(result.spans or {})
            utt.spans.update(to_encoder=latency.span(taken - utt.emitted),
                             queue=latency.span(utt.encoded - taken - sum(computed.values())),
                             **{k: latency.span(v) for k, v in computed.items()})
            self._send(fleet.result(wire.embedding(utt, with_audio=self.forward_audio,
                                                   with_transcript=self.forward_transcript)))
