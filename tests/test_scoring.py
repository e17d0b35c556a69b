import math

import numpy as np
import pytest

from emoclap.zeroshot import BankVectors, bipolar_scores, score_utterance


def bank(scale=(10.0, 20.0), bias=(0.0, 0.5), roles=(None, ("customer",))):
    neg = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    pos = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    return BankVectors(("pleasant", "purchase_intention"), neg, pos,
                       np.array(scale, np.float32), np.array(bias, np.float32), roles)


def test_hand_computed_softmax():
    a = np.array([0.6, 0.8, 0.0], np.float32)
    got = bipolar_scores(a[None], bank())
    # pleasant: s=10, a.n=0.6, a.p=0.8 -> softmax([6, 8])[1]
    want0 = math.exp(8) / (math.exp(6) + math.exp(8))
    # purchase: s=20, a.n=0.8, a.p=0.0, bias 0.5 -> softmax([16, 0.5])[1]
    want1 = math.exp(0.5) / (math.exp(16) + math.exp(0.5))
    assert got.shape == (1, 2)
    assert got[0, 0] == pytest.approx(want0, rel=1e-5)
    assert got[0, 1] == pytest.approx(want1, rel=1e-4)


def test_equal_similarity_is_half_and_bias_shifts_it():
    a = np.array([[0.0, 0.0, 1.0]], np.float32)
    b = bank(scale=(10.0, 10.0), bias=(0.0, 0.0))
    assert bipolar_scores(a, b)[0, 0] == pytest.approx(0.5)
    b = bank(scale=(10.0, 10.0), bias=(math.log(3), 0.0))
    assert bipolar_scores(a, b)[0, 0] == pytest.approx(0.75, abs=1e-6)


def test_extreme_logits_do_not_overflow():
    a = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    got = bipolar_scores(a, bank(scale=(5000.0, 5000.0)))
    assert np.all(np.isfinite(got))
    assert got[0, 0] == pytest.approx(1.0) and got[1, 0] == pytest.approx(0.0)


def test_roles_filter_emotions():
    a = np.array([0.6, 0.8, 0.0], np.float32)
    staff = score_utterance(a, bank(), "staff")
    customer = score_utterance(a, bank(), "customer")
    assert set(staff) == {"pleasant"}
    assert set(customer) == {"pleasant", "purchase_intention"}
    assert staff["pleasant"] == customer["pleasant"]


def test_bank_vectors_shape_checked():
    with pytest.raises(ValueError):
        BankVectors(("a",), np.zeros((2, 3)), np.zeros((2, 3)), np.ones(1), np.zeros(1), (None,))
    assert bipolar_scores(np.ones((4, 3)), BankVectors.empty(3)).shape == (4, 0)


def test_an_event_carries_a_transcript_only_when_asked_and_stripping_it_copies():
    import numpy as np

    from emoclap.record import Scored, Utterance, without_transcript

    utt = Utterance("till", "customer", 1, 0.0, 1.0, 0.0, 0.0, embedding=np.ones(2, np.float32),
                    transcript="I'll take it.")
    scored = Scored(utt, {"purchase_intention": 0.9}, {}, {"audio": {"purchase_intention": 0.6},
                                                           "text": {"purchase_intention": 0.95}})
    assert "transcript" not in scored.event()
    event = scored.event(transcript=True)
    assert event["transcript"] == "I'll take it." and event["parts"]["text"] == {"purchase_intention": 0.95}
    assert "transcript" not in without_transcript(event) and "transcript" in event  # a copy, not an edit
