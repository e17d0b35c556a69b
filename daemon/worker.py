"""The encode stage: utterances in, embeddings out, batched across stations.

It pulls segment messages from every capture agent (and the server's ingest), hands
the audio to the shared batcher, and pushes each embedding on in the order the
batches finish. Upstream `status` messages are folded into its own, so drop counts
survive a full queue. At most `max_pending` utterances wait for the encoder; past
that it stops reading, the ZeroMQ queues fill and capture counts `queue_full`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

import numpy as np
import zmq

from emoclap import wire
from emoclap.record import Utterance
from .config import Config
from .links import Sender, pull_socket

log = logging.getLogger("emoclapd.worker")


class ObservedEncoder:
    """Wraps an encoder to record (batch size, seconds) of every batch it runs."""

    def __init__(self, encoder):
        self.encoder = encoder
        self._lock = threading.Lock()
        self._seen: list[tuple[int, float]] = []

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode(self, audios):
        started = time.perf_counter()
        out = self.encoder.encode(audios)
        with self._lock:
            self._seen.append((len(audios), time.perf_counter() - started))
        return out

    def take(self) -> list[tuple[int, float]]:
        with self._lock:
            seen, self._seen = self._seen, []
        return seen


class EncodeWorker(threading.Thread):
    QUIET_S = 0.2  # a draining worker ends once no utterance arrived for this long

    def __init__(self, cfg: Config, batcher, observed: ObservedEncoder | None = None,
                 max_pending: int | None = None):
        super().__init__(name="encode", daemon=True)
        st = cfg.stages
        self.batcher = batcher
        self.observed = observed
        self.forward_audio = cfg.history.store_audio
        self.policy = cfg.privacy.policy()
        self.max_pending = max_pending or max(st.hwm, 2 * cfg.encoder.max_batch)
        # Bind here so a taken address fails at start-up, not in a thread.
        self.pull = pull_socket(st.utterances, st.hwm)
        self.sender = Sender(st.embeddings, st.hwm, st.status_interval_s)
        self.pending: deque[tuple[Utterance, object]] = deque()
        self.stop_event = threading.Event()
        self.drain_event = threading.Event()

    def drain(self) -> None:
        """Finish every utterance already sent here, then send `eos` and stop."""
        self.drain_event.set()

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        quiet_since = None
        try:
            while not self.stop_event.is_set():
                room = len(self.pending) < self.max_pending
                timeout = 5 if self.pending else 100
                got = 0
                if room and poller.poll(timeout):
                    got = self._receive()
                elif not room:
                    time.sleep(0.002)
                self._complete()
                self._report()
                if self.drain_event.is_set():
                    now = time.monotonic()
                    quiet_since = None if got else (quiet_since or now)
                    if quiet_since and now - quiet_since >= self.QUIET_S and not self.pending:
                        break
        except Exception:  # noqa: BLE001
            log.exception("encode stage failed")
        finally:
            self.sender.close(eos=self.drain_event.is_set())
            self.pull.close()

    def _receive(self) -> int:
        got = 0
        while len(self.pending) < self.max_pending:
            try:
                frames = self.pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            got += 1
            try:
                msg = wire.decode(frames)
            except wire.WireError as exc:
                log.warning("encode: skipped a malformed message: %s", exc)
                self.sender.drop("?", "bad_message")
                continue
            if msg.kind == "status":
                self.sender.absorb(msg.header)
            elif msg.kind == "speech":  # nothing to embed: straight on to the score stage
                if not self.sender.send(frames):
                    self.sender.drop(msg.utterance.station, "queue_full")
            elif msg.kind == "segment":
                utt = msg.utterance
                if not self.policy.scores(utt.role):  # a capture agent with another policy
                    self.sender.send_speech([utt])
                    continue
                try:
                    future = self.batcher.submit(utt.audio, utt.station)
                except Exception as exc:  # noqa: BLE001
                    log.warning("encode: %s: cannot queue: %s", utt.station, exc)
                    self.sender.drop(utt.station, "encoder_error")
                    continue
                self.pending.append((utt, future))
        return got

    def _complete(self) -> None:
        while self.pending and self.pending[0][1].done():
            utt, future = self.pending.popleft()
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - one bad utterance never stops the stage
                log.warning("encode: %s seq %s failed: %s", utt.station, utt.seq, exc)
                self.sender.drop(utt.station, "encoder_error")
                continue
            if result is None:  # shorter than the encoder's minimum
                self.sender.drop(utt.station, "too_short")
                continue
            utt.embedding, utt.encoded = np.asarray(result, np.float32).reshape(-1), time.time()
            if not self.sender.send(wire.embedding(utt, with_audio=self.forward_audio)):
                self.sender.drop(utt.station, "queue_full")

    def _report(self) -> None:
        if self.observed is not None:
            self.sender.observations.extend(self.observed.take())
        self.sender.gauges["encode_pending"] = len(self.pending)
        self.sender.tick()
