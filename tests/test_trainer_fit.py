import numpy as np
import pytest
import torch

from trainer.checkpoint import load_for_inference
from trainer.config import load_config
from trainer.fit import fit_clap
from trainer.loop import Corpus
from trainer.runs import RunError, parse_overrides, split_validation

torch.set_num_threads(1)


def toy_corpus(n=48, seed=0):
    """Pitch carries 'pleasant', loudness carries 'aroused'; a few labels excluded."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, (n, 2))
    labels[rng.random((n, 2)) < 0.1] = -1
    t = np.arange(8000) / 16000
    audio = []
    for i in range(n):
        f = 180.0 if labels[i, 0] != 1 else 700.0
        amp = 0.05 if labels[i, 1] != 1 else 0.5
        length = int(rng.integers(4000, 8000))
        audio.append((amp * np.sin(2 * np.pi * f * t[:length]) + 0.01 * rng.standard_normal(length)).astype(np.float32))
    sessions = [f"s{i % 3}" for i in range(n)]
    return Corpus(audio, labels, sessions, ["pleasant", "aroused"])


def cfg(**over):
    base = {"train.epochs": 3, "train.batch_size": 8, "train.val_fraction": 0.25, "train.max_seconds": 0.4}
    base.update(over)
    return load_config("configs/tiny.toml", base)


def test_training_is_reproducible_and_resume_continues_exactly(tmp_path):
    corpus = toy_corpus()
    a = fit_clap(corpus, cfg(), tmp_path / "a")
    b = fit_clap(corpus, cfg(**{"train.epochs": 2}), tmp_path / "b")
    b = fit_clap(corpus, cfg(), tmp_path / "b", resume=True)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert [h["val_ua"] for h in a["history"]] == [h["val_ua"] for h in b["history"]]
    sa = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    sb = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    loaded = load_for_inference(tmp_path / "a" / "best.pt")
    assert loaded.descriptions.emotions == ("pleasant", "aroused")
    assert loaded.training_summary["best_epoch"] == a["best_epoch"]


def test_loss_falls_on_a_learnable_toy_corpus(tmp_path):
    summary = fit_clap(toy_corpus(64), cfg(**{"train.epochs": 6, "train.lr_head": 3e-3,
                                              "train.lr_encoder": 3e-3}), tmp_path)
    losses = [h["loss"] for h in summary["history"]]
    assert losses[-1] < losses[0] * 0.9, losses


def test_early_stopping(tmp_path):
    summary = fit_clap(toy_corpus(), cfg(**{"train.epochs": 30, "train.patience": 2, "train.lr_head": 0.0,
                                            "train.lr_encoder": 0.0, "model.audio_norm": "none"}), tmp_path)
    # lr 0 and no running statistics: the model never changes, so epoch 1 stays the best
    assert summary["epochs_run"] == 3


def test_validation_split_and_overrides():
    tr, va = split_validation(40, 0.25, 0)
    assert len(va) == 10 and not set(tr) & set(va) and len(tr) + len(va) == 40
    assert len(split_validation(8, 0.25, 0)[1]) == 0
    assert parse_overrides(["train.epochs=5", "train.language=ja", "x=[1, 2]"]) == {
        "train.epochs": 5, "train.language": "ja", "x": [1, 2]}
    with pytest.raises(RunError, match="--set 'train.epochs': expected KEY=VALUE"):
        parse_overrides(["train.epochs"])


def test_cli_names_the_bad_config_field(tmp_path, capsys):
    from trainer.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nloss = "hinge"\n')
    assert main(["fit", str(tmp_path / "m.jsonl"), "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.toml: train.loss = 'hinge'" in capsys.readouterr().err
    for command in ("fit", "baseline"):
        assert main([command, str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o"), "--set", "epochs"]) == 2
        assert f"emoclap-train {command}: --set 'epochs': expected KEY=VALUE" in capsys.readouterr().err
