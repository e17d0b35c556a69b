import numpy as np
import pytest

from trainer.folds import class_counts, fold_table, leave_one_session_out, select_fold
from trainer.manifest import Utterance


def corpus(sessions):
    return [Utterance(audio=None, session=s, speaker="x", role="customer", ratings={})
            for s in sessions]


def test_each_session_is_held_out_once():
    data = corpus(["b", "a", "b", "c", "a"])
    folds = leave_one_session_out(data)
    assert [f.session for f in folds] == ["a", "b", "c"]
    assert select_fold(folds, "a").test.tolist() == [1, 4]
    assert select_fold(folds, "a").train.tolist() == [0, 2, 3]
    for f in folds:
        assert sorted(f.train.tolist() + f.test.tolist()) == list(range(5))


def test_one_session_is_not_enough_and_unknown_session_is_named():
    with pytest.raises(ValueError, match="at least 2 sessions"):
        leave_one_session_out(corpus(["a", "a"]))
    with pytest.raises(ValueError, match="no session 'z'; sessions: a, b"):
        select_fold(leave_one_session_out(corpus(["a", "b"])), "z")


def test_class_counts_skip_excluded():
    labels = np.array([0, 1, -1, 1, 0])
    folds = leave_one_session_out(corpus(["a", "a", "a", "b", "b"]))
    assert class_counts(labels, folds[0].test) == (1, 1)
    assert class_counts(labels, folds[0].train) == (1, 1)
    table = fold_table(folds, {"pleasant": labels})
    assert "| a | 2 | 3 | 1/1 · 1/1 |" in table
