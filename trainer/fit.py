"""Fitting the CLAP model on a labelled corpus, one held-out session at a time."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from trainer.checkpoint import save_checkpoint
from trainer.config import Config, load_config
from trainer.descriptions import Descriptions, load_descriptions
from trainer.features import FeatureDataset, collate_features, frozen_audio_features, text_features
from trainer.inference import embed_clips, zero_shot_probs
from trainer.loop import Corpus, param_groups, resolve_device, train
from trainer.loss import contrastive_loss, multitask_loss
from trainer.model import ClapModel, load_tokenizer
from trainer.tokenization import tokenize
from trainer.runs import load_corpus, mean_ua, parse_overrides, seed_everything, split_validation, train_folds


def clap_step(desc: Descriptions, tokenizer, paraphrases: bool, kind: str):
    """Loss of one batch: one sampled sentence per pole, both towers in one forward call."""
    k = len(desc.emotions)

    def step(net, batch, rng):
        wave, lengths, labels = batch
        ids, mask = tokenize(tokenizer, desc.sample(rng, paraphrases))
        audio, text, scale = net(wave, lengths, ids.to(wave.device), mask.to(wave.device))
        return multitask_loss(audio, text.view(k, 2, -1), labels, scale, kind)

    return step


def frozen_step(desc: Descriptions, texts: dict, paraphrases: bool, kind: str,
                transcripts: torch.Tensor | None = None, weight: float = 0.0, consistency: float = 0.0):
    """`clap_step` on cached tower outputs: only the heads (and the logit scale) run.
    With `transcripts` ([U, H] pooled text features) the labels' last column is each
    utterance's transcript row (-1: none), and `weight` × the transcript term is added.
    With `consistency` > 0 a batch also holds each utterance's clean view, and each
    view's audio embedding is drawn to its clean one's (1 − cosine, the clean one held
    fixed), so that what augmentation adds (a room, noise, other talkers, a narrow
    microphone) moves the embedding less."""
    k = len(desc.emotions)

    def step(net, batch, rng):
        pooled, labels, *clean = batch
        text = torch.stack([texts[s] for s in desc.sample(rng, paraphrases)]).to(pooled.device)
        audio, text = net.audio_from_pooled(pooled), net.text_from_pooled(text)
        loss = multitask_loss(audio, text.view(k, 2, -1), labels[:, :k], net.scale(), kind)
        if consistency > 0:
            target = net.audio_from_pooled(clean[0].to(pooled.device)).detach()
            loss = loss + consistency * (1 - (audio * target).sum(-1)).mean()
        if transcripts is None:
            return loss
        said = labels[:, k]
        spoken = net.text_from_pooled(transcripts.to(pooled.device)[said.clamp(min=0)])
        return loss + weight * contrastive_loss(audio, spoken, said, net.scale(), kind)

    return step


def transcript_rows(corpus: Corpus) -> tuple[list[str], np.ndarray]:
    """The distinct transcripts and each utterance's row among them (-1: none)."""
    sentences = sorted({t for t in corpus.transcripts if t})
    row = {t: i for i, t in enumerate(sentences)}
    return sentences, np.array([row.get(t, -1) for t in corpus.transcripts] or [-1] * len(corpus.audio))


def fit_clap(corpus: Corpus, cfg: Config, out: Path, *, resume: bool = False, device: str = "cpu",
             held_out: str | None = None) -> dict:
    """Train on `corpus` (already without its test session); best model → out/best.pt."""
    opts = cfg.train
    seed_everything(opts.seed)
    corpus = corpus.labelled()
    desc = load_descriptions(opts.prompts, corpus.emotions, opts.language)
    tokenizer = load_tokenizer(cfg.model.text, cfg.model.max_tokens, cfg.train.language)
    model = ClapModel(cfg.model)
    tr, va = split_validation(len(corpus.audio), opts.val_fraction, opts.seed)
    train_set, val_set = corpus.subset(tr), corpus.subset(va)
    val_clips = [val_set.clip(i) for i in range(len(val_set.audio))]

    frozen = {}
    if model.towers_frozen():
        # Both towers frozen: run them once (with augmented views), train the heads alone.
        features = frozen_audio_features(cfg, Path(out).parent, model, corpus, device)
        texts = text_features(model, tokenizer, [s for _, _, s in desc.all_sentences()], device)
        labels, spoken = train_set.labels, None
        if opts.transcript_weight > 0:
            sentences, rows = transcript_rows(train_set)
            if sentences:
                said = text_features(model, tokenizer, sentences, device)
                spoken = torch.stack([said[t] for t in sentences])
                labels = np.concatenate([labels, rows[:, None]], axis=1)
        frozen = {"data": FeatureDataset(features[:, tr], labels, opts.seed, opts.view_consistency > 0),
                  "collate_fn": collate_features}
        val_pooled = torch.from_numpy(features[0, va]).to(device)  # the clean views

        @torch.no_grad()
        def embed_validation(m):
            m.eval()
            return m.audio_from_pooled(val_pooled).cpu().numpy()

        def embed_sentences(m):  # the frozen tower's cached output: a Whisper decoder costs ~0.1 s a sentence
            m.eval()

            @torch.no_grad()
            def embed(batch):
                return m.text_from_pooled(torch.stack([texts[s] for s in batch]).to(device)).cpu().numpy()
            return embed
        step = frozen_step(desc, texts, opts.paraphrases, opts.loss, spoken, opts.transcript_weight,
                           opts.view_consistency)
    else:
        for key in ("transcript_weight", "view_consistency"):
            if getattr(opts, key) > 0:
                raise ValueError(f"train.{key} needs both towers frozen (model.*.trainable = false)")

        def embed_validation(m):
            return embed_clips(m, val_clips, device=device)

        def embed_sentences(m):
            return None
        step = clap_step(desc, tokenizer, opts.paraphrases, opts.loss)

    def validate(m):
        if not val_clips:
            return None
        return mean_ua(val_set.labels, zero_shot_probs(m, tokenizer, desc, embed_validation(m), device,
                                                       embed_sentences(m)))

    def save_best(path, summary):
        summary = {**summary, "held_out_session": held_out, "train_utterances": len(tr),
                   "validation_utterances": len(va), "emotions": corpus.emotions}
        save_checkpoint(path, config=cfg, model_state=model.state_dict(), tokenizer=tokenizer,
                        descriptions=desc, extra={"summary": summary,
                                                  "metrics": {"validation_ua": summary["best_val_ua"]}})

    groups = param_groups(model.head_parameters(), model.encoder_parameters(), opts)
    return train(model, corpus=train_set, opts=opts, out=out, step_loss=step, validate=validate,
                 save_best=save_best, groups=groups, resume=resume, device=device,
                 after_step=lambda m: m.clamp_logit_scale(), **frozen)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, parse_overrides(args.set))
    device = resolve_device(args.device)
    corpus = load_corpus(args.manifest, cfg.train.emotions, cfg.train.normalisation)
    results = train_folds(corpus, args.fold, args.out, "the CLAP model", lambda part, out, held_out: fit_clap(
        part, cfg, out, resume=args.resume, device=device, held_out=held_out))
    (args.out / "run.json").write_text(json.dumps({"manifest": str(args.manifest), "config": str(args.config),
                                                   "folds": results}, indent=2))
    print(json.dumps(results, indent=2))
    return 0
