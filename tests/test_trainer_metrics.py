import numpy as np
import pytest

from trainer.metrics import (random_guess, recalls, sign_test, summary, unweighted_accuracy,
                             weighted_accuracy, youden_threshold)


def test_wa_ua_and_recalls_by_hand():
    y = np.array([1, 1, 1, 1, 0, 0, -1])
    pred = np.array([1, 1, 1, 0, 1, 0, 0])
    assert weighted_accuracy(y, pred) == pytest.approx(4 / 6)
    assert recalls(y, pred) == {0: 0.5, 1: 0.75}
    assert unweighted_accuracy(y, pred) == pytest.approx(0.625)
    s = summary(y, pred)
    assert s["n"] == 6 and s["recall_1"] == 0.75


def test_youden_threshold_separates_a_separable_score():
    y = np.array([0, 0, 0, 1, 1, 1])
    score = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    t = youden_threshold(y, score)
    assert 0.35 < t <= 0.4
    assert np.all((score >= t) == (y == 1))


def test_sign_test_counts_discordant_pairs_only():
    a = np.array([1] * 60, bool)
    b = np.array([0] * 10 + [1] * 50, bool)  # a right alone 10 times, both right 50 times
    r = sign_test(a, b)
    assert (r["a_only"], r["b_only"]) == (10, 0)
    assert r["p"] == pytest.approx(2 * 0.5 ** 10)
    assert sign_test(a, a)["p"] == 1.0


def test_random_row_is_near_chance():
    y = np.random.default_rng(1).integers(0, 2, 4000)
    assert abs(unweighted_accuracy(y, random_guess(y)) - 0.5) < 0.03
