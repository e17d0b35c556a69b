"""The generalisation benchmark's own arithmetic: SNR mixing, the probe's grouping, the
AUC, and that its voices and sentences are held out. No speech engine is run."""
from __future__ import annotations

import numpy as np
import pytest

from bench.generalisation import (CONDITIONS, Clip, active_mask, auc, babble, check_held_out, limit,
                                  mix_at_snr, plan, probe_auc, probe_folds, room_noise)
from emoclap.audio import SAMPLE_RATE


def _bursts(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tone bursts of uneven loudness between silences, like words, with the true mask."""
    pieces, mask = [], []
    for i in range(6):
        n_on, n_off = int(rng.uniform(0.15, 0.4) * SAMPLE_RATE), int(rng.uniform(0.1, 0.3) * SAMPLE_RATE)
        t = np.arange(n_on) / SAMPLE_RATE
        pieces += [rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * rng.uniform(120, 300) * t), np.zeros(n_off)]
        mask += [np.ones(n_on, bool), np.zeros(n_off, bool)]
    return np.concatenate(pieces), np.concatenate(mask)


@pytest.mark.parametrize("snr_db", [-3.0, 6.0, 10.0, 20.0])
@pytest.mark.parametrize("kind", ["room", "babble", "white"])
def test_mix_gives_the_asked_snr_over_the_speech(snr_db, kind):
    rng = np.random.default_rng(7)
    speech, truth = _bursts(rng)
    # Whole 20 ms frames can overhang a burst's edge; judge the detector on whole frames.
    found = active_mask(speech)
    assert (found & truth).sum() >= 0.95 * truth.sum()
    assert (found & ~truth).sum() <= 0.15 * truth.sum()
    if kind == "room":
        noise = room_noise(speech.size, rng)
    elif kind == "babble":
        noise = babble(speech.size, [_bursts(rng)[0] for _ in range(6)], rng)
    else:
        noise = rng.standard_normal(speech.size // 3)  # shorter than the speech: looped
    mixed = limit(mix_at_snr(speech, noise, snr_db))
    gain = np.abs(mixed).max() / np.abs(mix_at_snr(speech, noise, snr_db)).max()
    clean = speech * gain
    measured = 10 * np.log10(np.mean(clean[truth] ** 2) / np.mean((mixed - clean)[truth] ** 2))
    assert abs(measured - snr_db) <= 0.5
    assert np.abs(mixed).max() <= 0.95 + 1e-6


def test_noise_is_deterministic_and_unit_level():
    a, b = room_noise(SAMPLE_RATE, np.random.default_rng(3)), room_noise(SAMPLE_RATE, np.random.default_rng(3))
    assert np.array_equal(a, b) and abs(a.std() - 1) < 1e-6


@pytest.mark.parametrize("quick", [True, False])
def test_probe_folds_keep_test_sentences_and_voices_out_of_training(quick):
    clips = plan(quick)
    for condition in CONDITIONS:
        sub = [c for c in clips if c.condition == condition]
        folds = probe_folds(sub)
        tested = np.concatenate([test for _, test in folds])
        assert sorted(tested) == list(range(len(sub)))  # every clip tested exactly once
        for train, test in folds:
            assert {sub[i].sentence for i in train}.isdisjoint(sub[i].sentence for i in test)
            assert {sub[i].voice for i in train}.isdisjoint(sub[i].voice for i in test)
            if not quick:
                assert {sub[i].label for i in train} == {0, 1}


def test_every_voice_speaks_both_classes():
    for condition in CONDITIONS:
        sub = [c for c in plan() if c.condition == condition]
        by_voice = {}
        for c in sub:
            by_voice.setdefault(c.voice, set()).add(c.label)
        assert all(labels == {0, 1} for labels in by_voice.values()), condition
        assert {c.engine for c in sub} == {"espeak-ng", "flite"}


def test_voices_and_sentences_are_held_out():
    check_held_out()


def test_auc_on_known_inputs():
    assert auc([3, 4], [1, 2]) == 1.0
    assert auc([1, 2], [3, 4]) == 0.0
    assert auc([1, 3], [2]) == 0.5
    assert auc([1], [1]) == 0.5
    assert auc([2, 2, 3], [1, 2]) == pytest.approx((2 + 0.5 + 0.5 + 2) / 6)
    assert auc([np.nan, 3], [1, np.nan]) == 1.0
    assert np.isnan(auc([np.nan], [1.0]))


def test_probe_separates_separable_features():
    clips = [Clip("c", label, f"s{i}", f"v{v}", "plain", int(i >= 4))
             for label in (0, 1) for i in range(8) for v in range(3)]
    rng = np.random.default_rng(0)
    y = np.array([c.label for c in clips])
    x = rng.standard_normal((len(clips), 5)) + 3 * y[:, None]
    assert probe_auc(x, y, probe_folds(clips)) == 1.0
