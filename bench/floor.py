"""The compute floor: how many live stations this machine could serve if the audio tower
ran at the machine's GEMM rate and did nothing else.

    python bench/floor.py BUNDLE [BUNDLE ...] [--share 0.5]

floor stations = cores × GEMM rate ÷ (tower FLOP per audio second × speech share)

- GEMM rate, measured here and now: numpy float32 matmul at transformer shapes
  ((T×768)·(768×3072), (T×3072)·(768), (T×768)·(768×768)), one thread and all cores;
  for int8 graphs also ONNX Runtime's dynamically quantised MatMul at the same shapes
  (the fused DynamicQuantizeMatMul the int8 bundles run, activation quantisation
  included), and its MatMulNBits with 8-bit weights (what `export --int8-weights`
  makes, activations quantised row by row).
- FLOP: counted on the bundle's own ONNX graph. Every MatMul/Gemm/Conv (and their
  integer forms) is made a graph output, the graph runs once per input length with
  optimisations off, and each node's FLOP come from the shapes it actually saw
  (2·M·N·K; 2·outputs·C_in/groups·kernel for convolutions). Integer nodes are timed
  at the int8 rate, 8-bit-weight nodes at theirs, the rest (convolutions, attention's
  activation×activation products) at the fp32 rate.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

RATE = 16000
INT8_OPS = ("MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul")
INT8W_OPS = ("MatMulNBits",)
COUNTED = ("MatMul", "Gemm", "Conv", *INT8_OPS, *INT8W_OPS)
KINDS = ("fp32", "int8", "int8w")  # how a counted node's products are priced
SHAPES = ((768, 3072), (3072, 768), (768, 768))


@dataclass
class Rates:
    """FLOP/s by precision: per core (one thread) and with every core busy."""
    cores: int
    fp32_1: float
    fp32_all: float
    int8_1: float = 0.0
    int8_all: float = 0.0
    int8w_1: float = 0.0
    int8w_all: float = 0.0
    how: dict = field(default_factory=dict)

    def per_core(self, precision: str) -> float:
        # No measured rate for a kind: its products are priced as fp32 (a looser floor).
        return getattr(self, f"{precision}_1", 0.0) or self.fp32_1

    def all_cores(self, precision: str) -> float:
        return getattr(self, f"{precision}_all", 0.0) or self.fp32_all


def _best(fn, flop: float, reps: int = 5, min_s: float = 0.2) -> float:
    fn()
    best = 0.0
    for _ in range(reps):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_s:
                break
        best = max(best, n * flop / elapsed)
    return best


def numpy_rate(threads: int, t: int) -> float:
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    best = 0.0
    with threadpool_limits(limits=threads, user_api="blas"):
        for k, n in SHAPES:
            a = rng.standard_normal((t, k), dtype=np.float32)
            b = rng.standard_normal((k, n), dtype=np.float32)
            best = max(best, _best(lambda: a @ b, 2.0 * t * k * n))
    return best


def int8_rate(threads: int, t: int, weights_only: bool = False) -> float:
    """ONNX Runtime's dynamically quantised MatMul (or, `weights_only`, its 8-bit-weight
    MatMulNBits), made the way trainer.export quantises."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper, save

    from trainer.export import quantize_int8, quantize_weights_int8

    rng = np.random.default_rng(1)
    best = 0.0
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's advice to pre-process
    with tempfile.TemporaryDirectory() as tmp:
        for k, n in SHAPES:
            w = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32) * 0.05, "w")
            graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [t, k])],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [t, n])], [w])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            model.ir_version = 9
            src, dst = Path(tmp) / f"{k}x{n}.onnx", Path(tmp) / f"{k}x{n}.int8.onnx"
            save(model, str(src))
            (quantize_weights_int8 if weights_only else quantize_int8)(src, dst)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            session = ort.InferenceSession(str(dst), opts, providers=["CPUExecutionProvider"])
            x = rng.standard_normal((t, k), dtype=np.float32)
            best = max(best, _best(lambda: session.run(None, {"x": x}), 2.0 * t * k * n))
    return best


def gemm_rates(cores: int | None = None, t: int = 512, int8: bool = True) -> Rates:
    """This machine's GEMM rates now (T = 512 frames: a 10-s utterance of a 50 Hz tower)."""
    cores = cores or os.cpu_count() or 1
    rates = Rates(cores, numpy_rate(1, t), numpy_rate(cores, t),
                  how={"fp32": f"numpy float32 matmul, T={t}, best of {len(SHAPES)} shapes"})
    if int8:
        rates.int8_1, rates.int8_all = int8_rate(1, t), int8_rate(cores, t)
        rates.how["int8"] = f"ONNX Runtime dynamic-int8 MatMul, T={t}, best of {len(SHAPES)} shapes"
        rates.int8w_1, rates.int8w_all = int8_rate(1, t, True), int8_rate(cores, t, True)
        rates.how["int8w"] = f"ONNX Runtime 8-bit-weight MatMulNBits, T={t}, best of {len(SHAPES)} shapes"
    return rates


class GraphFlops:
    """FLOP of one ONNX audio tower by precision, counted from the shapes a run produces;
    with `piece_samples`, the tower's graph runs once per piece of the utterance (a bundle
    encoded in pieces; its head graph's few thousand FLOP are left out)."""

    def __init__(self, path: str | Path, piece_samples: int = 0):
        self.piece_samples = piece_samples
        import onnx
        import onnxruntime as ort

        model = onnx.load(str(path))
        graph = model.graph
        self.nodes = [n for n in graph.node if n.op_type in COUNTED]
        self.shapes = {i.name: list(i.dims) for i in graph.initializer}
        known = {o.name for o in graph.output} | {i.name for i in graph.input} | set(self.shapes)
        for node in self.nodes:
            for name in (*node.input[:2], node.output[0]):
                if name and name not in known:
                    graph.output.append(onnx.ValueInfoProto(name=name))
                    known.add(name)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self._cache: dict[int, dict[str, float]] = {}

    def __call__(self, samples: int) -> dict[str, float]:
        """{kind: FLOP} (`KINDS`) for one utterance of `samples` samples."""
        if self.piece_samples and samples > self.piece_samples:
            from emoclap.pieces import bounds

            parts = [self(e - s) for s, e in bounds(samples, self.piece_samples)]
            return {k: sum(p[k] for p in parts) for k in KINDS}
        if samples not in self._cache:
            wave = (np.random.default_rng(samples).standard_normal((1, samples)) * 0.1).astype(np.float32)
            feed = {"waveform": wave, "lengths": np.array([samples], np.int64), "offsets": np.zeros(1, np.int64)}
            names = [o.name for o in self.session.get_outputs()]
            outs = self.session.run(names, {k: v for k, v in feed.items() if k in self.inputs})
            shapes = dict(self.shapes, waveform=[1, samples])
            shapes.update((k, list(v.shape)) for k, v in zip(names, outs))
            self._cache[samples] = self._count(shapes)
        return self._cache[samples]

    def _count(self, shapes: dict) -> dict[str, float]:
        out = dict.fromkeys(KINDS, 0.0)
        for node in self.nodes:
            a, b, y = (shapes[n] for n in (*node.input[:2], node.output[0]))
            attrs = {at.name: at.i for at in node.attribute}
            if "Conv" in node.op_type:
                flop = 2.0 * np.prod(y) * np.prod(b[1:])
            elif node.op_type == "Gemm":
                flop = 2.0 * np.prod(y) * (a[0] if attrs.get("transA") else a[1])
            else:
                flop = 2.0 * np.prod(y) * a[-1]
            kind = "int8" if node.op_type in INT8_OPS else "int8w" if node.op_type in INT8W_OPS else "fp32"
            out[kind] += float(flop)
        return out

    def per_audio_second(self, seconds: float) -> dict[str, float]:
        return {k: v / seconds for k, v in self(int(seconds * RATE)).items()}


def piece_samples(folder: Path) -> int:
    import json
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    return int(manifest.get("audio_encoder", {}).get("piece_samples") or 0)


def hubert_analytic(seconds: float) -> float:
    """HuBERT-base counted by hand (bench/encoder.py's formula), the cross-check."""
    from transformers import HubertConfig

    from bench.encoder import tower_flops
    return tower_flops(HubertConfig(), seconds, 512)


def is_hubert_base(folder: Path) -> bool:
    """A bundle of bench/encoder.py's HuBERT-base-size tower (the hand count applies to it)."""
    import json
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    return "hubert-base" in str(manifest.get("description", "")).lower()


def floor_stations(load: dict[str, float], rates: Rates, all_cores: bool = False) -> float:
    """Stations the cores could carry: `load` = FLOP per wall-clock second of one station
    by precision (FLOP per audio second × speech share)."""
    if all_cores:
        busy = sum(v / rates.all_cores(k) for k, v in load.items())
        return 1.0 / busy if busy else float("inf")
    busy = sum(v / rates.per_core(k) for k, v in load.items())
    return rates.cores / busy if busy else float("inf")


def describe_rates(r: Rates) -> list[str]:
    lines = [f"fp32 GEMM rate: {r.fp32_1 / 1e9:.1f} GFLOP/s one thread, {r.fp32_all / 1e9:.1f} GFLOP/s "
             f"with {r.cores} threads ({r.how['fp32']})"]
    for kind, name in (("int8", "int8"), ("int8w", "8-bit-weight")):
        if getattr(r, f"{kind}_1"):
            lines.append(f"{name} GEMM rate: {getattr(r, f'{kind}_1') / 1e9:.1f} GFLOP/s one thread, "
                         f"{getattr(r, f'{kind}_all') / 1e9:.1f} GFLOP/s with {r.cores} threads ({r.how[kind]})")
    return lines


def describe_flops(name: str, flops: GraphFlops, extra: str = "") -> str:
    parts = []
    for s in (1.0, 10.0):
        f = flops.per_audio_second(s)
        split = "".join(f" ({name} {f[k] / 1e9:.2f})" for k, name in (("int8", "int8"), ("int8w", "8-bit weights"))
                        if f[k])
        parts.append(f"{s:g}-s input {sum(f.values()) / 1e9:.2f}{split}")
    return f"{name}: GFLOP per audio second: " + ", ".join(parts) + extra


def transcriber_kind(folder: Path) -> str:
    """How the transcriber's products are priced: an int8 transcriber stores 8-bit weights
    (MatMulNBits), so it runs at that rate, not dynamic int8's."""
    import json

    section = json.loads((Path(folder) / "manifest.json").read_text()).get("transcriber") or {}
    return {"int8": "int8w"}.get(section.get("precision", "fp32"), "fp32")


def transcriber_flop(folder: Path, seconds: float) -> float | None:
    """The text path's decoder FLOP for one utterance of `seconds` at the bundle's token
    bound (bench/transcriber.py counts them; the encoder pass is the audio tower's, shared)."""
    import json

    from bench.transcriber import decoder_flop
    from emoclap.transcript import encoder_frames, parse_spec

    manifest = json.loads((folder / "manifest.json").read_text())
    section = manifest.get("transcriber")
    if not section:
        return None
    from tokenizers import Tokenizer

    spec = parse_spec(section, str(folder))
    vocab = Tokenizer.from_file(str(folder / section["tokenizer"])).get_vocab_size()
    return decoder_flop(encoder_frames(int(seconds * RATE)), spec.budget(seconds), len(spec.prompt),
                        spec.heads * spec.head_dim, spec.layers, vocab)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", type=Path, help="bundle folders (audio_encoder.onnx inside)")
    ap.add_argument("--share", type=float, default=0.5, help="speech share of a station (default 0.5)")
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    args = ap.parse_args()
    rates = gemm_rates(args.cores)
    print("\n".join(describe_rates(rates)))
    for folder in args.bundles:
        flops = GraphFlops(folder / "audio_encoder.onnx", piece_samples(folder))
        extra = ""
        if is_hubert_base(folder):
            extra = "; by hand " + ", ".join(f"{s:g} s {hubert_analytic(s) / s / 1e9:.2f}" for s in (1.0, 10.0))
        print(describe_flops(str(folder), flops, extra))
        load = {k: v * args.share for k, v in flops.per_audio_second(4.0).items()}
        print(f"  floor at 4-s utterances, share {args.share:g}: {floor_stations(load, rates):.1f} stations "
              f"({args.cores} × one-thread rate), {floor_stations(load, rates, all_cores=True):.1f} "
              f"at the measured {args.cores}-thread rate")
        text = transcriber_flop(folder, 4.0)
        if text is not None:
            kind = transcriber_kind(folder)
            load[kind] = load.get(kind, 0.0) + text / 4.0 * args.share
            print(f"  text path: decoder {text / 1e9:.2f} GFLOP per 4-s utterance at its token bound "
                  f"({text / 4.0 / 1e9:.2f} per audio second); floor with it: {floor_stations(load, rates):.1f} "
                  f"stations, {floor_stations(load, rates, all_cores=True):.1f} at the {args.cores}-thread rate")


if __name__ == "__main__":
    main()
