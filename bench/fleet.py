"""Fleet benchmark: encode throughput of 1 worker against 2, each pinned to its own core.

    python bench/fleet.py                      # HuBERT-base-sized tower, 96 utterances of 2-4 s
    python bench/fleet.py --quick --model tiny # a smoke run (seconds)
    python bench/fleet.py --bundle DIR         # an exported bundle instead of building one

A gateway (the serve stage, in this process, history off; on the other cores, if any)
and `emoclapd encode` processes started with `taskset -c CORE` and `[encoder] threads =
1`, joined over ipc:// as a deployment joins them over tcp://. The same burst of
utterances (seeded noise, so every run encodes the same audio) is pushed to the gateway
as a capture agent pushes it, after a warm-up that each worker answers; the time runs
from the first utterance sent to the last one published. The audio tower (configs/bench-hubert-base.toml:
HuBERT-base-sized, random weights, built by the trainer's own model and export) is heavy
enough that encoding, not the broker, sets the pace. Target: 2 workers ≥ 1.7× one.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from daemon.config import parse_config  # noqa: E402
from daemon.links import Sender  # noqa: E402
from daemon.service import Service  # noqa: E402
from emoclap.record import Utterance  # noqa: E402

CONFIG = REPO / "configs" / "bench-hubert-base.toml"


def bundle_for(kind: str, workdir: Path) -> Path:
    from tests.tiny_bundle import build_bundle, build_tiny_bundle

    folder = workdir / f"bundle-{kind}"
    if not (folder / "manifest.json").exists():
        print(f"building the {kind} bundle in {folder} (once)", flush=True)
        if kind == "base":
            build_bundle(folder, CONFIG, description="benchmark: HuBERT-base-sized tower, random weights")
        else:
            build_tiny_bundle(folder)
    return folder


def burst(n: int, seconds: tuple[float, float], seed: int, station: str) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    t0, out, at = time.time(), [], 0.0
    for seq in range(1, n + 1):
        length = float(rng.uniform(*seconds))
        audio = (rng.standard_normal(int(length * 16000)) * 0.1).astype(np.float32)
        out.append(Utterance(station, "customer", seq, at, at + length, t0, time.time(), audio=audio))
        at += length + 0.5
    return out


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def run(args, bundle: Path, folder: Path) -> list[dict]:
    workers_endpoint = f"ipc://{folder}/w.sock"
    text = f'''bundle = "{bundle}"
prompts = "{REPO / 'prompts'}"
cache = "{folder / 'cache.sqlite3'}"
[history]
enabled = false
[server]
port = 0
[encoder]
max_batch = {args.max_batch}
threads = 1
[stages]
utterances = "ipc://{folder}/u.sock"
workers = "{workers_endpoint}"
hwm = 10000
'''
    (folder / "fleet.toml").write_text(text)
    cfg = parse_config(text, "fleet.toml")
    svc = Service(cfg, ("serve",))
    await svc.start()
    broker, floor = svc.parts.broker, svc.parts.floor
    sender = Sender(cfg.stages.utterances, 10000, block=True)
    rows, seed = [], 0
    try:
        for count, cores in ((1, args.cores[:1]), (2, args.cores[:2])):
            procs = [subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-m", "daemon.cli", "encode",
                                       "--config", str(folder / "fleet.toml")], cwd=REPO,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for core in cores]
            try:
                pids = {p.pid for p in procs}
                await until(lambda: pids <= {w["pid"] for w in broker.snapshot()["workers"]}, 120, "workers")
                seed += 1
                warm = burst(2 * count, args.seconds, seed, f"warm-{count}")
                before = floor.published
                sender.send_utterances(warm)
                await until(lambda: floor.published >= before + len(warm), 300, "the warm-up")
                load = os.getloadavg()[0]
                work = burst(args.n, args.seconds, 1000, f"burst-{count}")  # the same audio each run
                before, started = floor.published, time.perf_counter()
                await asyncio.to_thread(sender.send_utterances, work)
                await until(lambda: floor.published >= before + args.n, 1800, "the burst")
                elapsed = time.perf_counter() - started
                answered = {w["pid"]: w["answered"] for w in broker.snapshot()["workers"]}
                audio_s = sum(u.duration for u in work)
                rows.append({"workers": count, "cores": ",".join(map(str, cores)), "n": args.n,
                             "seconds": elapsed, "rate": args.n / elapsed, "audio_rate": audio_s / elapsed,
                             "load": load, "answered": sorted(answered.values())})
                print(f"  {count} worker(s): {elapsed:.2f} s", flush=True)
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(30)
            await until(lambda: not (pids & {w["pid"] for w in broker.snapshot()["workers"]}), 30,
                        "the workers to leave")
    finally:
        sender.close()
        await svc.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("base", "tiny"), default="base")
    parser.add_argument("--bundle", type=Path, help="an exported bundle (default: build --model's)")
    parser.add_argument("--quick", action="store_true", help="12 utterances of 1-2 s: a smoke run")
    parser.add_argument("--n", type=int, default=96,
                        help="utterances in the burst; enough that two workers' last batches, which may "
                             "not end together, cost little (default %(default)s)")
    parser.add_argument("--cores", default="0,1", help="the two cores to pin workers to (default %(default)s)")
    parser.add_argument("--max-batch", type=int, default=4, help="[encoder] max_batch of each worker")
    parser.add_argument("--workdir", type=Path, default=REPO / "var" / "bench-fleet")
    args = parser.parse_args()
    args.cores = [int(c) for c in args.cores.split(",")]
    args.seconds = (1.0, 2.0) if args.quick else (2.0, 4.0)
    if args.quick:
        args.n = min(args.n, 12)
    if len(args.cores) < 2:
        raise SystemExit("--cores: give two cores")
    args.workdir.mkdir(parents=True, exist_ok=True)
    others = set(range(os.cpu_count() or 1)) - set(args.cores)
    if others:  # the gateway (this process) off the workers' cores; taskset overrides for them
        os.sched_setaffinity(0, others)
    # absolute: the workers read it from a config file that lives in another folder
    bundle = args.bundle.resolve() if args.bundle else bundle_for(args.model, args.workdir)
    with tempfile.TemporaryDirectory(prefix="fleet-", dir="/tmp") as tmp:  # ipc paths must be short
        rows = asyncio.run(run(args, bundle, Path(tmp)))
    print(f"\nbundle {bundle}; {args.n} utterances of {args.seconds[0]:g}-{args.seconds[1]:g} s, "
          f"max_batch {args.max_batch}, 1 ONNX Runtime thread per worker")
    print("| workers | cores | seconds | utterances/s | audio s/s | answered per worker | load (1 min) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['cores']} | {r['seconds']:.2f} | {r['rate']:.2f} | {r['audio_rate']:.1f} "
              f"| {'/'.join(map(str, r['answered']))} | {r['load']:.2f} |")
    ratio = rows[0]["seconds"] / rows[1]["seconds"]
    print(f"\n2 workers vs 1: {ratio:.2f}x (target >= 1.7x)")


if __name__ == "__main__":
    main()
