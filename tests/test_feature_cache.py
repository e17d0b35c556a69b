"""The frozen tower's feature cache: a file is one entry however a manifest names it."""
import os

import numpy as np
import soundfile as sf
import torch

from trainer.features import AudioFeatures


class CountingTower:
    """Stands in for a frozen audio tower: pooled = mean and energy of each clip, calls counted."""

    hidden_size = 2

    def __init__(self):
        self.clips = 0

    def eval(self):
        return self

    def pooled(self, waveform, lengths):
        self.clips += len(lengths)
        mask = torch.arange(waveform.shape[1])[None] < lengths[:, None]
        x = waveform * mask
        return torch.stack([x.sum(1) / lengths, (x ** 2).sum(1) / lengths], 1)


class Model:
    def __init__(self):
        self.audio = CountingTower()


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
    assert model.audio.clips == 4  # two files, two views each
    again = AudioFeatures(tmp_path / "features", "k").get(
        model, Corpus([str(tmp_path / "a.wav"), os.path.join("..", tmp_path.name, "b.wav")]), 2, 0)
    assert model.audio.clips == 4  # nothing recomputed
    np.testing.assert_array_equal(first, again)
