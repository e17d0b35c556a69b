"""Leave-one-session-out evaluation: zero-shot for any prompt file (scored as the runtime
scores, with the file's temperature and bias), the baseline, random guessing."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from emoclap.prompts import emotion_name, parse_prompt_file
from trainer.descriptions import Descriptions, descriptions_from
from trainer.inference import embed_clips, zero_shot_probs
from trainer.loop import Corpus, resolve_device
from trainer.metrics import random_guess, sign_test, summary
from trainer.runs import RunError, load_corpus


@dataclass
class System:
    name: str
    emotion: str
    index: list[int] = field(default_factory=list)  # corpus rows, in the order of probs
    probs: list[float] = field(default_factory=list)
    preds: list[int] = field(default_factory=list)


def prompt_variants(sources: list[Path], emotion: str, single: bool, language: str) -> list[tuple[str, Descriptions]]:
    """(name, descriptions) per prompt file for `emotion`: canonical sentences only, and with
    paraphrases when the file has any."""
    files = []
    for src in sources:
        if not src.exists():
            raise RunError(f"--prompts {src}: no such file or folder")
        if src.is_dir():
            if (src / f"{emotion}.toml").is_file():
                files.append(src / f"{emotion}.toml")
        elif emotion_name(src) == emotion or single:
            files.append(src)
    out = []
    for f in files:
        emo = parse_prompt_file(f.read_text(encoding="utf-8"), emotion_name(f), str(f))
        full = descriptions_from({emo.name: emo}, [emo.name], language, str(f))
        name = f"zero-shot {f.parent.name}/{f.stem}"
        out.append((name, full.canonical()))
        if any(len(p) > 1 for poles in full.sentences for p in poles):
            out.append((f"{name} + paraphrases", full))
    if not out:
        raise RunError(f"no prompt file for emotion {emotion!r} in {', '.join(map(str, sources))}")
    return out


def fold_dirs(run: Path) -> list[tuple[str, Path]]:
    folds = sorted(p for p in Path(run).glob("fold-*") if (p / "best.pt").is_file())
    if not folds:
        raise RunError(f"{run}: no fold-*/best.pt (train with `emoclap-train fit --fold ...` first)")
    return [(p.name[len("fold-"):], p) for p in folds]


def at_half(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Scores shifted in logit space so that the fold's decision threshold sits at 0.5.

    Each fold's baseline has its own Youden threshold; pooling raw probabilities across
    folds would draw an ROC curve that disagrees with the decisions actually made."""
    eps = 1e-7
    p = np.clip(probs, eps, 1 - eps)
    t = min(max(float(threshold), eps), 1 - eps)
    margin = np.log(p / (1 - p)) - np.log(t / (1 - t))
    return 1.0 / (1.0 + np.exp(-margin))


def evaluate(corpus: Corpus, run: Path, prompts: list[Path], emotions: list[str], baseline: Path | None = None,
             device: str = "cpu") -> dict:
    """Predictions of every system on every held-out session, pooled; metrics per emotion."""
    from trainer.baseline import load_baseline, predict_probs
    from trainer.checkpoint import load_for_inference

    systems: dict[tuple[str, str], System] = {}

    def add(name, emotion, idx, probs, preds):
        s = systems.setdefault((emotion, name), System(name, emotion))
        s.index += list(map(int, idx))
        s.probs += list(map(float, probs))
        s.preds += list(map(int, preds))

    sessions = np.asarray(corpus.sessions)
    curves = {}
    for session, folder in fold_dirs(run):
        test = np.flatnonzero(sessions == session)
        if len(test) == 0:
            raise RunError(f"{folder}: held-out session {session!r} is not in the corpus")
        loaded = load_for_inference(folder / "best.pt")
        model = loaded.model.to(device)
        clips = [corpus.clip(i) for i in test]
        emb = embed_clips(model, clips, device=device)
        last = folder / "last.pt"
        if last.is_file():
            curves[session] = torch.load(last, map_location="cpu", weights_only=False)["state"]["history"]
        for k, emotion in enumerate(corpus.emotions):
            for name, desc in prompt_variants(prompts, emotion, len(corpus.emotions) == 1, loaded.config.train.language):
                p = zero_shot_probs(model, loaded.tokenizer, desc, emb, device)[:, 0]
                add(name, emotion, test, p, p >= 0.5)
        if baseline is not None:
            bmodel, bemotions, thresholds, _ = load_baseline(Path(baseline) / f"fold-{session}" / "best.pt")
            probs = predict_probs(bmodel.to(device), clips, device=device)
            for k, emotion in enumerate(corpus.emotions):
                if emotion in bemotions:
                    j = bemotions.index(emotion)
                    add("supervised baseline", emotion, test, at_half(probs[:, j], thresholds[j]),
                        probs[:, j] >= thresholds[j])
    return _report(corpus, systems, curves)


def _report(corpus: Corpus, systems: dict, curves: dict) -> dict:
    results: dict = {"emotions": {}, "curves": curves}
    for k, emotion in enumerate(corpus.emotions):
        rows = []
        mine = [s for (e, _), s in systems.items() if e == emotion]
        base = next((s for s in mine if s.name == "supervised baseline"), None)
        if not mine:
            continue
        idx = np.asarray(mine[0].index)
        y = corpus.labels[idx, k]
        keep = y >= 0
        rand = random_guess(y)
        rows.append({"system": "random", **summary(y, rand)})
        for s in sorted(mine, key=lambda s: (s is not base, s.name)):
            if not np.array_equal(np.asarray(s.index), idx):
                raise RuntimeError(f"{s.name}: scored other utterances than {mine[0].name}")
            pred = np.asarray(s.preds)
            row = {"system": s.name, **summary(y, pred)}
            if base is not None and s is not base:
                row["sign_test"] = sign_test((pred == y)[keep], (np.asarray(base.preds) == y)[keep])
            rows.append(row)
        results["emotions"][emotion] = {"rows": rows, "labels": y[keep].tolist(),
                                        "scores": {s.name: np.asarray(s.probs)[keep].tolist() for s in mine},
                                        "preds": {s.name: np.asarray(s.preds)[keep].tolist() for s in mine}}
    return results


def markdown(results: dict) -> str:
    lines = []
    for emotion, res in results["emotions"].items():
        n = res["rows"][0]["n"]
        lines += [f"### {emotion} ({n} utterances, leave-one-session-out)", "",
                  "| system | WA | UA | recall 0 | recall 1 | sign test vs baseline |", "|---|---|---|---|---|---|"]
        for r in res["rows"]:
            st = r.get("sign_test")
            p = f"p = {st['p']:.3g} ({st['a_only']}/{st['b_only']})" if st else ""
            lines.append(f"| {r['system']} | {100 * r['wa']:.1f} | {100 * r['ua']:.1f} | "
                         f"{100 * r['recall_0']:.1f} | {100 * r['recall_1']:.1f} | {p} |")
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from trainer.plots import write_plots

    emotions = args.emotion or ["purchase_intention"]
    corpus = load_corpus(args.manifest, emotions, args.normalisation)
    results = evaluate(corpus, args.run, args.prompts or [Path("prompts")], emotions, args.baseline,
                       resolve_device(args.device))
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(results)
    (args.out / "report.md").write_text(table + "\n", encoding="utf-8")
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    for png in write_plots(results, args.out):
        print(f"wrote {png}", file=sys.stderr)
    print(table)
    return 0
