import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from emoclap.audio import read_channels, read_mono
from trainer.labels import label_emotion
from trainer.manifest import load_manifest
from trainer.synth.affect import CONTROLS, EMOTIONS, MIXING, PURCHASE
from trainer.synth.corpus import CorpusOptions, build_corpus


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_small_corpus_layout_and_manifest(small_corpus):
    utterances = load_manifest(small_corpus / "manifest.jsonl")
    assert len(utterances) == 36
    assert len({u.session for u in utterances}) == 3
    for u in utterances:
        assert u.ratings.keys() == {"ann1", "ann2", "ann3"}
        rated = set(u.ratings["ann1"])
        assert rated == set(EMOTIONS) | ({PURCHASE} if u.role == "customer" else set())
        audio = read_mono(u.audio)
        assert audio.size / 16000 == pytest.approx(u.end - u.start, abs=0.002)
        assert 0.01 < np.abs(audio).max() <= 1.0


def test_dialogue_files_match_utterance_timing(small_corpus):
    utterances = load_manifest(small_corpus / "manifest.jsonl")
    for meta_path in sorted((small_corpus / "dialogues").glob("*.json")):
        meta = json.loads(meta_path.read_text())
        stereo = read_channels(meta_path.with_suffix(".wav"))
        mix = read_mono(meta_path.with_name(meta["dialogue"] + "-mix.wav"))
        assert stereo.shape[0] == 2 and mix.size == stereo.shape[1]
        assert stereo.shape[1] / 16000 == pytest.approx(meta["duration"], abs=0.01)
        mine = [u for u in utterances if u.dialogue == meta["dialogue"]]
        assert [(u.start, u.end) for u in mine] == \
               [(t["start"], t["end"]) for t in meta["utterances"]]
        for turn in meta["utterances"]:
            span = slice(int(turn["start"] * 16000), int(turn["end"] * 16000))
            speaking = 0 if turn["role"] == "staff" else 1
            loud = np.sqrt(np.mean(stereo[speaking, span] ** 2))
            quiet = np.sqrt(np.mean(stereo[1 - speaking, span] ** 2))
            assert loud > 10 * quiet, turn  # each role on its own channel (quiet: noise floor)
        # Silence between turns: a gap holds only the noise floor.
        first, second = meta["utterances"][:2]
        gap = stereo[:, int(first["end"] * 16000) + 80:int(second["start"] * 16000) - 80]
        assert np.abs(gap).max() < 0.01


def test_same_seed_same_corpus_other_seed_other_corpus(tmp_path, small_corpus):
    again = tmp_path / "again"
    build_corpus(again, CorpusOptions.small(workers=1))
    assert digest(again) == digest(small_corpus)
    other = tmp_path / "other"
    build_corpus(other, CorpusOptions.small(seed=1))
    assert digest(other) != digest(small_corpus)


def test_japanese_corpus_in_kanji_spoken_by_espeak_from_its_kana_reading(tmp_path):
    # The Japanese engines themselves: tests/test_synth_ja.py.
    build_corpus(tmp_path, CorpusOptions.small(language="ja", sessions=2, turns=4, tts="espeak"))
    utterances = load_manifest(tmp_path / "manifest.jsonl")
    assert len(utterances) == 8
    assert any("\u4e00" <= ch <= "\u9fff" for u in utterances for ch in u.transcript)
    for u in utterances:
        assert " " not in u.transcript, u.transcript
        assert read_mono(u.audio).size > 8000


def test_no_single_control_gives_a_label_away():
    # Every emotion moves at least two vocal controls, and every control is moved by at
    # least two emotions, so no control maps one-to-one onto a label.
    moved = np.abs(MIXING) > 0.1
    assert moved.shape == (len(CONTROLS), len(EMOTIONS))
    assert (moved.sum(axis=0) >= 2).all()
    assert (moved.sum(axis=1) >= 2).all()
    # ...and the mapping stays invertible: all six emotions are recoverable.
    assert np.linalg.matrix_rank(MIXING) == len(EMOTIONS)


def test_options_are_checked():
    with pytest.raises(ValueError, match="turns must be an even number"):
        CorpusOptions(turns=5)
    with pytest.raises(ValueError, match="sessions must be 2..6"):
        CorpusOptions(sessions=9)


def test_synth_command_prints_balance_and_folds(tmp_path):
    done = subprocess.run([sys.executable, "-m", "trainer.cli", "synth", "--small",
                           "--sessions", "2", "--turns", "6", "--out", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote 12 utterances" in done.stderr
    assert "| held-out session |" in done.stdout and "| s2-phone |" in done.stdout
    assert "| purchase_intention |" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "trainer.cli", "synth", "--turns", "3",
                          "--out", str(tmp_path / "d")], capture_output=True, text=True)
    assert bad.returncode == 2 and "turns must be an even number" in bad.stderr


def test_folds_command_reports_a_bad_manifest(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"audio": 3}\n')
    done = subprocess.run([sys.executable, "-m", "trainer.cli", "folds",
                           str(tmp_path / "m.jsonl")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "line 1: field 'audio'" in done.stderr


def test_default_corpus_labels_are_balanced_enough(corpus):
    utterances = load_manifest(corpus / "manifest.jsonl")
    assert len(utterances) == 480
    for emotion in (*EMOTIONS, PURCHASE):
        labels = label_emotion(utterances, emotion)
        share = labels.positives / (labels.positives + labels.negatives)
        assert 0.15 <= share <= 0.85, (emotion, share)
        assert labels.positives + labels.negatives >= (120 if emotion == PURCHASE else 250)
