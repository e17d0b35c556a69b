import numpy as np
import pytest

from trainer.labels import EXCLUDED, LabelError, binary_labels, label_emotion
from trainer.manifest import Utterance


def utterances(*ratings):
    """One utterance per argument: {annotator: score} for emotion 'pleasant'."""
    return [Utterance(audio=None, session="s", speaker="x", role="customer",
                      ratings={a: {"pleasant": s} for a, s in r.items()}) for r in ratings]


# lo rates u0, u1, u4, u5; hi rates u2, u3, u4 and scores 3 points higher on average.
BIASED = utterances({"lo": 2}, {"lo": 4}, {"hi": 5}, {"hi": 7}, {"lo": 3, "hi": 6}, {"lo": 3})


def test_annotator_normalisation_by_hand():
    # lo: [2, 4, 3, 3] mean 3, std 1/sqrt(2) -> z = -1.414, +1.414, 0, 0
    # hi: [5, 7, 6]    mean 6, std sqrt(2/3) -> z = -1.225, +1.225, 0
    # averages: u0 -1.414, u1 1.414, u2 -1.225, u3 1.225, u4 0, u5 0 -> mode 0
    result = label_emotion(BIASED, "pleasant", "annotator")
    np.testing.assert_allclose(result.combined, [-2 ** 0.5, 2 ** 0.5, -1.5 ** 0.5,
                                                 1.5 ** 0.5, 0, 0], atol=1e-6)
    assert result.threshold == 0.0
    assert result.labels.tolist() == [0, 1, 0, 1, EXCLUDED, EXCLUDED]
    assert (result.negatives, result.positives, result.at_threshold) == (2, 2, 2)


def test_pooled_normalisation_by_hand():
    # all scores [2, 4, 3, 3, 5, 7, 6]: mean 30/7, std sqrt(136/49) (population)
    mean, std = 30 / 7, (136 / 49) ** 0.5
    expected = [(2 - mean) / std, (4 - mean) / std, (5 - mean) / std, (7 - mean) / std,
                (4.5 - mean) / std, (3 - mean) / std]
    result = label_emotion(BIASED, "pleasant", "pooled")
    np.testing.assert_allclose(result.combined, expected, atol=1e-6)
    # Every average occurs once; the median lies halfway between u1 (-0.17) and u4
    # (+0.13): the tie goes to the lower one, u1, which is excluded.
    assert result.threshold == pytest.approx(expected[1])
    assert result.labels.tolist() == [0, EXCLUDED, 1, 1, 1, 0]


def test_most_frequent_value_is_threshold_not_median():
    # Averages (pooled, 2 annotators): 1.5, 6, 6, 6, 6.5 -> mode 6, so 6.5 alone is 1.
    data = utterances({"a": 1, "b": 2}, {"a": 6, "b": 6}, {"a": 5, "b": 7}, {"a": 7, "b": 5},
                      {"a": 7, "b": 6})
    result = label_emotion(data, "pleasant")
    assert result.labels.tolist() == [0, EXCLUDED, EXCLUDED, EXCLUDED, 1]


def test_unrated_utterances_are_excluded_not_guessed():
    data = utterances({"a": 1}, {"a": 4}, {"a": 4}, {"a": 7}) + [
        Utterance(audio=None, session="s", speaker="x", role="staff",
                  ratings={"a": {"aroused": 3}})]
    result = label_emotion(data, "pleasant")
    assert result.labels.tolist() == [0, EXCLUDED, EXCLUDED, 1, EXCLUDED]
    assert result.unrated == 1


def test_constant_annotator_is_a_clear_error():
    data = utterances({"a": 4, "b": 1}, {"a": 4, "b": 7})
    with pytest.raises(LabelError, match="annotator 'a' gave every utterance the same score"):
        label_emotion(data, "pleasant", "annotator")


def test_binary_labels_covers_every_rated_emotion():
    data = [Utterance(audio=None, session="s", speaker="x", role="customer",
                      ratings={"a": {"pleasant": p, "purchase_intention": q}})
            for p, q in [(1, 2), (4, 4), (4, 4), (7, 6)]]
    labels = binary_labels(data)
    assert sorted(labels) == ["pleasant", "purchase_intention"]
    assert labels["purchase_intention"].tolist() == [0, EXCLUDED, EXCLUDED, 1]


def test_unknown_normalisation_is_refused():
    with pytest.raises(LabelError, match="normalisation must be one of"):
        label_emotion(BIASED, "pleasant", "zscore")
