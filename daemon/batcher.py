"""Groups utterances from many stations into encoder batches (thread adapter).

With an encoder that reads words, the batcher is a two-stage pipeline: one thread runs
the audio tower over a batch and hands it to a second that reads the words (the
transcriber's decode, memory-bound, one step at a time). An utterance that closes while
another's words are being read is encoded meanwhile, and its words join the decode at
the next step: every utterance being read shares each step, and each is answered as
soon as its own words are read.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("emoclapd.batcher")


@dataclass
class BatcherOptions:
    max_batch: int = 16       # utterances per encoder call
    max_wait_ms: float = 0.0  # how long the first request of a batch waits for company


@dataclass
class _Utterance:
    audio: np.ndarray
    station: str
    future: Future
    read_words: bool
    known: dict = field(default_factory=dict)  # piece index -> Future of its moments, encoded ahead


@dataclass
class _Piece:
    audio: np.ndarray
    offset: int
    future: Future


def finished(known: dict) -> dict:
    """The pieces among `known` whose encoding succeeded (a piece that failed is encoded again)."""
    return {k: f.result() for k, f in known.items() if f.done() and not f.cancelled() and f.exception() is None}


class Batcher:
    """`submit()` from any thread; one worker thread calls `encoder.encode` on groups.

    Futures resolve to the embedding, or None when the utterance was too short to embed.
    An encoder failure fails only the futures of that batch; the worker keeps running.
    """

    def __init__(self, encoder, options: BatcherOptions | None = None):
        self.encoder = encoder
        self.options = options or BatcherOptions()
        if self.options.max_batch < 1 or self.options.max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self.batches = 0
        self.utterances = 0
        self.failures = 0
        self.pieces = 0  # pieces encoded ahead
        self.reads_words = bool(getattr(encoder, "reads_words", False))
        self._words: queue.Queue = queue.Queue()  # encoded batches whose words are to be read
        self._worker = threading.Thread(target=self._loop, name="emoclapd-batcher", daemon=True)
        self._reader = (threading.Thread(target=self._read_loop, name="emoclapd-words", daemon=True)
                        if self.reads_words else None)
        self._worker.start()
        if self._reader is not None:
            self._reader.start()

    def submit(self, audio: np.ndarray, station: str = "", read_words: bool = True,
               known: dict[int, Future] | None = None) -> Future:
        """`read_words` False: the audio path alone, even where the encoder reads words
        (an utterance too poor to count is not worth its transcript). `known`: its pieces
        submitted ahead (`submit_piece`); they are queued before it, so they are encoded by
        the time it is, and it is encoded from them."""
        future: Future = Future()
        if self._closed:
            future.set_exception(RuntimeError("batcher is closed"))
            return future
        self._queue.put(_Utterance(np.asarray(audio, np.float32).reshape(-1), station, future, read_words,
                                   dict(known or {})))
        return future

    def submit_piece(self, audio: np.ndarray, offset: int) -> Future:
        """A piece of an utterance still being spoken (a bundle encoded in pieces) → a Future
        of its moments (`encoder.encode_pieces`)."""
        future: Future = Future()
        if self._closed:
            future.set_exception(RuntimeError("batcher is closed"))
            return future
        self._queue.put(_Piece(np.asarray(audio, np.float32).reshape(-1), int(offset), future))
        return future

    def close(self, timeout: float = 5.0) -> None:
        """Finish what was submitted, then stop the workers."""
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout)
        if self._reader is not None:
            self._reader.join(timeout)

    def _collect(self, first) -> list:
        batch = [first]
        deadline = time.monotonic() + self.options.max_wait_ms / 1000.0
        while len(batch) < self.options.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # seen again by the loop, after this batch
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        try:
            while (first := self._queue.get()) is not None:
                self._encode(self._collect(first))
        finally:
            self._words.put(None)

    def _encode(self, batch: list) -> None:
        # Pieces first: an utterance in the same batch may be made of them.
        self._encode_pieces([item for item in batch if isinstance(item, _Piece)
                             and item.future.set_running_or_notify_cancel()])
        live = [item for item in batch if isinstance(item, _Utterance) and item.future.set_running_or_notify_cancel()]
        if not live:
            return
        audios = [item.audio for item in live]
        ahead = {"known": [finished(item.known) for item in live]} if any(item.known for item in live) else {}
        try:
            if self.reads_words:
                results = self.encoder.encode(audios, words=[item.read_words for item in live], defer_words=True,
                                              **ahead)
            else:
                results = self.encoder.encode(audios, **ahead)
        except Exception as exc:  # one bad batch must not stop the daemon
            self._fail(live, exc)
            return
        self.batches += 1
        if self.reads_words:
            self._words.put((live, results))
        else:
            self._resolve(live, results)

    def _read_loop(self) -> None:
        reading: dict[int, _Utterance] = {}  # id(reading) -> its utterance
        closing = False
        while True:
            # Block only with nothing to decode; else take what waits and step on.
            arrived = self._take_words(block=not (reading or closing))
            closing = closing or None in arrived
            for live, results in (a for a in arrived if a is not None):
                self._start_words(live, results, reading)
            if not reading:
                if closing:
                    return
                continue
            try:
                done = self.encoder.step_words()
            except Exception as exc:  # noqa: BLE001 - a broken step fails the utterances in it only
                failed = getattr(exc, "readings", None)
                keys = [id(r) for r in failed] if failed is not None else list(reading)
                self._fail([reading.pop(k) for k in keys if k in reading], getattr(exc, "cause", exc))
                continue
            for r in done:
                item = reading.pop(id(r))
                self._resolve([item], [r])

    def _take_words(self, block: bool) -> list:
        arrived = []
        try:
            arrived.append(self._words.get() if block else self._words.get_nowait())
            while True:
                arrived.append(self._words.get_nowait())
        except queue.Empty:
            pass
        return arrived

    def _start_words(self, live: list, results: list, reading: dict) -> None:
        """Answer the utterances with no words to read; start reading the others'."""
        ready = [(item, r) for item, r in zip(live, results) if r is None or not r.unread]
        self._resolve([item for item, _ in ready], [r for _, r in ready])
        todo = [(item, r) for item, r in zip(live, results) if r is not None and r.unread]
        if not todo:
            return
        reading.update((id(r), item) for item, r in todo)
        try:
            done = self.encoder.start_words([r for _, r in todo])
        except Exception as exc:  # noqa: BLE001 - their first step failed; the others go on
            keys = [id(r) for r in getattr(exc, "readings", [r for _, r in todo])]
            self._fail([reading.pop(k) for k in keys if k in reading], getattr(exc, "cause", exc))
            return
        for r in done:
            self._resolve([reading.pop(id(r))], [r])

    def _encode_pieces(self, items: list[_Piece]) -> None:
        if not items:
            return
        try:
            results = self.encoder.encode_pieces([(item.audio, item.offset) for item in items])
        except Exception as exc:  # noqa: BLE001 - their utterances are then encoded whole
            log.warning("encoder failed on %d piece(s) encoded ahead: %s", len(items), exc)
            for item in items:
                item.future.set_exception(exc)
            return
        self.pieces += len(items)
        for item, result in zip(items, results):
            item.future.set_result(result)

    def _fail(self, live: list, exc: Exception) -> None:
        self.failures += 1
        if getattr(exc, "reported", False):  # e.g. Triton down: logged once, where it arose
            log.debug("encoder failed on a batch of %d: %s", len(live), exc)
        else:
            log.error("encoder failed on a batch of %d", len(live), exc_info=exc)
        for item in live:
            item.future.set_exception(exc)

    def _resolve(self, live: list, results: list) -> None:
        self.utterances += len(live)
        for item, result in zip(live, results):
            item.future.set_result(result)
