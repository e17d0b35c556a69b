"""The frozen tower's feature cache: an utterance is one entry by its content, however a
manifest names it and whenever the file was written; new content is computed anew."""
import os

import numpy as np
import soundfile as sf
import torch

from trainer.features import AudioFeatures


class Model:
    """Stands in for a model on a frozen tower: statistics = mean and energy of each clip, calls counted."""

    def __init__(self):
        self.clips = 0

    def eval(self):
        return self

    def audio_statistics(self, waveform, lengths):
        self.clips += len(lengths)
        mask = torch.arange(waveform.shape[1])[None] < lengths[:, None]
        x = waveform * mask
        return torch.stack([x.sum(1) / lengths, (x ** 2).sum(1) / lengths], 1)[:, None]


class Corpus:
    def __init__(self, paths):
        self.audio = paths

    def clip(self, i):
        return sf.read(self.audio[i], dtype="float32")[0]


def test_relative_and_absolute_names_of_a_file_share_one_cache_entry(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for name in ("a.wav", "b.wav"):
        sf.write(tmp_path / name, rng.standard_normal(16000).astype(np.float32) * 0.1, 16000)
    monkeypatch.chdir(tmp_path)
    model = Model()
    first = AudioFeatures(tmp_path / "features", "k").get(model, Corpus(["a.wav", "b.wav"]), 2, 0)
    assert model.clips == 4  # two files, two views each
    again = AudioFeatures(tmp_path / "features", "k").get(
        model, Corpus([str(tmp_path / "a.wav"), os.path.join("..", tmp_path.name, "b.wav")]), 2, 0)
    assert model.clips == 4  # nothing recomputed
    np.testing.assert_array_equal(first, again)


def test_the_same_content_rewritten_is_not_computed_again_and_new_content_is(tmp_path):
    rng = np.random.default_rng(1)
    clip = rng.standard_normal(16000).astype(np.float32) * 0.1
    sf.write(tmp_path / "a.wav", clip, 16000, subtype="FLOAT")
    model = Model()
    first = AudioFeatures(tmp_path / "features", "k").get(model, Corpus([str(tmp_path / "a.wav")]), 2, 0)
    assert model.clips == 2 and first.shape == (2, 1, 1, 2)
    os.utime(tmp_path / "a.wav", ns=(1, 1))  # a re-synthesised corpus: same bytes, new time
    again = AudioFeatures(tmp_path / "features", "k").get(model, Corpus([str(tmp_path / "a.wav")]), 2, 0)
    assert model.clips == 2
    np.testing.assert_array_equal(first, again)
    sf.write(tmp_path / "a.wav", clip * 0.5, 16000, subtype="FLOAT")
    changed = AudioFeatures(tmp_path / "features", "k").get(model, Corpus([str(tmp_path / "a.wav")]), 2, 0)
    assert model.clips == 4
    assert not np.allclose(changed[0], first[0])
