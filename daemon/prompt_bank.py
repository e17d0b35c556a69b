"""The live prompt bank: prompt files → cached pole vectors, reloaded when files change."""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from emoclap.prompts import MAX_FILES, Emotion, PromptError, emotion_name, parse_prompt_paths, prompt_files
from emoclap.zeroshot import BankVectors, bank_vectors, emotion_poles

log = logging.getLogger("emoclapd.prompts")


class EmbeddingCache:
    """Sentence embeddings on disk (SQLite), keyed by bundle hash and exact sentence text."""

    def __init__(self, path: str | Path | None):
        self.path = str(path) if path else ":memory:"
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS text_embedding (bundle TEXT, text TEXT, "
                             "vector BLOB, PRIMARY KEY (bundle, text))")

    def get(self, bundle: str, texts: list[str]) -> dict[str, np.ndarray]:
        found = {}
        with self._lock:
            for text in set(texts):
                row = self._db.execute("SELECT vector FROM text_embedding WHERE bundle=? AND text=?",
                                       (bundle, text)).fetchone()
                if row:
                    found[text] = np.frombuffer(row[0], np.float32).copy()
        return found

    def put(self, bundle: str, vectors: dict[str, np.ndarray]) -> None:
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO text_embedding VALUES (?, ?, ?)",
                                 [(bundle, t, np.asarray(v, np.float32).tobytes()) for t, v in vectors.items()])

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class PromptUpdate:
    """What subscribers get after a reload that changed the emotion set or its errors."""
    emotions: dict[str, Emotion]
    vectors: BankVectors
    errors: dict[str, str]  # file → message, for files not (or no longer) in use as written
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    latency_s: float = 0.0  # from noticing the change to the new vectors being in use


@dataclass
class PromptBankOptions:
    poll_s: float = 0.5
    cache: str | None = None  # SQLite file; None keeps embeddings in memory only


class PromptBankStopped(Exception):
    """Embedding was cut short because the bank is stopping."""


class PromptBank:
    """Current emotions and their pole vectors; `.vectors` is an immutable snapshot, safe
    to read from any thread while a reload swaps in a new one.

    A reload parses and embeds each changed file outside the state lock and then applies
    it in one short step, so a large file never holds up another file's edit or a reader,
    and a file is either in use as written or reported with its error, never half-applied.
    """

    EMBED_BATCH = 32  # sentences per encoder call; `stop()` takes effect between calls

    def __init__(self, folder: str | Path, text_encoder, options: PromptBankOptions | None = None):
        self.folder = Path(folder)
        self.encoder = text_encoder
        self.bundle = text_encoder.bundle
        self.options = options or PromptBankOptions()
        self.cache = EmbeddingCache(self.options.cache)
        self._stamps: dict[str, tuple] = {}  # every file applied, used or refused
        self._busy: set[str] = set()  # files being parsed and embedded right now
        self._over_limit: set[str] = set()  # files refused for MAX_FILES, read again when room frees
        self._owner: dict[str, str] = {}  # emotion name -> the file it came from
        self._emotions: dict[str, Emotion] = {}
        self._pole_vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._errors: dict[str, PromptError] = {}
        self._vectors = BankVectors.empty(self.bundle.embedding_dim)
        self._subscribers: list[Callable[[PromptUpdate], None]] = []
        self._lock = threading.Lock()  # the state above; held for bookkeeping only
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._folder_missing = False
        self.last_latency_s = 0.0
        if not self.folder.is_dir():
            raise PromptError("prompt folder does not exist", str(self.folder))
        self._loaded = False  # the first load is logged once, as a whole
        self.reload()
        self._loaded = True
        log.info("prompts: %d emotions from %s (%d files not in use) in %.0f ms", len(self._emotions),
                 self.folder, len(self._errors), self.last_latency_s * 1000)

    @property
    def vectors(self) -> BankVectors:
        return self._vectors

    @property
    def emotions(self) -> dict[str, Emotion]:
        return dict(self._emotions)

    @property
    def errors(self) -> dict[str, str]:
        return {path: str(err) for path, err in self._errors.items()}

    def subscribe(self, callback: Callable[[PromptUpdate], None]) -> Callable[[], None]:
        """Call `callback(update)` after every reload step that changed something; returns
        an unsubscribe. Callbacks run on the reloading thread: an asyncio server should
        hand the update to its loop with `loop.call_soon_threadsafe`."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def _scan(self) -> dict[str, tuple]:
        stamps = {}
        for path in prompt_files(self.folder):
            try:
                st = path.stat()
            except OSError:
                continue
            stamps[str(path)] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return stamps

    def _embed_poles(self, emotion: Emotion) -> tuple[np.ndarray, np.ndarray]:
        return emotion_poles(emotion, self.bundle.languages, self._embed_cached, self.bundle.embedding_dim)

    def _embed_cached(self, texts: list[str]) -> np.ndarray:
        known = self.cache.get(self.bundle.hash, texts)
        missing = sorted({t for t in texts if t not in known})
        for start in range(0, len(missing), self.EMBED_BATCH):
            if self._stop.is_set():
                raise PromptBankStopped()
            batch = missing[start:start + self.EMBED_BATCH]
            # Both spaces side by side where the text tower has its own (daemon.encoder.TextEncoder).
            both = getattr(self.encoder, "has_sentence", False)
            fresh = dict(zip(batch, self.encoder.embed(batch, with_sentence=True) if both else self.encoder.embed(batch)))
            self.cache.put(self.bundle.hash, fresh)
            known.update(fresh)
        return np.stack([known[t] for t in texts])

    def reload(self) -> PromptUpdate | None:
        """Re-read files whose stamp changed; subscribers hear of each file as it is
        applied. Returns what changed in all (None: nothing)."""
        started = time.monotonic()
        if not self.folder.is_dir():
            # A folder that vanished (unmounted, being replaced) is not "every file deleted".
            if not self._folder_missing:
                log.warning("%s: prompt folder is missing; keeping %d emotions", self.folder,
                            len(self._emotions))
            self._folder_missing = True
            return None
        if self._folder_missing:
            log.info("%s: prompt folder is back", self.folder)
        self._folder_missing = False
        stamps = self._scan()
        with self._lock:  # files in use keep their places under the limit; new ones queue behind
            in_use = set(self._owner.values())
        order = {path: i for i, path in enumerate(sorted(stamps, key=lambda p: p not in in_use))}
        # Each step's update goes to the subscribers as it is applied, and only a summary is
        # kept: every update holds a snapshot of all the pole vectors, so keeping each of
        # hundreds of files' updates held hundreds of megabytes until the pass ended.
        summary = {"added": (), "removed": (), "changed": ()}
        last = None

        def applied(update):
            nonlocal last
            if update is not None:
                self._notify(update)
                for key in summary:
                    summary[key] += getattr(update, key)
                last = update
        with self._lock:
            gone = [p for p in self._stamps if p not in stamps]
        if gone:
            applied(self._apply_removals(gone, stamps, started))
        with self._lock:
            todo = sorted(p for p, st in stamps.items()
                          if self._stamps.get(p) != st and p not in self._busy)
            self._busy.update(todo)
        # Smaller files first: a large file does not delay the others.
        for path in sorted(todo, key=lambda p: stamps[p][1]):
            try:
                emotion, poles, err = self._prepare(path, order[path])
            except PromptBankStopped:
                with self._lock:
                    self._busy.discard(path)
                break
            applied(self._apply(path, stamps[path], emotion, poles, err, started))
        with self._lock:
            self._busy.difference_update(todo)
        return None if last is None else replace(last, **summary)

    def _prepare(self, path: str, number: int):
        """Parse and embed one file (slow, no lock held): (emotion, poles, error)."""
        name = emotion_name(path)
        if number >= MAX_FILES:
            self._over_limit.add(path)
            return None, None, PromptError(f"not read: more than {MAX_FILES} prompt files in the folder", path)
        self._over_limit.discard(path)
        parsed, errs = parse_prompt_paths([Path(path)], self.bundle.languages)
        if path in errs:
            return None, None, errs[path]
        try:
            return parsed[name], self._embed_poles(parsed[name]), None
        except PromptBankStopped:
            raise
        except Exception as exc:  # noqa: BLE001 - one failing file must not take the bank down
            return None, None, PromptError(f"cannot embed sentences: {exc}", path)

    def _apply(self, path, stamp, emotion, poles, err, started) -> PromptUpdate | None:
        """Put one prepared file in use, or record its error (the last good version of
        its emotion stays in use)."""
        name = emotion_name(path)
        with self._lock:
            before = self._error_texts()
            self._stamps[path] = stamp
            if err is None and self._owner.get(name, path) != path:
                err = PromptError(f"duplicate emotion name {name!r} (also {self._owner[name]})", path)
            added, changed = [], []
            if err is not None:
                self._errors[path] = err
                kept = self._owner.get(name) == path
                # The text itself as the message: the log's repeat filter keys on it, and
                # each file's error is news of its own.
                log.error(f"{err}{'; the last good version stays in use' if kept else ''}")
            else:
                self._errors.pop(path, None)
                if self._emotions.get(name) != emotion:  # a file saved unchanged is no news
                    (changed if name in self._emotions else added).append(name)
                self._emotions[name], self._pole_vectors[name], self._owner[name] = emotion, poles, path
            return self._commit(before, added, [], changed, started)

    def _apply_removals(self, gone: list[str], stamps: dict, started) -> PromptUpdate | None:
        with self._lock:
            before = self._error_texts()
            removed = []
            for path in gone:
                del self._stamps[path]
                self._over_limit.discard(path)
                self._errors.pop(path, None)
                name = emotion_name(path)
                if self._owner.get(name) == path:
                    del self._owner[name], self._emotions[name], self._pole_vectors[name]
                    removed.append(name)
                    # A place under the file limit is free: files refused for the limit are read again.
                    for other in [p for p in self._over_limit if p in stamps]:
                        self._stamps.pop(other, None)
                    # A file refused as a duplicate of this one may now be used: read it again.
                    for other in [p for p in self._errors if emotion_name(p) == name and p in stamps]:
                        self._stamps.pop(other, None)
            return self._commit(before, [], removed, [], started)

    def _error_texts(self) -> dict[str, str]:
        return {p: str(e) for p, e in self._errors.items()}

    def _commit(self, before, added, removed, changed, started) -> PromptUpdate | None:
        """Called with the lock held: swap in new vectors when anything changed."""
        after = self._error_texts()
        if not (added or removed or changed) and after == before:
            return None
        self._vectors = bank_vectors([self._emotions[n] for n in sorted(self._emotions)],
                                     self._pole_vectors, self.bundle.logit_scale, self.bundle.embedding_dim)
        latency = self.last_latency_s = time.monotonic() - started
        if (added or removed or changed) and self._loaded:
            log.info("prompts: %d emotions (added %s, removed %s, changed %s) in %.0f ms",
                     len(self._emotions), added, removed, changed, latency * 1000)
        return PromptUpdate(dict(self._emotions), self._vectors, after, tuple(added), tuple(removed),
                            tuple(changed), latency)

    def _notify(self, update: PromptUpdate) -> None:
        for callback in list(self._subscribers):
            try:
                callback(update)
            except Exception:  # a subscriber's bug must not stop reloading
                log.exception("prompt subscriber failed")

    def start(self) -> "PromptBank":
        """Poll the folder in a background thread until `stop()`."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="emoclapd-prompts", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop watching; an embedding in progress ends after its current encoder call."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("prompt watcher did not stop within %.0f s", timeout)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.options.poll_s):
            try:
                self.reload()
            except Exception:  # keep watching whatever happens to one reload
                log.exception("prompt reload failed")

    def close(self) -> None:
        self.stop()
        self.cache.close()
