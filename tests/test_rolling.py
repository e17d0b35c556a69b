import pytest

from emoclap.rolling import RollingScores


def test_first_update_is_the_score():
    r = RollingScores(10.0)
    r.update("customer", 5.0, 2.0, {"pleasant": 0.8})
    assert r.snapshot() == {"customer": {"pleasant": {"score": 0.8, "count": 1, "updated": 5.0}}}


def test_duration_weighted_with_half_life_decay():
    r = RollingScores(10.0)
    r.update("customer", 0.0, 2.0, {"pleasant": 1.0})
    # 10 s later the old weight 2.0 has halved to 1.0; the new 3 s utterance weighs 3.0.
    r.update("customer", 10.0, 3.0, {"pleasant": 0.0})
    snap = r.snapshot()["customer"]["pleasant"]
    assert snap["score"] == pytest.approx(1.0 * 1.0 / (1.0 + 3.0))
    assert snap["count"] == 2 and snap["updated"] == 10.0
    # 20 s later the 4.0 of weight has fallen to 1.0; a 1 s utterance at 1.0 -> (0.25+1)/2
    r.update("customer", 30.0, 1.0, {"pleasant": 1.0})
    assert r.snapshot()["customer"]["pleasant"]["score"] == pytest.approx((0.25 * 1.0 + 1.0) / 2.0)


def test_same_time_updates_are_a_duration_weighted_mean():
    r = RollingScores(5.0)
    r.update("staff", 1.0, 1.0, {"a": 0.2})
    r.update("staff", 1.0, 3.0, {"a": 0.6})
    assert r.snapshot()["staff"]["a"]["score"] == pytest.approx((0.2 + 3 * 0.6) / 4)


def test_roles_and_emotions_are_separate_and_out_of_order_does_not_decay():
    r = RollingScores(1.0)
    r.update("customer", 10.0, 1.0, {"a": 1.0, "b": 0.0})
    r.update("staff", 11.0, 1.0, {"a": 0.0})
    r.update("customer", 9.0, 1.0, {"a": 0.0})  # late arrival: no decay, time kept at 10
    snap = r.snapshot()
    assert snap["customer"]["a"]["score"] == pytest.approx(0.5)
    assert snap["customer"]["a"]["updated"] == 10.0
    assert snap["customer"]["b"]["count"] == 1
    assert snap["staff"]["a"] == {"score": 0.0, "count": 1, "updated": 11.0}
    r.forget("a")
    assert set(r.snapshot()["customer"]) == {"b"}


def test_half_life_must_be_positive():
    with pytest.raises(ValueError):
        RollingScores(0)
