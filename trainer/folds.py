"""Leave-one-session-out folds and their class counts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Fold:
    session: str          # the held-out session
    train: np.ndarray     # utterance indices
    test: np.ndarray


def leave_one_session_out(sessions: Sequence[str]) -> list[Fold]:
    """One fold per session (sorted by name), given each utterance's session."""
    sessions = np.asarray(sessions)
    names = sorted(set(sessions.tolist()))
    if len(names) < 2:
        raise ValueError(f"leave-one-session-out needs at least 2 sessions, found {names}")
    return [Fold(session=s, train=np.flatnonzero(sessions != s),
                 test=np.flatnonzero(sessions == s)) for s in names]


def class_counts(labels: np.ndarray, indices: np.ndarray) -> tuple[int, int]:
    """(negatives, positives) among `indices`; excluded utterances count in neither."""
    picked = labels[indices]
    return int((picked == 0).sum()), int((picked == 1).sum())


def fold_table(folds: Sequence[Fold], labels: Mapping[str, np.ndarray]) -> str:
    """Markdown table: per held-out session, train and test counts (neg/pos) per emotion."""
    emotions = list(labels)
    header = "| held-out session | n train | n test | " + " | ".join(emotions) + " |"
    rule = "|---" * (3 + len(emotions)) + "|"
    rows = [header, rule]
    for fold in folds:
        cells = []
        for e in emotions:
            tr, te = class_counts(labels[e], fold.train), class_counts(labels[e], fold.test)
            cells.append(f"{tr[0]}/{tr[1]} · {te[0]}/{te[1]}")
        rows.append(f"| {fold.session} | {len(fold.train)} | {len(fold.test)} | "
                    + " | ".join(cells) + " |")
    rows.append("")
    rows.append("cells: train negatives/positives · test negatives/positives")
    return "\n".join(rows)
