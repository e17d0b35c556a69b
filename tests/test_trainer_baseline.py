import pytest
import torch

from tests.test_trainer_fit import cfg, toy_corpus
from trainer.baseline import fit_baseline, load_baseline, masked_bce, predict_probs
from trainer.metrics import unweighted_accuracy

torch.set_num_threads(1)


def test_baseline_learns_the_toy_corpus_and_stores_youden_thresholds(tmp_path):
    corpus = toy_corpus(64)
    summary = fit_baseline(corpus, cfg(**{"train.epochs": 8, "train.lr_head": 3e-3, "train.lr_encoder": 3e-3}),
                           tmp_path)
    model, emotions, thresholds, saved = load_baseline(tmp_path / "best.pt")
    assert emotions == ["pleasant", "aroused"] and len(thresholds) == 2
    assert all(0.0 <= t <= 1.0 for t in thresholds)
    assert saved["best_epoch"] == summary["best_epoch"]
    test = toy_corpus(40, seed=9)
    probs = predict_probs(model, test.audio)
    uas = [unweighted_accuracy(test.labels[:, k], (probs[:, k] >= thresholds[k]).astype(int)) for k in range(2)]
    assert max(uas) > 0.75, uas


def test_masked_bce_ignores_excluded_labels():
    logits = torch.tensor([[2.0, -1.0], [0.5, 9.0]], requires_grad=True)
    labels = torch.tensor([[1, -1], [0, -1]])
    loss = masked_bce(logits, labels)
    expect = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(expect.item())
    loss.backward()
    assert torch.all(logits.grad[:, 1] == 0)
