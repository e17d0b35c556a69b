"""The synthetic corpus carries its labels in the audio: a simple classifier on simple
acoustic features beats chance for every emotion, on sessions it never saw, and the words
carry purchase intention far better than the voice does."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from emoclap.audio import read_mono
from tests.acoustics import FEATURES, describe
from trainer.folds import leave_one_session_out
from trainer.labels import label_emotion
from trainer.manifest import load_manifest
from trainer.synth.affect import EMOTIONS, PURCHASE

CHANCE = 0.5


@pytest.fixture(scope="module")
def features(corpus):
    utterances = load_manifest(corpus / "manifest.jsonl")
    x = np.array([describe(read_mono(u.audio)) for u in utterances])
    assert x.shape == (len(utterances), len(FEATURES)) and np.isfinite(x).all()
    speakers = np.array([u.speaker for u in utterances])
    for s in set(speakers):  # speaker normalisation: voices differ in pitch and rate
        m = speakers == s
        x[m] = (x[m] - x[m].mean(axis=0)) / (x[m].std(axis=0) + 1e-9)
    return utterances, x


def loso_unweighted_accuracy(utterances, x, emotion):
    y = label_emotion(utterances, emotion).labels
    predicted = np.full(len(y), -1)
    for fold in leave_one_session_out([u.session for u in utterances]):
        train = fold.train[y[fold.train] >= 0]
        test = fold.test[y[fold.test] >= 0]
        model = LogisticRegression(max_iter=2000).fit(x[train], y[train])
        predicted[test] = model.predict(x[test])
    known = y >= 0
    return balanced_accuracy_score(y[known], predicted[known])


@pytest.mark.slow
@pytest.mark.parametrize("emotion", EMOTIONS + (PURCHASE,))
def test_simple_classifier_beats_chance(features, emotion):
    utterances, x = features
    ua = loso_unweighted_accuracy(utterances, x, emotion)
    print(f"{emotion}: leave-one-session-out UA {ua:.3f} (chance {CHANCE})")
    # Purchase intention is mostly in the words (trainer/synth/wording.py); its voice share
    # shows only through the emotions that drive it, on half as many (customer) utterances.
    assert ua >= (0.55 if emotion == PURCHASE else 0.58)


def test_words_carry_purchase_intention_on_sessions_never_seen(corpus):
    from sklearn.feature_extraction.text import CountVectorizer

    utterances = load_manifest(corpus / "manifest.jsonl")
    x = CountVectorizer(ngram_range=(1, 2)).fit_transform([u.transcript for u in utterances]).toarray()
    words = loso_unweighted_accuracy(utterances, x, PURCHASE)
    print(f"purchase intention from the words alone: leave-one-session-out UA {words:.3f}")
    assert words >= 0.7
