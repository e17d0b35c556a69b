"""Encoder benchmark: the daemon's ONNX Runtime path against torch eager and the GEMM floor.

    python bench/encoder.py            # full table (several minutes on 2 cores)
    python bench/encoder.py --quick    # a smaller grid, one repetition

A HuBERT-base-sized audio tower (configs/bench-hubert-base.toml: the trainer's model
with random weights; masked mean pooling, linear 512, L2 norm) is exported to ONNX by
the trainer's export, parity check included, then timed through `AudioEncoder`
(fp32, and int8 with dynamic quantisation of MatMul/Gemm) at several batch sizes and
utterance lengths. Baselines measured in the same run: a torch-eager loop over single
utterances, and the floor = the tower's FLOPs / this machine's measured fp32 GEMM rate.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from daemon.encoder import AudioEncoder, EncoderOptions  # noqa: E402
from emoclap.audio import SAMPLE_RATE as RATE  # noqa: E402
from emoclap.bundle import load_bundle  # noqa: E402
from tests.tiny_bundle import build_model, export_model  # noqa: E402
from trainer.model import ClapModel  # noqa: E402

CONFIG = REPO / "configs" / "bench-hubert-base.toml"


def tower_flops(cfg, seconds: float, dim: int) -> float:
    """Multiply-adds ×2 of one utterance: conv feature extractor, projection, positional
    conv, transformer layers (attention's T² terms included), output projection."""
    n, c_in, flops = int(seconds * RATE), 1, 0.0
    for k, s, c in zip(cfg.conv_kernel, cfg.conv_stride, cfg.conv_dim):
        n = (n - k) // s + 1
        flops += 2.0 * n * c * c_in * k
        c_in = c
    t, h = n, cfg.hidden_size
    flops += 2.0 * t * c_in * h
    flops += 2.0 * t * h * (h // cfg.num_conv_pos_embedding_groups) * cfg.num_conv_pos_embeddings
    per_layer = 2.0 * t * (4 * h * h + 2 * h * cfg.intermediate_size) + 4.0 * t * t * h
    return flops + cfg.num_hidden_layers * per_layer + 2.0 * h * dim


def gemm_rate(threads: int) -> tuple[float, str]:
    """Best fp32 FLOP/s of torch and numpy matmul at the tower's shapes."""
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    best, who = 0.0, ""
    for m, k, n in ((1024, 768, 3072), (1024, 3072, 768), (2048, 768, 768)):
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        for name, fn in (("torch", lambda: torch.matmul(ta, tb)), ("numpy", lambda: a @ b)):
            fn()
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(4):
                    fn()
                rate = 4 * 2.0 * m * k * n / (time.perf_counter() - start)
                if rate > best:
                    best, who = rate, f"{name} {m}x{k}x{n}"
    return best, who


def ort_gemm_rate(threads: int) -> float:
    """FLOP/s of ONNX Runtime's own fp32 MatMul at the transformer's FFN shape."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    m, k, n = 1024, 768, 3072
    w = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((m, k), dtype=np.float32)
    return 2.0 * m * k * n / timed(lambda: session.run(None, {"x": x}), 0.5, 20)


def timed(fn, min_time: float, max_reps: int) -> float:
    """Seconds per call: one warm-up, then repeat until `min_time` or `max_reps`; best of them."""
    fn()
    times, total = [], 0.0
    while not times or (total < min_time and len(times) < max_reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        total += times[-1]
    return min(times)


def build(workdir: Path) -> tuple[ClapModel, object, Path, Path]:
    """The tower as the trainer builds and exports it; bundles kept in `workdir` per config."""
    cfg, model, tokenizer = build_model(CONFIG)
    folder = workdir / CONFIG.stem
    fp32_dir, int8_dir = folder / "fp32", folder / "int8"
    if not (fp32_dir / "manifest.json").exists() or not (int8_dir / "manifest.json").exists():
        print("exporting the HuBERT-base tower to ONNX (once; kept in", folder, ")", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        for out, int8 in ((fp32_dir, False), (int8_dir, True)):
            export_model(cfg, model, tokenizer, out, description="benchmark: HuBERT-base-sized tower, random weights",
                         int8=int8)
    return model, model.audio.encoder.config, fp32_dir, int8_dir


def build_in_pieces(folder: Path, piece_s: float = 1.0) -> Path:
    """The same tower (same seed) exported int8 and encoded in pieces of `piece_s`."""
    from trainer.config import load_config
    from trainer.model import ClapModel, load_tokenizer

    cfg = load_config(CONFIG, {"model.audio_piece_s": piece_s})
    torch.manual_seed(0)  # build_model's seed: the same weights as the whole-utterance rows
    model = ClapModel(cfg.model).eval()
    tokenizer = load_tokenizer(cfg.model.text, cfg.model.max_tokens)
    print(f"exporting the HuBERT-base tower in {piece_s:g}-s pieces to ONNX (once; kept in {folder})", flush=True)
    export_model(cfg, model, tokenizer, folder, int8=True,
                 description=f"benchmark: HuBERT-base-sized tower, random weights, in {piece_s:g}-s pieces")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small grid, one repetition")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for ORT and torch (default 1: on a shared machine more threads wait on each other)")
    parser.add_argument("--workdir", type=Path, default=REPO / "var" / "bench-encoder")
    args = parser.parse_args()
    batches = (1, 4) if args.quick else (1, 4, 16)
    lengths = (1.0, 4.0) if args.quick else (1.0, 4.0, 10.0)
    min_time, max_reps = (0.0, 1) if args.quick else (3.0, 5)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    model, cfg, fp32_dir, int8_dir = build(args.workdir)
    dim = model.opts.embedding_dim
    rng = np.random.default_rng(0)
    audio = {L: [(rng.standard_normal(int(L * RATE)) * 0.1).astype(np.float32) for _ in range(max(batches))]
             for L in lengths}
    encoders = {p: AudioEncoder(load_bundle(folder), options=EncoderOptions(
        provider="cpu", intra_op_threads=args.threads, max_batch=max(batches), max_chunk_s=max(lengths)))
        for p, folder in (("fp32", fp32_dir), ("int8", int8_dir))}

    # The machine is shared: load comes and goes. Every baseline is measured next to the
    # rows that use it, before and after them, and the best time of each is kept.
    rates, ort_rates, how = [], [], {}
    eager: dict[float, float] = {}
    ort_time: dict[tuple, float] = {}

    def measure_baselines(L):
        rate, how[len(rates)] = gemm_rate(args.threads)
        rates.append(rate)
        ort_rates.append(ort_gemm_rate(args.threads))
        wave = torch.from_numpy(audio[L][0])[None]
        n = torch.tensor([wave.shape[1]])
        with torch.inference_mode():
            t = timed(lambda: model.encode_audio(wave, n), min_time, max_reps)
        eager[L] = min(eager.get(L, t), t)

    for L in lengths:
        measure_baselines(L)
        for precision, enc in encoders.items():
            for b in batches:
                ort_time[precision, b, L] = timed(lambda: enc.embed(audio[L][:b]), min_time, max_reps)
        measure_baselines(L)
        print(f"  {L:g} s utterances done", flush=True)
    best_rate = max(rates)
    rate, rate_how = best_rate, how[rates.index(best_rate)]
    rows = []
    for (precision, b, L), t in sorted(ort_time.items()):
        floor = b * tower_flops(cfg, L, dim) / rate
        rows.append((precision, b, L, t, b * L / t, b * eager[L] / t, t / floor, t / floor * max(ort_rates) / rate))

    invariance = {}
    mixed = [audio[L][i] for i, L in enumerate(lengths)]
    for precision, enc in encoders.items():
        single = np.stack([enc.embed([a])[0] for a in mixed])
        invariance[precision] = float(np.abs(enc.embed(mixed) - single).max())
    load_after = os.getloadavg()
    flops_s = {L: tower_flops(cfg, L, dim) / L / 1e9 for L in lengths}
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"threads {args.threads}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"fp32 GEMM rate: {rate / 1e9:.1f} GFLOP/s, best of {len(rates)} measurements "
          f"(lowest {min(rates) / 1e9:.1f}; {rate_how}); ONNX Runtime's own MatMul: "
          f"{max(ort_rates) / 1e9:.1f} GFLOP/s")
    print("tower GFLOP per audio second: " + ", ".join(f"{L:g} s utterances {v:.2f}" for L, v in flops_s.items()))
    print("torch eager, one utterance at a time: " + ", ".join(
        f"{L:g} s: {eager[L] * 1000:.0f} ms (RTF {eager[L] / L:.3f})" for L in lengths))
    print()
    print("| precision | batch | length s | ms / batch | RTF | × real time | speed-up vs torch eager "
          "| time / floor | time / ORT-GEMM floor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for precision, b, L, t, xrt, speedup, vs_floor, vs_ort in rows:
        print(f"| {precision} | {b} | {L:g} | {t * 1000:.0f} | {1 / xrt:.3f} | {xrt:.1f} | {speedup:.2f} "
              f"| {vs_floor:.2f} | {vs_ort:.2f} |")
    best = {p: max((r for r in rows if r[0] == p), key=lambda r: r[4]) for p in ("fp32", "int8")}
    print()
    print("batching invariance, max |batched - single| over utterances of " +
          ", ".join(f"{L:g}" for L in lengths) + " s: " +
          ", ".join(f"{p} {v:.1e}" for p, v in invariance.items()) +
          " (int8 bundles run one utterance per ONNX call)")
    for p, r in best.items():
        print(f"best {p}: batch {r[1]}, {r[2]:g} s: {r[4]:.1f}× real time, {r[5]:.2f}× torch eager, "
              f"{r[6]:.2f}× the floor ({r[7]:.2f}× at ONNX Runtime's GEMM rate)")


if __name__ == "__main__":
    main()
