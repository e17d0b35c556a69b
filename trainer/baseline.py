"""The supervised baseline: speech encoder + linear + one fully connected layer, BCE,
decision threshold at the Youden index of the ROC curve."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import Config, load_config
from trainer.features import FeatureDataset, collate_features, frozen_audio_features
from trainer.inference import run_batched
from trainer.loop import Corpus, param_groups, resolve_device, train
from trainer.metrics import unweighted_accuracy, youden_threshold
from trainer.model import build_audio_tower
from trainer.pooling import AudioPooling
from trainer.runs import load_corpus, parse_overrides, seed_everything, split_validation, train_folds


class BaselineModel(nn.Module):
    def __init__(self, cfg: Config, n_outputs: int, hidden: int = 256, weights: bool = True):
        super().__init__()
        self.audio = build_audio_tower(cfg.model, weights)
        # The CLAP model's pooling: both read the same statistics (and share their cache).
        self.audio_pool = AudioPooling(self.audio.hidden_size, self.audio.depth, cfg.model.audio_layers,
                                       cfg.model.audio_pooling, cfg.model.piece_samples)
        self.linear = nn.Linear(self.audio_pool.width, hidden)
        self.fc = nn.Linear(hidden, n_outputs)

    def forward(self, waveform, lengths):
        return self.from_pooled(self.audio_statistics(waveform, lengths))

    def audio_statistics(self, waveform, lengths):
        return self.audio_pool.utterance_statistics(self.audio, waveform, lengths)

    def from_pooled(self, stats):
        """The classifier on the pooled statistics (cached when the tower is frozen)."""
        return self.fc(torch.relu(self.linear(self.audio_pool(stats))))


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    keep = labels >= 0
    if not keep.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[keep].float(), labels[keep].float())


def predict_probs(model: BaselineModel, clips: list[np.ndarray], batch_size: int = 16, device="cpu") -> np.ndarray:
    model.eval()
    return run_batched(lambda wave, lengths: torch.sigmoid(model(wave, lengths).float()), clips,
                       batch_size, device)


def fit_baseline(corpus: Corpus, cfg: Config, out: Path, *, resume: bool = False, device: str = "cpu",
                 held_out: str | None = None) -> dict:
    """Train on every emotion of `corpus` at once; thresholds chosen on the validation split
    (on the training set when there is none)."""
    opts = cfg.train
    seed_everything(opts.seed)
    corpus = corpus.labelled()
    model = BaselineModel(cfg, len(corpus.emotions))
    tr, va = split_validation(len(corpus.audio), opts.val_fraction, opts.seed)
    train_set, val_set = corpus.subset(tr), corpus.subset(va if len(va) else tr)
    val_clips = [val_set.clip(i) for i in range(len(val_set.audio))]
    frozen = {}
    if any(p.requires_grad for p in model.audio.parameters()):
        step = lambda net, batch, rng: masked_bce(net(batch[0], batch[1]), batch[2])  # noqa: E731

        def val_probs(m):
            return predict_probs(m, val_clips, device=device)
    else:
        # A frozen tower runs once (with augmented views); only the classifier trains.
        features = frozen_audio_features(cfg, Path(out).parent, model, corpus, device)
        frozen = {"data": FeatureDataset(features[:, tr], train_set.labels, opts.seed),
                  "collate_fn": collate_features}
        val_pooled = torch.from_numpy(features[0, va if len(va) else tr]).to(device)
        step = lambda net, batch, rng: masked_bce(net.from_pooled(batch[0]), batch[1])  # noqa: E731

        @torch.no_grad()
        def val_probs(m):
            m.eval()
            return torch.sigmoid(m.from_pooled(val_pooled).float()).cpu().numpy()

    def thresholds_and_ua(m):
        probs = val_probs(m)
        thr = [youden_threshold(val_set.labels[:, k], probs[:, k]) for k in range(probs.shape[1])]
        uas = [unweighted_accuracy(val_set.labels[:, k], (probs[:, k] >= thr[k]).astype(int))
               for k in range(probs.shape[1])]
        return thr, float(np.nanmean(uas)) if not np.all(np.isnan(uas)) else float("nan")

    def save_best(path, summary):
        thr, _ = thresholds_and_ua(model)
        torch.save({"format": "emoclap-baseline", "config": cfg.to_dict(), "model": model.state_dict(),
                    "emotions": corpus.emotions, "thresholds": thr,
                    "summary": {**summary, "held_out_session": held_out}}, path)

    groups = param_groups([*model.audio_pool.parameters(), *model.linear.parameters(), *model.fc.parameters()],
                          [p for p in model.audio.parameters() if p.requires_grad], opts)
    return train(model, corpus=train_set, opts=opts, out=out, groups=groups, resume=resume, device=device,
                 step_loss=step, validate=lambda m: thresholds_and_ua(m)[1], save_best=save_best, **frozen)


def load_baseline(path: Path) -> tuple[BaselineModel, list[str], list[float], dict]:
    from trainer.config import config_from_dict

    data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, dict) or data.get("format") != "emoclap-baseline":
        raise ValueError(f"{path}: not an emoclap baseline checkpoint")
    model = BaselineModel(config_from_dict(data["config"], str(path)), len(data["emotions"]), weights=False)
    model.load_state_dict(data["model"])
    return model.eval(), data["emotions"], data["thresholds"], data["summary"]


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, parse_overrides(args.set))
    device = resolve_device(args.device)
    corpus = load_corpus(args.manifest, args.emotion or ["purchase_intention"], cfg.train.normalisation)
    results = train_folds(corpus, args.fold, args.out, "the baseline", lambda part, out, held_out: fit_baseline(
        part, cfg, out, resume=args.resume, device=device, held_out=held_out))
    print(json.dumps(results, indent=2))
    return 0
