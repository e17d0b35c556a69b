"""What every training or evaluation run shares: seeding, the corpus, folds, validation
split, command-line overrides, and the errors that stop a run before it starts.

Importing it costs no torch: every `emoclap-train` command loads it for `RunError`."""
from __future__ import annotations

import ast
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from trainer.folds import leave_one_session_out
from trainer.metrics import unweighted_accuracy

if TYPE_CHECKING:
    from trainer.loop import Corpus


class RunError(ValueError):
    """A run that cannot start: a bad --fold or --set, a run folder or prompt set without
    what it needs. `emoclap-train` reports it and exits with status 2."""


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_corpus(manifest: Path, emotions: list[str], normalisation: str = "pooled") -> Corpus:
    """Utterances of a manifest with binary labels per emotion (-1: excluded or unrated)."""
    from trainer.labels import binary_labels
    from trainer.loop import Corpus
    from trainer.manifest import load_manifest

    utts = load_manifest(manifest)
    labels = binary_labels(utts, emotions, normalisation=normalisation)
    matrix = np.stack([np.asarray(labels[e], dtype=np.int64) for e in emotions], axis=1)
    return Corpus([u.audio for u in utts], matrix, [u.session for u in utts], list(emotions),
                  [u.role for u in utts], [u.transcript or "" for u in utts])


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices; validation empty when it would hold fewer than 4 clips."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * fraction))
    return (np.sort(perm), perm[:0]) if k < 4 else (np.sort(perm[k:]), np.sort(perm[:k]))


def fold_plan(sessions: list[str], fold: str) -> list[tuple[str | None, np.ndarray]]:
    """[(held-out session or None, train indices)] for --fold SESSION | all | none."""
    if fold == "none":
        return [(None, np.arange(len(sessions)))]
    names = sorted(set(sessions))
    if fold != "all" and fold not in names:
        raise RunError(f"--fold {fold}: no such session (have {', '.join(names)})")
    try:
        folds = leave_one_session_out(sessions)
    except ValueError as exc:
        raise RunError(f"--fold {fold}: {exc}") from None
    return [(f.session, f.train) for f in folds if fold in ("all", f.session)]


def train_folds(corpus: Corpus, fold: str, out: Path, what: str,
                fit: Callable[[Corpus, Path, str | None], dict]) -> dict:
    """One model per fold of --fold, `fit(train corpus, out/fold-SESSION or out/all,
    held-out session)`; returns each fold's summary (epochs, best epoch and UA, time)."""
    results = {}
    for session, idx in fold_plan(corpus.sessions, fold):
        name = f"fold-{session}" if session else "all"
        print(f"{name}: training {what} on {len(idx)} utterances", file=sys.stderr)
        summary = fit(corpus.subset(idx), Path(out) / name, session)
        results[name] = {k: summary[k] for k in ("epochs_run", "best_epoch", "best_val_ua", "wall_s")}
    return results


def parse_overrides(items: list[str] | None) -> dict:
    """--set KEY=VALUE items → {KEY: value}; values read as Python literals when they are one."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise RunError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def mean_ua(labels: np.ndarray, probs: np.ndarray) -> float:
    """Unweighted accuracy at 0.5, averaged over the emotions that have both classes."""
    uas = [unweighted_accuracy(labels[:, k], (probs[:, k] >= 0.5).astype(int)) for k in range(labels.shape[1])]
    uas = [u for u in uas if not np.isnan(u)]
    return float(np.mean(uas)) if uas else float("nan")
