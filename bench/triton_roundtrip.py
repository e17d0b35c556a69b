"""The Triton encoder's cost on this machine: one batch of 8 utterances of 3 s embedded
in process (ONNX Runtime, `AudioEncoder`) and through Triton over gRPC
(`TritonAudioEncoder` → `daemon.triton_host`: PyTriton's tritonserver, the same ONNX
Runtime build on CPU, behind the dynamic batcher), both with one intra-op thread.

    python bench/triton_roundtrip.py [--bundle data/demo-bundle] [--runs 10]

Needs `.venv-triton` (./bootstrap test). Both sides share this machine's cores, so the
Triton time includes the client and the server competing for them.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.encoder import AudioEncoder, EncoderOptions  # noqa: E402
from daemon.triton import TritonAudioEncoder, TritonOptions  # noqa: E402
from emoclap.bundle import load_bundle  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn, runs: int) -> list[float]:
    fn()  # warm-up: first-call allocations, gRPC connection
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(REPO / "data" / "demo-bundle"))
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    bundle = load_bundle(args.bundle)
    rng = np.random.default_rng(0)
    audios = [(0.1 * rng.standard_normal(int(args.seconds * bundle.sample_rate))).astype(np.float32)
              for _ in range(args.batch)]
    ports = [free_port() for _ in range(3)]
    host = subprocess.Popen([str(REPO / ".venv-triton" / "bin" / "python"), "-m", "daemon.triton_host",
                             args.bundle, "--grpc-port", str(ports[0]), "--http-port", str(ports[1]),
                             "--metrics-port", str(ports[2]), "--threads", "1",
                             "--max-batch", str(max(args.batch, 8)), "--preferred", ""],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        started = time.monotonic()
        for line in host.stdout:  # tritonserver's own log comes first
            if line.strip() == "ready":
                break
        else:
            print("triton_host did not start", file=sys.stderr)
            return 1
        # Keep reading its log, so that a full pipe never stalls the server.
        threading.Thread(target=lambda: [None for _ in host.stdout], daemon=True).start()
        print(f"Triton host ready in {time.monotonic() - started:.1f} s")
        options = EncoderOptions(provider="cpu", max_batch=args.batch, intra_op_threads=1)
        local = AudioEncoder(bundle, options=options)
        remote = TritonAudioEncoder(bundle, TritonOptions(url=f"127.0.0.1:{ports[0]}", timeout_s=600), options)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(local.embed(audios), remote.embed(audios)))
        rows = {}
        for name, encoder in (("in process", local), ("Triton gRPC", remote), ("in process (again)", local)):
            rows[name] = timed(lambda: encoder.embed(audios), args.runs)
        print(f"bundle {bundle.folder.name}: batch of {args.batch} x {args.seconds:g} s, {args.runs} runs, "
              f"largest embedding difference {diff:.2e}")
        print("| path | best ms | median ms |\n|---|---:|---:|")
        for name, times in rows.items():
            print(f"| {name} | {1000 * min(times):.1f} | {1000 * statistics.median(times):.1f} |")
        here, there = rows["in process"] + rows["in process (again)"], rows["Triton gRPC"]
        print(f"Triton / in process: best {min(there) / min(here):.3f}, "
              f"median {statistics.median(there) / statistics.median(here):.3f}")
    finally:
        host.terminate()
        host.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
