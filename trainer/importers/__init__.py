"""`emoclap-train import KIND SRC --out DIR`: public emotion corpora as a trainer manifest.

Each module reads one corpus's own layout and label files into `writer.Clip`s with
ratings mapped by `mapping`; `writer` checks them and writes the corpus atomically.
"""
from __future__ import annotations

import argparse
import importlib

KINDS = {"msp-podcast": "msp_podcast", "iemocap": "iemocap", "crema-d": "crema_d",
         "ravdess": "ravdess", "jvnv": "jvnv", "csv": "generic_csv"}


def import_corpus(kind: str, src, out, workers: int | None = None):
    """Read corpus `kind` at `src` and write it to `out`; returns the ImportReport."""
    from pathlib import Path

    from trainer.importers.writer import CorpusError, write_corpus

    src = Path(src)
    if not src.exists():
        raise CorpusError(src, [f"{src}: no such file or folder"])
    module = importlib.import_module(f"trainer.importers.{KINDS[kind]}")
    clips, left_out = module.collect(src)
    return write_corpus(clips, Path(out), src, left_out, workers)


def run(args: argparse.Namespace) -> int:
    print(import_corpus(args.kind, args.src, args.out, args.workers))
    return 0
