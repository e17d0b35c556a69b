"""`emoclap-train`: build corpora and models offline.

Each subcommand names its handler as "module:function", imported only when that
subcommand runs, so `emoclap-train synth` does not pay for importing torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path


def _synth(sub) -> None:
    p = sub.add_parser("synth", help="speak a synthetic sales-floor corpus with known labels")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--small", action="store_true", help="a corpus of seconds, for tests")
    p.add_argument("--language", choices=("en", "ja"), default="en")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sessions", type=int, help="sales scenarios, one session each (2..6)")
    p.add_argument("--dialogues", type=int, help="dialogues per session")
    p.add_argument("--turns", type=int, help="turns per dialogue (even)")
    p.add_argument("--workers", type=int, help="parallel espeak-ng/sox processes")
    p.set_defaults(handler="trainer.cli:run_synth")


def _folds(sub) -> None:
    p = sub.add_parser("folds", help="label balance and leave-one-session-out folds of a manifest")
    p.add_argument("manifest", type=Path)
    p.add_argument("--normalisation", choices=("pooled", "annotator"), default="pooled")
    p.set_defaults(handler="trainer.cli:run_folds")


COMMANDS = [_synth, _folds]


def run_synth(args) -> int:
    from trainer.synth.corpus import CorpusOptions, build_corpus

    chosen = {k: v for k, v in {"sessions": args.sessions,
                                "dialogues_per_session": args.dialogues,
                                "turns": args.turns, "workers": args.workers}.items()
              if v is not None}
    make = CorpusOptions.small if args.small else CorpusOptions
    try:
        options = make(language=args.language, seed=args.seed, **chosen)
    except ValueError as exc:
        print(f"emoclap-train synth: {exc}", file=sys.stderr)
        return 2
    build_corpus(args.out, options)
    print(report(args.out / "manifest.jsonl", "pooled"))
    return 0


def report(manifest: Path, normalisation: str) -> str:
    """Label balance per emotion and the folds' class counts, as markdown."""
    from trainer.folds import fold_table, leave_one_session_out
    from trainer.labels import label_emotion, rated_emotions
    from trainer.manifest import load_manifest

    utterances = load_manifest(manifest)
    per_emotion = [label_emotion(utterances, e, normalisation) for e in rated_emotions(utterances)]
    lines = [f"{manifest}: {len(utterances)} utterances, "
             f"{len({u.session for u in utterances})} sessions, "
             f"{len({u.speaker for u in utterances})} speakers", "",
             "| emotion | 0 | 1 | share of 1 | at threshold (excluded) | unrated | threshold |",
             "|---|---|---|---|---|---|---|"]
    for labels in per_emotion:
        share = labels.positives / max(1, labels.positives + labels.negatives)
        lines.append(f"| {labels.emotion} | {labels.negatives} | {labels.positives} | "
                     f"{share:.2f} | {labels.at_threshold} | {labels.unrated} | "
                     f"{labels.threshold:+.3f} |")
    lines += ["", fold_table(leave_one_session_out(utterances),
                             {lab.emotion: lab.labels for lab in per_emotion})]
    return "\n".join(lines)


def run_folds(args) -> int:
    print(report(args.manifest, args.normalisation))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emoclap-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    args = parser.parse_args(argv)
    module, function = args.handler.split(":")
    from trainer.labels import LabelError
    from trainer.manifest import ManifestError
    try:
        return getattr(importlib.import_module(module), function)(args)
    except (ManifestError, LabelError) as exc:
        print(f"emoclap-train {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
