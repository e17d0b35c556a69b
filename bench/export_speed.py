"""ONNX Runtime speed of the audio encoder exported by the legacy TorchScript exporter vs
the dynamo exporter, and of the legacy export quantised to int8 (MatMul/Gemm only), on a
HuBERT-base-sized randomly initialised tower (configs/bench-hubert-base.toml); cosine of
each against torch.

    python bench/export_speed.py [--threads 2] [--repeats 5]

Prints a markdown table; both exports are measured in the same run on the same inputs.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from trainer.config import load_config
from trainer.export import export_audio, quantize_int8
from trainer.model import ClapModel

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "bench-hubert-base.toml"


def hubert_base_model() -> ClapModel:
    torch.manual_seed(0)
    return ClapModel(load_config(CONFIG).model).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = hubert_base_model()
    rng = np.random.default_rng(0)
    cases = {"1 × 3 s": [48000], "4 × 1–4 s": [16000, 32000, 48000, 64000]}
    inputs = {}
    for name, lengths in cases.items():
        wave = np.zeros((len(lengths), max(lengths)), np.float32)
        for i, n in enumerate(lengths):
            wave[i, :n] = rng.standard_normal(n) * 0.1
        inputs[name] = {"waveform": wave, "lengths": np.array(lengths, np.int64)}
    rows, outputs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        with torch.no_grad():
            reference = {n: model.encode_audio(torch.from_numpy(f["waveform"]), torch.from_numpy(f["lengths"])).numpy()
                         for n, f in inputs.items()}
        # Conv is not in the list: ONNX Runtime's quantiser refuses HuBERT's weight-normalised
        # positional convolution ("Expected ... to be an initializer").
        variants = ("legacy", "dynamo", "int8")
        for variant in variants:
            dynamo = variant == "dynamo"
            label = {"legacy": "legacy (TorchScript)", "dynamo": "dynamo", "int8": "legacy + int8 MatMul/Gemm"}[variant]
            path = Path(tmp) / f"{variant}.onnx"
            t0 = time.perf_counter()
            if variant == "int8":
                quantize_int8(Path(tmp) / "legacy.onnx", path)
            else:
                export_audio(model, path, dynamo=dynamo)
            export_s = time.perf_counter() - t0
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            times = {}
            for name, feed in inputs.items():
                outputs[(variant, name)] = sess.run(None, feed)[0]  # warm-up
                runs = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    sess.run(None, feed)
                    runs.append(time.perf_counter() - t)
                times[name] = float(np.median(runs))
            rows.append((label, export_s, times))
    legacy = rows[0][2]
    print(f"HuBERT-base-sized audio encoder, ONNX Runtime CPU, {args.threads} threads, "
          f"median of {args.repeats} runs\n")
    print("| exporter | export s | " + " | ".join(f"{n} ms" for n in cases) + " | time vs legacy | min cosine vs torch |")
    print("|---|---|" + "---|" * len(cases) + "---|---|")
    for (label, export_s, times), variant in zip(rows, variants):
        rel = np.mean([times[n] / legacy[n] for n in cases])
        cos = min(float(np.min(np.sum(outputs[(variant, n)] * reference[n], 1))) for n in cases)
        print(f"| {label} | {export_s:.1f} | " + " | ".join(f"{1000 * times[n]:.0f}" for n in cases)
              + f" | {rel:.2f}× | {cos:.6f} |")


if __name__ == "__main__":
    main()
