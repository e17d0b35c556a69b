"""Speed of Whisper-base's encoder as the bundle's audio encoder, through the daemon's path.

    python bench/whisper_encoder.py [--threads 1] [--seconds 3]

configs/bench-whisper-base.toml (the real Whisper-base weights from the pinned packages,
log-mel front end in the graph, masked mean pooling, linear 512, L2 norm) is exported by
the trainer's export, fp32 and `--int8`, and timed through `daemon.encoder.AudioEncoder`
on single utterances and batches of four (espeak-ng speech); torch eager on the same
module is the baseline, and each row's embeddings are compared with torch's.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.encoder import timed  # noqa: E402
from daemon.encoder import AudioEncoder, EncoderOptions  # noqa: E402
from emoclap.audio import SAMPLE_RATE as RATE  # noqa: E402
from emoclap.bundle import load_bundle  # noqa: E402
from tests.tiny_bundle import build_model, export_model  # noqa: E402
from trainer.export import espeak_clips  # noqa: E402

CONFIG = REPO / "configs" / "bench-whisper-base.toml"
SENTENCES = ["Hello, how can I help you today?", "No, thank you. That is far too expensive for me.",
             "I would like to see the blue one, please."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for ORT and torch")
    parser.add_argument("--seconds", type=float, default=3.0, help="utterance length")
    parser.add_argument("--workdir", type=Path, default=REPO / "var" / "bench-whisper")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg, model, tokenizer = build_model(CONFIG)
    folders = {p: args.workdir / p for p in ("fp32", "int8")}
    if not all((f / "manifest.json").exists() for f in folders.values()):
        shutil.rmtree(args.workdir, ignore_errors=True)
        for p, folder in folders.items():
            export_model(cfg, model, tokenizer, folder, description="benchmark: Whisper-base encoder", int8=p == "int8")
    n = int(args.seconds * RATE)
    speech = np.concatenate(espeak_clips(SENTENCES))
    audio = [np.resize(np.roll(speech, i * n // 2), n) for i in range(4)]  # four different stretches of speech
    with torch.inference_mode():
        ref = np.stack([model.encode_audio(torch.from_numpy(a)[None], torch.tensor([n]))[0].numpy() for a in audio])
        eager = timed(lambda: model.encode_audio(torch.from_numpy(audio[0])[None], torch.tensor([n])), 3.0, 10)
    rows = [("torch eager", 1, eager, 1.0)]
    for p, folder in folders.items():
        enc = AudioEncoder(load_bundle(folder), options=EncoderOptions(
            provider="cpu", intra_op_threads=args.threads, max_batch=4, max_chunk_s=max(args.seconds, 10.0)))
        cos = float(np.min(np.sum(enc.embed(audio) * ref, 1)))
        for b in (1, 4):
            rows.append((f"ONNX Runtime {p}", b, timed(lambda: enc.embed(audio[:b]), 3.0, 10) / b, cos))
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.2f}; {args.seconds:g}-s utterances")
    print("\n| path | batch | ms per utterance | RTF | × real time | cosine to torch fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, b, t, cos in rows:
        print(f"| {name} | {b} | {t * 1000:.0f} | {t / args.seconds:.3f} | {args.seconds / t:.1f} | {cos:.4f} |")


if __name__ == "__main__":
    main()
