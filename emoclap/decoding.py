"""Greedy decoding of many utterances' transcripts at once, rows joining and leaving
between steps (continuous batching).

A decode step reads all of the decoder's weights whatever the batch (on a CPU it is
memory-bound: the vocabulary projection alone is 26-106 MB a step), so every utterance
waiting for its words should share each step. An utterance whose audio pass ends while
others are being decoded joins them at the next step instead of waiting for them to
finish, and a row that is done leaves at once.

Sans-I/O: `Decoding` drives two callables, `cross(frames) -> (cross_k, cross_v)` and
`step(feeds) -> (logits, next_k, next_v)`: the bundle's ONNX graphs in the daemon, torch
in the export check. Each row sits at its own position: its next token's position is fed
(`positions`) and the cache columns it has no token in are masked (`past_mask`). That is
exact because Whisper's positions are learned vectors added to the tokens, so attention
does not depend on the order of the cache's columns. A transcriber exported before its
step graph took those two inputs decodes only rows that started together (`joins` False):
newcomers wait until the batch is empty.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable

import numpy as np

from emoclap.transcript import DecodingSpec, loop_start, pad_frames

Cross = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
Step = Callable[[dict], tuple[np.ndarray, np.ndarray, np.ndarray]]
# The step graph's inputs, in its order; an older graph lacks positions and past_mask.
STEP_INPUTS = ("tokens", "positions", "past_mask", "frame_mask", "past_k", "past_v", "cross_k", "cross_v")


@dataclass
class _Row:
    key: Hashable
    budget: int
    tokens: list[int] = field(default_factory=list)

    def take(self, token: int, eot: int) -> bool:
        """Append the chosen token; True when the row is done (its end, a loop, its budget)."""
        if token == eot:
            return True
        self.tokens.append(token)
        cut = loop_start(self.tokens)
        if cut is not None:
            del self.tokens[cut:]
            return True
        return len(self.tokens) >= self.budget


def choose(logits: np.ndarray, spec: DecodingSpec, first: bool) -> np.ndarray:
    """Each row's greedy token: never a special id, and on the first step never the end
    or a blank (Whisper's suppress_blank)."""
    logits = np.array(logits, np.float32, copy=True)
    logits[:, spec.eot + 1:] = -np.inf
    if first:
        logits[:, [spec.eot, *spec.blank]] = -np.inf
    return logits.argmax(axis=1)


# The live batch: row-aligned arrays. k, v: [layers, B, heads, P, head_dim]; past_mask [B, P];
# positions [B]; tokens [B] (each row's next input); cross_k, cross_v [layers, B, heads, F, head_dim];
# frame_mask [B, F].
_BATCH_AXIS = {"k": 1, "v": 1, "cross_k": 1, "cross_v": 1, "past_mask": 0, "positions": 0, "tokens": 0,
               "frame_mask": 0}
_PAD_AXIS = {"k": 3, "v": 3, "past_mask": 1, "cross_k": 3, "cross_v": 3, "frame_mask": 1}


def _pad(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    if a.shape[axis] == size:
        return a
    width = [(0, 0)] * a.ndim
    width[axis] = (0, size - a.shape[axis])
    return np.pad(a, width)


def _merge(a: dict, b: dict) -> dict:
    """Two live batches as one: caches and frames zero-padded (and masked) to the longer."""
    out = {}
    for name, axis in _BATCH_AXIS.items():
        x, y = a[name], b[name]
        if name in _PAD_AXIS:
            size = max(x.shape[_PAD_AXIS[name]], y.shape[_PAD_AXIS[name]])
            x, y = _pad(x, _PAD_AXIS[name], size), _pad(y, _PAD_AXIS[name], size)
        out[name] = np.concatenate([x, y], axis=axis)
    return out


def _keep(batch: dict, rows: np.ndarray) -> dict:
    """Only `rows`, and only the cache columns and frames some remaining row still uses."""
    out = {name: np.take(batch[name], rows, axis=axis) for name, axis in _BATCH_AXIS.items()}
    used = np.flatnonzero(out["past_mask"].any(axis=0))
    if used.size < out["past_mask"].shape[1]:
        for name in ("k", "v", "past_mask"):
            out[name] = np.take(out[name], used, axis=_PAD_AXIS[name])
    frames = int(np.flatnonzero(out["frame_mask"].any(axis=0)).max(initial=-1)) + 1  # frames are left-aligned
    if frames < out["frame_mask"].shape[1]:
        for name in ("cross_k", "cross_v", "frame_mask"):
            out[name] = np.take(out[name], np.arange(frames), axis=_PAD_AXIS[name])
    return out


class Decoding:
    """The rows being decoded. `admit` adds utterances (their prompt step runs at once),
    `step` gives every row one token; both return the rows that finished, as
    (key, text tokens) with the prompt and <|endoftext|> left out."""

    def __init__(self, spec: DecodingSpec, cross: Cross, step: Step, joins: bool = True):
        self.spec, self._cross, self._step, self.joins = spec, cross, step, joins
        self._rows: list[_Row] = []
        self._batch: dict | None = None
        self.graph_runs = 0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def can_admit(self) -> bool:
        return self.joins or not self._rows

    def admit(self, keys: list[Hashable], frames: list[np.ndarray], budgets: list[int]) -> list[tuple]:
        """Start decoding utterances whose valid frames are `frames[i]` [T_i, D]."""
        if not keys:
            return []
        if not self.can_admit:
            raise RuntimeError("this transcriber's step graph cannot take rows into a running batch")
        logits, batch = self._prompt(frames)
        batch_rows = [_Row(k, int(b)) for k, b in zip(keys, budgets)]
        return self._advance(batch_rows, batch, choose(logits, self.spec, first=True), incoming=True)

    def first_logits(self, frames: list[np.ndarray]) -> np.ndarray:
        """The prompt step's logits [n, V] for utterances, admitting none (for parity checks)."""
        return self._prompt(frames)[0]

    def _prompt(self, frames: list[np.ndarray]) -> tuple[np.ndarray, dict]:
        spec, n = self.spec, len(frames)
        padded, valid = pad_frames(frames)
        cross_k, cross_v = self._cross(padded)
        prompt = np.tile(np.asarray(spec.prompt, np.int64), (n, 1))
        empty = np.zeros((spec.layers, n, spec.heads, 0, spec.head_dim), np.float32)
        batch = {"past_mask": np.zeros((n, 0), np.float32), "positions": np.zeros(n, np.int64),
                 "k": empty, "v": empty, "cross_k": cross_k, "cross_v": cross_v, "frame_mask": valid}
        logits, batch["k"], batch["v"] = self._run(prompt, batch)
        batch["past_mask"] = np.ones((n, prompt.shape[1]), np.float32)
        batch["positions"] = np.full(n, prompt.shape[1], np.int64)
        return logits, batch

    def step(self) -> list[tuple]:
        """One more token for every row."""
        if not self._rows:
            return []
        batch = self._batch
        logits, k, v = self._run(batch["tokens"][:, None], batch)
        batch = {**batch, "k": k, "v": v,
                 "past_mask": np.concatenate([batch["past_mask"], np.ones((len(self._rows), 1), np.float32)], 1),
                 "positions": batch["positions"] + 1}
        rows, self._rows, self._batch = self._rows, [], None
        return self._advance(rows, batch, choose(logits, self.spec, first=False), incoming=False)

    def drop(self) -> list[Hashable]:
        """Forget every row (after a failed step); returns their keys."""
        keys = [r.key for r in self._rows]
        self._rows, self._batch = [], None
        return keys

    def decode(self, frames: list[np.ndarray], budgets: list[int]) -> list[list[int]]:
        """Every utterance to its end (the offline reader's and the export check's way)."""
        if self._rows:
            raise RuntimeError("decode() needs an idle Decoding")
        out = dict(self.admit(list(range(len(frames))), frames, budgets))
        while self._rows:
            out.update(self.step())
        return [out[i] for i in range(len(frames))]

    def _run(self, tokens: np.ndarray, batch: dict):
        feeds = {"tokens": tokens, "frame_mask": batch["frame_mask"], "past_k": batch["k"], "past_v": batch["v"],
                 "cross_k": batch["cross_k"], "cross_v": batch["cross_v"]}
        if self.joins:
            feeds.update(positions=batch["positions"], past_mask=batch["past_mask"])
        self.graph_runs += 1
        return self._step(feeds)

    def _advance(self, rows: list[_Row], batch: dict, chosen: np.ndarray, incoming: bool) -> list[tuple]:
        finished, live = [], []
        for i, (row, token) in enumerate(zip(rows, chosen)):
            if row.take(int(token), self.spec.eot):
                finished.append((row.key, row.tokens))
            else:
                live.append(i)
        if live:
            batch = {**batch, "tokens": chosen.astype(np.int64)}
            if len(live) < len(rows):
                batch = _keep(batch, np.asarray(live))
            kept = [rows[i] for i in live]
            if incoming and self._batch is not None:
                self._batch, self._rows = _merge(self._batch, batch), self._rows + kept
            else:
                self._batch, self._rows = batch, kept
        return finished


def session_decoding(cross, step, spec: DecodingSpec) -> Decoding:
    """A `Decoding` over the bundle's two transcriber graphs: anything with ONNX Runtime's
    `run(outputs, feeds)` and `get_inputs()` (the daemon's sessions, calibration's)."""
    joins = {"positions", "past_mask"} <= {i.name for i in step.get_inputs()}

    def cross_run(frames):
        cross_k, cross_v = cross.run(None, {"frames": np.asarray(frames, np.float32)})
        return cross_k, cross_v

    def step_run(feeds):
        logits, k, v = step.run(None, feeds)
        return logits, k, v
    return Decoding(spec, cross_run, step_run, joins=joins)
