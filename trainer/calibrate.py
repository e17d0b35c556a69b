"""`emoclap-train calibrate`: fit each emotion's `temperature` and `bias` on labelled clips,
and with a bundle that reads words, the text path's `text_temperature` and `text_bias`
and the fused score's `audio_weight` and `text_weight`.

A path's score is sigmoid(s·m + bias) of its margin m = a·p − a·n (`emoclap.zeroshot`),
so Platt scaling — logistic regression of the binary label on m — gives temperature = A
and bias = B exactly; the fused score σ(w_a·logit_a + w_t·logit_t) gets its weights by
logistic regression on the two calibrated logits (`platt.fusion_fit`), on the clips whose
words were read. The fit is on a bundle's own ONNX towers, and scores before and
after are computed by `emoclap.zeroshot` from the prompt files as written, so the daemon
scores a calibrated file as the report says.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emoclap.audio import AudioError, read_mono
from emoclap.bundle import Bundle, load_bundle
from emoclap.prompts import (Emotion, PromptError, emotion_name, parse_prompt_file, parse_prompt_paths,
                             prompt_files, set_knobs)
from emoclap.zeroshot import (bank_vectors, bipolar_margins, bipolar_scores, emotion_poles, fused_logits,
                              path_logits, sigmoid)
from trainer.platt import L2, Platt, Refused, fusion_fit, platt_fit
from trainer.reliability import BINS, quality, reliability_bins, reliability_diagram
from trainer.runs import RunError

TEMPERATURE_MAX, BIAS_MAX = 1000.0, 100.0  # the prompt files' limits
BLOCK = 256  # clips read and embedded at a time, so a large corpus is never all in memory


class CalibrationError(RunError):
    """Calibration cannot run: nothing to calibrate, or an input it cannot read."""


@dataclass
class Target:
    """One emotion to calibrate: its file, its labelled clips and what was left out."""
    emotion: Emotion
    path: Path
    text: str
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # utterance indices
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    skipped: dict = field(default_factory=dict)
    refused: str | None = None


def held_out_sessions(sessions: list[str], fraction: float | None, names: list[str] | None,
                      seed: int) -> list[str]:
    """Sessions whose clips are only scored, never fitted on: `names` when given, else a
    seeded draw of round(fraction × sessions) of them (at least one, never all)."""
    unique = sorted(set(sessions))
    if names:
        unknown = sorted(set(names) - set(unique))
        if unknown:
            raise CalibrationError(f"--holdout-sessions: no session {', '.join(unknown)} "
                                   f"(the corpus has {', '.join(unique)})")
        if set(names) >= set(unique):
            raise CalibrationError("--holdout-sessions: every session held out leaves nothing to fit")
        return sorted(set(names))
    if fraction is None:
        fraction = 0.3 if len(unique) >= 2 else 0.0
    if not 0 <= fraction < 1:
        raise CalibrationError(f"--holdout must be at least 0 and below 1, not {fraction}")
    if fraction == 0 or len(unique) < 2:
        return []
    k = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    return sorted(np.random.default_rng(seed).permutation(unique)[:k].tolist())


def _read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:  # keep CRLF files CRLF
        return f.read()


def _write(path: Path, text: str) -> None:
    """Replace a prompt file in one step: the daemon polls the folder and must never read
    half a file. The temporary name does not end in .toml, so it is never read as one."""
    tmp = path.with_name(f".{path.name}.calibrate.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    shutil.copymode(path, tmp)
    os.replace(tmp, path)


def load_targets(prompts: Path, bundle: Bundle, rated: set[str],
                 only: list[str] | None) -> tuple[list[Target], dict[str, str]]:
    """Prompt files that the corpus has labels for (and `only` names), and why others are not used."""
    if not prompts.exists():
        raise CalibrationError(f"--prompts {prompts}: no such file or folder")
    files = prompt_files(prompts) if prompts.is_dir() else [prompts]
    emotions, errors = parse_prompt_paths(files, bundle.languages)
    if errors:
        raise next(iter(errors.values()))
    not_used = {name: "no labels for it in the corpus" for name in emotions if name not in rated}
    if only:
        missing = sorted(set(only) - set(emotions))
        if missing:
            raise CalibrationError(f"--emotion {', '.join(missing)}: no such prompt file in {prompts}")
        not_used.update({n: "not asked for (--emotion)" for n in emotions if n not in only})
    targets = [Target(e, Path(e.source), _read(Path(e.source)))
               for name, e in sorted(emotions.items()) if name not in not_used]
    if not targets:
        raise CalibrationError(f"no emotion to calibrate: the prompt files in {prompts} are "
                               f"{', '.join(sorted(emotions)) or 'none'}; the corpus rates "
                               f"{', '.join(sorted(rated)) or 'nothing'}")
    return targets, not_used


def label_targets(targets: list[Target], utterances: list, normalisation: str) -> None:
    """Each target's labelled clips (the method's labels), limited to the roles its file names."""
    from trainer.labels import LabelError, label_emotion

    roles = np.array([u.role for u in utterances])
    for t in targets:
        try:
            lab = label_emotion(utterances, t.emotion.name, normalisation)
        except LabelError as exc:
            t.refused = str(exc)
            continue
        role_ok = np.ones(len(utterances), bool) if t.emotion.roles is None else np.isin(roles, t.emotion.roles)
        labelled = lab.labels >= 0
        t.rows = np.flatnonzero(labelled & role_ok)
        t.labels = lab.labels[t.rows].astype(int)
        t.skipped = {"unrated": lab.unrated, "at_threshold": lab.at_threshold,
                     "other_role": int((labelled & ~role_ok).sum())}


def embed_utterances(utterances: list, rows: np.ndarray, bundle: Bundle) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """([len(rows), D] embeddings, bool mask of clips too short for the daemon to score, and
    with a transcriber the text path's embeddings [len(rows), S], NaN where no words were read)."""
    from trainer.bundle_towers import AudioEmbedder, ClipReader

    audio = ClipReader(bundle) if bundle.transcriber is not None else AudioEmbedder(bundle)
    emb = np.zeros((len(rows), bundle.embedding_dim), np.float32)
    text = None
    short = np.zeros(len(rows), bool)
    for start in range(0, len(rows), BLOCK):
        block = range(start, min(len(rows), start + BLOCK))
        clips = {}
        for i in block:
            try:
                clips[i] = read_mono(utterances[rows[i]].audio, bundle.sample_rate)
            except AudioError as exc:
                raise CalibrationError(f"manifest line {utterances[rows[i]].line}: {exc}") from None
            short[i] = audio.too_short(clips[i])
        keep = [i for i in block if not short[i]]
        if keep and bundle.transcriber is None:
            emb[keep] = audio.embed([clips[i] for i in keep])
        elif keep:
            emb[keep], said, _ = audio.read([clips[i] for i in keep])
            if said.shape[1]:  # no column at all: nothing in this block was understood
                if text is None:
                    text = np.full((len(rows), said.shape[1]), np.nan, np.float32)
                text[keep] = said
    return emb, short, text


def _knobs(fit: Platt, margins: np.ndarray, labels: np.ndarray, l2: float,
           warnings: list[str]) -> tuple[float, float]:
    """The fit within the files' limits; with the temperature at its limit, the bias is
    fitted again for that temperature."""
    a, b = fit.a, fit.b
    if a > TEMPERATURE_MAX:
        a, b = TEMPERATURE_MAX, platt_fit(margins, labels, l2, slope=TEMPERATURE_MAX).b
        warnings.append(f"temperature {fit.a:.6g} is above the files' limit: {TEMPERATURE_MAX:g} written, "
                        "with the bias fitted for it")
    if abs(b) > BIAS_MAX:
        warnings.append(f"bias {b:.6g} is outside the files' limit; {math.copysign(BIAS_MAX, b):g} written")
        b = math.copysign(BIAS_MAX, b)
    return a, b


def _finite(obj):
    """JSON has no NaN: a measure of an empty sample is null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def calibrate_target(t: Target, bundle: Bundle, emb: np.ndarray, fitted: np.ndarray, embed_text,
                     min_per_class: int, l2: float = L2, text: np.ndarray | None = None) -> tuple[dict, str]:
    """(report entry, new file text) for one emotion; `emb` (and `text`, the text path's
    embeddings, NaN rows where no words were read) rows follow `t.rows`, `fitted` marks the
    rows fitted on (the rest are held out). Scores before and after are the fused ones."""
    entry = {"file": str(t.path), "skipped": t.skipped, "warnings": [],
             "temperature_before": t.emotion.temperature, "bias_before": t.emotion.bias}
    poles = {t.emotion.name: emotion_poles(t.emotion, bundle.languages, embed_text, bundle.embedding_dim)}
    read = np.zeros(len(emb), bool) if text is None else ~np.isnan(text).any(1)

    def scores(emotion: Emotion) -> np.ndarray:
        bank = bank_vectors([emotion], poles, bundle.logit_scale, bundle.embedding_dim)
        out = bipolar_scores(emb, bank)[:, 0]
        if read.any():
            logit_a = path_logits(emb[read], bank, "audio")[:, 0]
            logit_t = path_logits(text[read], bank, "text")[:, 0]
            out[read] = sigmoid(fused_logits(logit_a, logit_t, bank))
        return out

    bank = bank_vectors([t.emotion], poles, bundle.logit_scale, bundle.embedding_dim)
    margins = bipolar_margins(emb, bank)[:, 0]
    before, y = scores(t.emotion), t.labels
    entry["fitted"] = {"before": quality(before[fitted], y[fitted])}
    entry["held_out"] = {"before": quality(before[~fitted], y[~fitted])}
    bins = {"fitted": {"before": reliability_bins(before[fitted], y[fitted])},
            "held_out": {"before": reliability_bins(before[~fitted], y[~fitted])}}
    new_text = t.text
    pos, neg = int((y[fitted] == 1).sum()), int((y[fitted] == 0).sum())
    try:
        if min(pos, neg) < min_per_class:
            raise Refused(f"{pos} positive and {neg} negative clips to fit on; at least {min_per_class} "
                          "of each are needed (--min-per-class)")
        fit = platt_fit(margins[fitted], y[fitted], l2)
        entry.update(A=fit.a, B=fit.b, iterations=fit.iterations)
        if fit.a <= 0 and not read.any():
            raise Refused(f"the prompt ranks backwards (A = {fit.a:.4g}): its positive pole scores "
                          "higher on the clips labelled negative; fix its sentences")
        if fit.a <= 0:  # the text path may still read it: the fusion weighs the audio path
            entry["warnings"].append(f"the audio path ranks backwards (A = {fit.a:.4g}): its temperature and "
                                     "bias are kept, and the fusion weight decides what it counts")
            knobs = (t.emotion.temperature or bundle.logit_scale, t.emotion.bias)
        else:
            knobs = _knobs(fit, margins[fitted], y[fitted], l2, entry["warnings"])
        more = _text_knobs(bank, knobs, emb, text, read & fitted, y, min_per_class, l2, entry)
        new_text = set_knobs(t.text, *knobs, str(t.path), **more)
    except Refused as exc:
        entry.update(status="refused", reason=str(exc))
        return {**entry, "bins": bins}, t.text
    written = parse_prompt_file(new_text, t.emotion.name, str(t.path), bundle.languages)
    after = scores(written)
    entry.update(status="unchanged" if new_text == t.text else "written",
                 temperature=written.temperature, bias=written.bias,
                 **({k: getattr(written, k) for k in ("text_temperature", "text_bias", "audio_weight", "text_weight")}
                    if read.any() else {}))
    entry["fitted"]["after"] = quality(after[fitted], y[fitted])
    entry["held_out"]["after"] = quality(after[~fitted], y[~fitted])
    bins["fitted"]["after"] = reliability_bins(after[fitted], y[fitted])
    bins["held_out"]["after"] = reliability_bins(after[~fitted], y[~fitted])
    return {**entry, "bins": bins}, new_text


def _text_knobs(bank, audio_knobs: tuple[float, float], emb, text, rows: np.ndarray, y: np.ndarray,
                min_per_class: int, l2: float, entry: dict) -> dict:
    """The text path's temperature and bias and the fusion weights, fitted on `rows` (fitted
    clips whose words were read); {} where too few were, with the reason in the report."""
    if text is None:
        return {}
    pos, neg = int((y[rows] == 1).sum()), int((y[rows] == 0).sum())
    if min(pos, neg) < min_per_class:
        entry["warnings"].append(f"text path not calibrated: words were read in {pos} positive and {neg} "
                                 f"negative clips; at least {min_per_class} of each are needed")
        return {}
    margins = bipolar_margins(text[rows], bank, "text")[:, 0]
    try:
        fit = platt_fit(margins, y[rows], l2)
        if fit.a <= 0:
            raise Refused(f"the prompt ranks transcripts backwards (A = {fit.a:.4g})")
        text_knobs = _knobs(fit, margins, y[rows], l2, entry["warnings"])
        logit_a = audio_knobs[0] * bipolar_margins(emb[rows], bank)[:, 0] + audio_knobs[1]
        logit_t = text_knobs[0] * margins + text_knobs[1]
        fusion = fusion_fit(logit_a, logit_t, y[rows], l2)
    except Refused as exc:
        entry["warnings"].append(f"text path not calibrated: {exc}")
        return {}
    entry.update(text_A=fit.a, text_B=fit.b, fusion_iterations=fusion.iterations)
    return {"text_temperature": text_knobs[0], "text_bias": text_knobs[1],
            "audio_weight": fusion.audio, "text_weight": fusion.text}


def calibrate(manifest: Path, bundle_dir: Path, prompts: Path, *, out: Path | None = None,
              dry_run: bool = False, min_per_class: int = 10, holdout: float | None = None,
              holdout_sessions: list[str] | None = None, sessions: list[str] | None = None,
              emotions: list[str] | None = None, normalisation: str = "pooled", seed: int = 0,
              log=print) -> dict:
    """Fit, rewrite the prompt files (unless `dry_run`) and write the report to `out`."""
    from trainer.bundle_towers import text_embedder
    from trainer.labels import rated_emotions
    from trainer.manifest import load_manifest

    if min_per_class < 1:
        raise CalibrationError(f"--min-per-class must be at least 1, not {min_per_class}")
    bundle = load_bundle(bundle_dir)
    utterances = load_manifest(manifest)
    if sessions:
        unknown = sorted(set(sessions) - {u.session for u in utterances})
        if unknown:
            raise CalibrationError(f"--sessions: no session {', '.join(unknown)} in {manifest}")
        utterances = [u for u in utterances if u.session in sessions]
    targets, not_used = load_targets(prompts, bundle, set(rated_emotions(utterances)), emotions)
    label_targets(targets, utterances, normalisation)
    held = held_out_sessions([u.session for u in utterances], holdout, holdout_sessions, seed)
    needed = np.unique(np.concatenate([t.rows for t in targets]))
    log(f"embedding {len(needed)} clips with {bundle.folder}", file=sys.stderr)
    emb_all, short_all, text_all = embed_utterances(utterances, needed, bundle)
    where = {int(r): i for i, r in enumerate(needed)}
    embed_text = text_embedder(bundle, output="both")
    report = {"manifest": str(manifest), "bundle": str(bundle.folder), "bundle_hash": bundle.hash,
              "prompts": str(prompts), "normalisation": normalisation, "bins": BINS, "l2": L2,
              "min_per_class": min_per_class, "dry_run": dry_run,
              "sessions": {"fitted": sorted({u.session for u in utterances} - set(held)), "held_out": held},
              "not_calibrated": not_used, "emotions": {}}
    changes = {}
    for t in targets:
        if t.refused:
            report["emotions"][t.emotion.name] = {"file": str(t.path), "status": "refused", "reason": t.refused}
            continue
        idx = np.array([where[int(r)] for r in t.rows], int)
        keep = ~short_all[idx] if idx.size else np.zeros(0, bool)
        t.skipped["too_short"] = int((~keep).sum())
        t.rows, t.labels, idx = t.rows[keep], t.labels[keep], idx[keep]
        fitted = np.array([utterances[r].session not in held for r in t.rows], bool)
        entry, new_text = calibrate_target(t, bundle, emb_all[idx], fitted, embed_text, min_per_class,
                                           text=None if text_all is None else text_all[idx])
        report["emotions"][t.emotion.name] = entry
        if new_text != t.text:
            changes[t.path] = (t.text, new_text)
    for path, (old, new) in changes.items():
        if dry_run:
            log(unified_diff(path, old, new), end="")
        elif _read(path) != old:  # edited by someone while the clips were embedded
            report["emotions"][emotion_name(path)].update(status="refused", reason="the file changed during "
                                                          "calibration; not written (run again)")
        else:
            _write(path, new)
    if out is not None:
        write_report(report, Path(out))
    return report


def unified_diff(path: Path, old: str, new: str) -> str:
    """The change as `git diff` shows it (a/, b/ prefixes for relative paths)."""
    a, b = (str(path), str(path)) if path.is_absolute() else (f"a/{path}", f"b/{path}")
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), a, b))


def _num(x, digits=3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def markdown(report: dict) -> str:
    held = report["sessions"]["held_out"]
    lines = [f"Fitted on sessions {', '.join(report['sessions']['fitted'])}; "
             + (f"held out: {', '.join(held)}." if held else "nothing held out: every number is on the "
                "clips fitted on, so the after columns are optimistic."),
             "", "| emotion | status | n | positives | ECE before | ECE after | held-out n | held-out ECE before "
             f"| held-out ECE after | {'held-out ' if held else ''}Brier before/after "
             f"| {'held-out ' if held else ''}log-loss before/after | temperature | bias |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, e in report["emotions"].items():
        f, h = e.get("fitted", {}), e.get("held_out", {})
        fb, fa, hb, ha = f.get("before", {}), f.get("after", {}), h.get("before", {}), h.get("after", {})
        src = h if held else f
        lines.append(
            f"| {name} | {e['status']} | {fb.get('n', '–')} | {fb.get('positives', '–')} | {_num(fb.get('ece'))} | "
            f"{_num(fa.get('ece'))} | {hb.get('n', 0)} | {_num(hb.get('ece'))} | {_num(ha.get('ece'))} | "
            f"{_num(src.get('before', {}).get('brier'))} / {_num(src.get('after', {}).get('brier'))} | "
            f"{_num(src.get('before', {}).get('log_loss'))} / {_num(src.get('after', {}).get('log_loss'))} | "
            f"{_num(e.get('temperature'), 4)} | {_num(e.get('bias'), 4)} |")
        if e.get("reason"):
            notes.append(f"- {name}: {e['reason']}")
        notes += [f"- {name}: {w}" for w in e.get("warnings", [])]
        skipped = {k: v for k, v in e.get("skipped", {}).items() if v}
        if skipped:
            notes.append(f"- {name}: clips left out: " + ", ".join(f"{v} {k.replace('_', ' ')}"
                                                                   for k, v in skipped.items()))
    notes += [f"- {name}: {why}" for name, why in report["not_calibrated"].items()]
    return "\n".join(lines + ([""] + notes if notes else []))


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sample = "held_out" if report["sessions"]["held_out"] else "fitted"
    panels = [{"emotion": f"{name} ({e['status']})", "before": e["bins"][sample]["before"], "after": e["bins"][sample].get("after"),
               "ece_before": e[sample]["before"]["ece"], "ece_after": e[sample].get("after", {}).get("ece")}
              for name, e in report["emotions"].items() if "bins" in e]
    title = (f"held-out sessions {', '.join(report['sessions']['held_out'])}" if sample == "held_out"
             else "the clips fitted on (optimistic: nothing held out)")
    if panels:
        reliability_diagram(panels, out / "reliability.png", f"Reliability before and after calibration: {title}")
    (out / "report.json").write_text(json.dumps(_finite(report), indent=1, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    (out / "report.md").write_text(markdown(report) + "\n", encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    def names(value):
        return [s.strip() for s in value.split(",") if s.strip()] if value else None

    try:
        report = calibrate(args.manifest, args.bundle, args.prompts, out=args.out, dry_run=args.dry_run,
                           min_per_class=args.min_per_class, holdout=args.holdout,
                           holdout_sessions=names(args.holdout_sessions), sessions=names(args.sessions),
                           emotions=args.emotion, normalisation=args.normalisation, seed=args.seed)
    except PromptError as exc:
        raise CalibrationError(f"prompt file not usable: {exc}") from None
    print(markdown(report))
    written = [p for p in (args.out / "report.md", args.out / "reliability.png") if p.is_file()]
    print(f"report: {', '.join(map(str, written))}", file=sys.stderr)
    return 0
