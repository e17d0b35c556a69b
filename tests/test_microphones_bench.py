"""The band-limited recordings the microphones benchmark scores: what is kept and what is
cut, read back through the daemon's file reader, and its score-change statistics."""
from __future__ import annotations

import numpy as np

from bench.microphones import recorded, shifts
from emoclap.audio import SAMPLE_RATE


def _tones(freqs, seconds=1.0):
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (sum(np.sin(2 * np.pi * f * t) for f in freqs) * 0.2).astype(np.float32)


def _level(audio, f):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    freqs = np.fft.rfftfreq(audio.size, 1 / SAMPLE_RATE)
    return spectrum[np.abs(freqs - f) < 15].max() / audio.size


def test_the_reference_recording_is_the_same_speech(tmp_path):
    audio = _tones([150, 1000, 6000])
    back = recorded(audio, SAMPLE_RATE, False, tmp_path, "ref")
    assert back.shape == audio.shape and np.abs(back - audio).max() < 1e-3  # 16-bit PCM only


def test_an_8_khz_recording_keeps_the_voice_band_and_loses_what_is_above_4_khz(tmp_path):
    audio = _tones([150, 1000, 6000])
    back = recorded(audio, 8000, False, tmp_path, "narrow")
    assert abs(back.size - audio.size) <= 2
    assert _level(back, 1000) > 0.9 * _level(audio, 1000)
    assert _level(back, 150) > 0.9 * _level(audio, 150)
    assert _level(back, 6000) < 1e-3 * _level(audio, 6000)


def test_a_telephone_line_also_cuts_below_300_hz(tmp_path):
    audio = _tones([100, 1000, 6000])
    back = recorded(audio, 8000, True, tmp_path, "phone")
    assert _level(back, 1000) > 0.8 * _level(audio, 1000)
    assert _level(back, 100) < 0.1 * _level(audio, 100)
    assert _level(back, 6000) < 1e-3 * _level(audio, 6000)


def test_score_changes_skip_what_a_path_did_not_score():
    ref = np.array([[0.2, np.nan], [0.9, 0.5]])
    other = np.array([[0.5, np.nan], [0.8, 0.5]])
    s = shifts(ref, other)
    assert np.isclose(s["max"], 0.3) and np.isclose(s["mean"], (0.3 + 0.1 + 0.0) / 3)
    assert shifts(np.full((2, 2), np.nan), np.full((2, 2), np.nan)) == {"mean": None, "p95": None, "max": None}
