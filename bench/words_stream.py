"""The text path under a stream of utterances: how long each waits for its words when
their decodes join at the next step, against decodes that run in cohorts.

    python bench/words_stream.py --bundles data/demo-bundle,B2 [--rates 2,4,8] [--utterances 80]

Each bundle's encode stage as the daemon runs it (the `Batcher` over the `Reader`: the
audio pass, then the words thread), fed the demo corpus's customer utterances at Poisson
arrival times (seeded; the same arrivals for every bundle) at each rate (utterances per
second over all stations). A bundle whose step graph takes `positions` and `past_mask`
decodes with rows joining at the next step ("joining"); one exported without them decodes
only rows that started together, a newcomer waiting for the batch to empty ("cohorts").
Latency is submit → result (audio pass, words, text embedding); `decode` is the words
stage's own span; `steps` the decoder graph runs per utterance. No network, no scoring:
the capacity benchmark measures the whole daemon.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emoclap.audio import read_mono  # noqa: E402


def customer_clips(manifest: Path, n: int) -> list[np.ndarray]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    paths = [manifest.parent / r["audio"] for r in rows if r.get("role") == "customer"]
    if not paths:
        raise SystemExit(f"{manifest}: no customer utterances")
    return [read_mono(paths[i % len(paths)]) for i in range(n)]


def cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def stream(reader, clips: list[np.ndarray], rate: float, seed: int) -> dict:
    from daemon.batcher import Batcher, BatcherOptions

    live = reader._live
    batcher = Batcher(reader, BatcherOptions())
    for c in clips[:3]:  # warm-up: first calls allocate
        batcher.submit(c).result(timeout=60)
    clips = clips[3:]
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, len(clips))
    results: list = [None] * len(clips)
    runs_before, cpu0, t0 = live.graph_runs, cpu_seconds(), time.perf_counter()

    def feed():
        due = time.perf_counter()
        for i, (clip, gap) in enumerate(zip(clips, gaps)):
            due += gap
            time.sleep(max(0.0, due - time.perf_counter()))
            submitted = time.perf_counter()
            future = batcher.submit(clip)
            future.add_done_callback(lambda f, i=i, s=submitted: results.__setitem__(i, (time.perf_counter() - s,
                                                                                         f.result())))
    feeder = threading.Thread(target=feed)
    feeder.start()
    feeder.join()
    deadline = time.monotonic() + 120
    while any(r is None for r in results) and time.monotonic() < deadline:
        time.sleep(0.01)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    batcher.close()
    done = [r for r in results if r is not None]
    latency = np.array([s for s, _ in done]) * 1000
    decode = np.array([r.spans["decode"] for _, r in done if r is not None and "decode" in r.spans]) * 1000
    return {"rate": rate, "utterances": len(done), "missing": len(clips) - len(done),
            "p50": float(np.percentile(latency, 50)), "p95": float(np.percentile(latency, 95)),
            "p99": float(np.percentile(latency, 99)), "decode_p50": float(np.percentile(decode, 50)),
            "decode_p99": float(np.percentile(decode, 99)),
            "steps_per_utterance": (live.graph_runs - runs_before) / max(1, len(done)),
            "cpu_percent": 100.0 * cpu / wall}


def main() -> int:
    from daemon.clips import ClipScorer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundles", default=str(REPO / "data" / "demo-bundle"))
    ap.add_argument("--prompts", type=Path, default=REPO / "prompts")
    ap.add_argument("--corpus", type=Path, default=REPO / "data" / "demo-corpus" / "manifest.jsonl")
    ap.add_argument("--rates", default="2,4,8")
    ap.add_argument("--utterances", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    clips = customer_clips(args.corpus, args.utterances + 3)
    rows = []
    print(f"{len(clips) - 3} customer utterances a rate, mean {np.mean([c.size for c in clips]) / 16000:.2f} s")
    print("| bundle | decoding | rate /s | p50 / p95 / p99 ms | decode p50 / p99 ms | graph runs per utterance | CPU % |")
    print("|---|---|---:|---|---|---:|---:|")
    for folder in args.bundles.split(","):
        reader = ClipScorer(folder, args.prompts).reader
        if not reader.reads_words:
            raise SystemExit(f"{folder}: no text path")
        how = "joining" if reader._live.joins else "cohorts"
        for rate in map(float, args.rates.split(",")):
            r = {"bundle": folder, "decoding": how, **stream(reader, clips, rate, args.seed)}
            rows.append(r)
            print(f"| {folder} | {how} | {rate:g} | {r['p50']:.0f} / {r['p95']:.0f} / {r['p99']:.0f} | "
                  f"{r['decode_p50']:.0f} / {r['decode_p99']:.0f} | {r['steps_per_utterance']:.1f} | "
                  f"{r['cpu_percent']:.0f} |" + (f" ({r['missing']} unanswered)" if r["missing"] else ""),
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
