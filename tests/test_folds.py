import numpy as np
import pytest

from trainer.folds import class_counts, fold_table, leave_one_session_out
from trainer.runs import RunError, fold_plan


def test_each_session_is_held_out_once():
    folds = leave_one_session_out(["b", "a", "b", "c", "a"])
    assert [f.session for f in folds] == ["a", "b", "c"]
    assert folds[0].test.tolist() == [1, 4]
    assert folds[0].train.tolist() == [0, 2, 3]
    for f in folds:
        assert sorted(f.train.tolist() + f.test.tolist()) == list(range(5))


def test_one_session_is_not_enough():
    with pytest.raises(ValueError, match="at least 2 sessions"):
        leave_one_session_out(["a", "a"])


def test_fold_plan_is_leave_one_session_out_for_the_command_line():
    sessions = ["a", "b", "a", "c"]
    plan = fold_plan(sessions, "all")
    assert [(s, idx.tolist()) for s, idx in plan] == [(f.session, f.train.tolist())
                                                      for f in leave_one_session_out(sessions)]
    assert [(s, idx.tolist()) for s, idx in fold_plan(sessions, "b")] == [("b", [0, 2, 3])]
    assert fold_plan(["a", "b"], "none")[0][0] is None
    assert fold_plan(["a", "b"], "none")[0][1].tolist() == [0, 1]
    with pytest.raises(RunError, match="--fold z: no such session \\(have a, b\\)"):
        fold_plan(["a", "b"], "z")
    with pytest.raises(RunError, match="--fold all: .*at least 2 sessions"):
        fold_plan(["a", "a"], "all")


def test_class_counts_skip_excluded():
    labels = np.array([0, 1, -1, 1, 0])
    folds = leave_one_session_out(["a", "a", "a", "b", "b"])
    assert class_counts(labels, folds[0].test) == (1, 1)
    assert class_counts(labels, folds[0].train) == (1, 1)
    table = fold_table(folds, {"pleasant": labels})
    assert "| a | 2 | 3 | 1/1 · 1/1 |" in table
