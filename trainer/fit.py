"""Fitting the CLAP model on a labelled corpus, one held-out session at a time."""
from __future__ import annotations

import argparse
import ast
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

from trainer.checkpoint import save_checkpoint
from trainer.config import Config, load_config
from trainer.descriptions import Descriptions, load_descriptions
from trainer.inference import embed_clips, zero_shot_probs
from trainer.loop import Corpus, param_groups, resolve_device, train
from trainer.loss import multitask_loss
from trainer.metrics import unweighted_accuracy
from trainer.model import ClapModel, load_tokenizer, tokenize


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_corpus(manifest: Path, emotions: list[str], normalisation: str = "pooled") -> Corpus:
    """Utterances of a manifest with binary labels per emotion (-1: excluded or unrated)."""
    from trainer.labels import binary_labels
    from trainer.manifest import load_manifest

    utts = load_manifest(manifest)
    labels = binary_labels(utts, emotions, normalisation=normalisation)
    matrix = np.stack([np.asarray(labels[e], dtype=np.int64) for e in emotions], axis=1)
    return Corpus([u.audio for u in utts], matrix, [u.session for u in utts], list(emotions),
                  [u.role for u in utts])


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices; validation empty when it would hold fewer than 4 clips."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * fraction))
    return (np.sort(perm), perm[:0]) if k < 4 else (np.sort(perm[k:]), np.sort(perm[:k]))


def mean_ua(labels: np.ndarray, probs: np.ndarray) -> float:
    uas = [unweighted_accuracy(labels[:, k], (probs[:, k] >= 0.5).astype(int)) for k in range(labels.shape[1])]
    uas = [u for u in uas if not np.isnan(u)]
    return float(np.mean(uas)) if uas else float("nan")


def clap_step(desc: Descriptions, tokenizer, paraphrases: bool, kind: str):
    """Loss of one batch: one sampled sentence per pole, both towers in one forward call."""
    k = len(desc.emotions)

    def step(net, batch, rng):
        wave, lengths, labels = batch
        ids, mask = tokenize(tokenizer, desc.sample(rng, paraphrases))
        audio, text, scale = net(wave, lengths, ids.to(wave.device), mask.to(wave.device))
        return multitask_loss(audio, text.view(k, 2, -1), labels, scale, kind)

    return step


def fit_clap(corpus: Corpus, cfg: Config, out: Path, *, resume: bool = False, device: str = "cpu",
             held_out: str | None = None) -> dict:
    """Train on `corpus` (already without its test session); best model → out/best.pt."""
    opts = cfg.train
    seed_everything(opts.seed)
    corpus = corpus.labelled()
    desc = load_descriptions(opts.prompts, corpus.emotions, opts.language)
    tokenizer = load_tokenizer(cfg.model.text, cfg.model.max_tokens)
    model = ClapModel(cfg.model)
    tr, va = split_validation(len(corpus.audio), opts.val_fraction, opts.seed)
    train_set, val_set = corpus.subset(tr), corpus.subset(va)
    val_clips = [val_set.clip(i) for i in range(len(val_set.audio))]

    def validate(m):
        if not val_clips:
            return None
        emb = embed_clips(m, val_clips, device=device)
        return mean_ua(val_set.labels, zero_shot_probs(m, tokenizer, desc, emb, device))

    def save_best(path, summary):
        summary = {**summary, "held_out_session": held_out, "train_utterances": len(tr),
                   "validation_utterances": len(va), "emotions": corpus.emotions}
        save_checkpoint(path, config=cfg, model_state=model.state_dict(), tokenizer=tokenizer,
                        descriptions=desc, extra={"summary": summary,
                                                  "metrics": {"validation_ua": summary["best_val_ua"]}})

    groups = param_groups(model.head_parameters(), model.encoder_parameters(), opts)
    return train(model, corpus=train_set, opts=opts, out=out, step_loss=clap_step(desc, tokenizer, opts.paraphrases,
                 opts.loss), validate=validate, save_best=save_best, groups=groups, resume=resume,
                 device=device, after_step=lambda m: m.clamp_logit_scale())


def fold_plan(sessions: list[str], fold: str) -> list[tuple[str | None, np.ndarray]]:
    """[(held-out session or None, train indices)] for --fold SESSION | all | none."""
    sessions_arr = np.asarray(sessions)
    names = sorted(set(sessions))
    if fold == "none":
        return [(None, np.arange(len(sessions)))]
    chosen = names if fold == "all" else [fold]
    for s in chosen:
        if s not in names:
            raise SystemExit(f"--fold {s}: no such session (have {', '.join(names)})")
    return [(s, np.flatnonzero(sessions_arr != s)) for s in chosen]


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, parse_overrides(args.set))
    device = resolve_device(args.device)
    corpus = load_corpus(args.manifest, cfg.train.emotions, cfg.train.normalisation)
    results = {}
    for session, idx in fold_plan(corpus.sessions, args.fold):
        name = f"fold-{session}" if session else "all"
        print(f"{name}: training on {len(idx)} utterances", file=sys.stderr)
        summary = fit_clap(corpus.subset(idx), cfg, args.out / name, resume=args.resume, device=device,
                           held_out=session)
        results[name] = {k: summary[k] for k in ("epochs_run", "best_epoch", "best_val_ua", "wall_s")}
    (args.out / "run.json").write_text(json.dumps({"manifest": str(args.manifest), "config": str(args.config),
                                                   "folds": results}, indent=2))
    print(json.dumps(results, indent=2))
    return 0
