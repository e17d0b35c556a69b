"""The live prompt bank: prompt files → cached pole vectors, reloaded when files change."""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from emoclap.prompts import Emotion, PromptError, emotion_name, parse_prompt_paths, prompt_files
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


class PromptBank:
    """Current emotions and their pole vectors; `.vectors` is an immutable snapshot, safe
    to read from any thread while a reload swaps in a new one."""

    def __init__(self, folder: str | Path, text_encoder, options: PromptBankOptions | None = None):
        self.folder = Path(folder)
        self.encoder = text_encoder
        self.bundle = text_encoder.bundle
        self.options = options or PromptBankOptions()
        self.cache = EmbeddingCache(self.options.cache)
        self._stamps: dict[str, tuple] = {}  # every file seen, used or refused
        self._owner: dict[str, str] = {}  # emotion name -> the file it came from
        self._emotions: dict[str, Emotion] = {}
        self._pole_vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._errors: dict[str, PromptError] = {}
        self._vectors = BankVectors.empty(self.bundle.embedding_dim)
        self._subscribers: list[Callable[[PromptUpdate], None]] = []
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_latency_s = 0.0
        if not self.folder.is_dir():
            raise PromptError("prompt folder does not exist", str(self.folder))
        self.reload()

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
        """Call `callback(update)` after every reload that changed something; returns an
        unsubscribe. Callbacks run on the watcher thread: an asyncio server should hand
        the update to its loop with `loop.call_soon_threadsafe`."""
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
        return emotion_poles(emotion, self.bundle.languages, self._embed_cached)

    def _embed_cached(self, texts: list[str]) -> np.ndarray:
        known = self.cache.get(self.bundle.hash, texts)
        missing = sorted({t for t in texts if t not in known})
        if missing:
            fresh = dict(zip(missing, self.encoder.embed(missing)))
            self.cache.put(self.bundle.hash, fresh)
            known.update(fresh)
        return np.stack([known[t] for t in texts])

    def reload(self) -> PromptUpdate | None:
        """Re-read files whose stamp changed; returns the update when anything changed."""
        with self._reload_lock:
            update = self._reload()
        if update is not None:
            for callback in list(self._subscribers):
                try:
                    callback(update)
                except Exception:  # a subscriber's bug must not stop reloading
                    log.exception("prompt subscriber failed")
        return update

    def _reload(self) -> PromptUpdate | None:
        started = time.monotonic()
        if not self.folder.is_dir():
            # A folder that vanished (unmounted, being replaced) is not "every file deleted".
            log.warning("%s: prompt folder is missing; keeping %d emotions", self.folder, len(self._emotions))
            return None
        stamps = self._scan()
        todo = {p for p, s in stamps.items() if self._stamps.get(p) != s}
        gone = [p for p in self._stamps if p not in stamps]
        if not todo and not gone:
            return None
        emotions, poles = dict(self._emotions), dict(self._pole_vectors)
        owner, errors = dict(self._owner), dict(self._errors)
        before = {p: str(e) for p, e in errors.items()}
        added, removed, changed = [], [], []
        for path in gone:
            del self._stamps[path]
            errors.pop(path, None)
            name = emotion_name(path)
            if owner.get(name) == path:
                del owner[name], emotions[name], poles[name]
                removed.append(name)
                # A file refused as a duplicate of this one may now be used.
                todo |= {p for p in errors if emotion_name(p) == name and p in stamps}
        for path in sorted(todo):
            self._stamps[path] = stamps[path]
            name = emotion_name(path)
            parsed, errs = parse_prompt_paths([Path(path)], self.bundle.languages)
            err = errs.get(path)
            if err is None and owner.get(name, path) != path:
                err = PromptError(f"duplicate emotion name {name!r} (also {owner[name]})", path)
            if err is None:
                try:
                    vectors = self._embed_poles(parsed[name])
                except Exception as exc:  # one failing file must not take the bank down
                    err = PromptError(f"cannot embed sentences: {exc}", path)
            if err is not None:
                errors[path] = err
                kept = owner.get(name) == path
                log.error("%s%s", err, "; the last good version stays in use" if kept else "")
                continue
            errors.pop(path, None)
            if emotions.get(name) != parsed[name]:  # a file saved unchanged is no news
                (changed if name in emotions else added).append(name)
            emotions[name], poles[name], owner[name] = parsed[name], vectors, path
        self._emotions, self._pole_vectors, self._owner, self._errors = emotions, poles, owner, errors
        after = {p: str(e) for p, e in errors.items()}
        if not (added or removed or changed) and after == before:
            return None
        self._vectors = self._build_vectors()
        latency = self.last_latency_s = time.monotonic() - started
        if added or removed or changed:
            log.info("prompts: %d emotions (added %s, removed %s, changed %s) in %.0f ms",
                     len(emotions), added, removed, changed, latency * 1000)
        return PromptUpdate(dict(emotions), self._vectors, after, tuple(added), tuple(removed),
                            tuple(changed), latency)

    def _build_vectors(self) -> BankVectors:
        return bank_vectors([self._emotions[n] for n in sorted(self._emotions)], self._pole_vectors,
                            self.bundle.logit_scale, self.bundle.embedding_dim)

    def start(self) -> "PromptBank":
        """Poll the folder in a background thread until `stop()`."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="emoclapd-prompts", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
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
