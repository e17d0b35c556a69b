"""Soak: the daemon at a steady station count for a long time; does anything grow?

    python bench/soak.py                          # demo bundle, 4 stations, 60 minutes
    python bench/soak.py --minutes 5 --stations 2 --bundle DIR

`emoclapd run` (bench/service.py) with N real-time replay stations (the capacity
benchmark's tracks, every station a customer) and 10 `/ws` clients (bench/listeners.py).
Every `--sample-s` the daemon's RSS, open file descriptors and threads are read from
/proc, and every utterance event's overhead is kept. The table has one row per
`--row-min` minutes. Verdicts, after `--warmup-min` minutes of warm-up (allocators and
caches filling): RSS grows < 5 % from the end of the warm-up to the end; fds and threads
in the second half of the measured time no higher than in the first (a pool that fills
to its bound, as asyncio's worker threads do, is not growth; a leak keeps going); p99
overhead is flat (the last row's p99
≤ 1.25 × the first measured row's + 20 ms); no drops; no client closed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.capacity import bundle_for  # noqa: E402
from bench.listeners import Listeners  # noqa: E402
from bench.probe import NOT_CAPACITY, tree_cpu_s  # noqa: E402
from bench.service import free_port, pct, proc_fds, proc_rss_mb, proc_threads, running_daemon, scrape, write_config  # noqa: E402
from bench.workload import tracks, vad_wait_s  # noqa: E402
from emoclap.audio import SAMPLE_RATE  # noqa: E402
from emoclap.segmenter import SegmenterOptions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="demo", help="a bundle folder, or a capacity row name (default: demo)")
    ap.add_argument("--stations", type=int, default=4, help="the sustained N of bench/capacity.py")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--warmup-min", type=float, default=5.0)
    ap.add_argument("--row-min", type=float, default=5.0)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path, default=REPO / "var" / "bench-soak")
    args = ap.parse_args()
    args.workdir = args.workdir.resolve()  # the config written there names files by absolute path
    args.workdir.mkdir(parents=True, exist_ok=True)
    bundle = bundle_for(args.bundle, args.workdir)
    options = SegmenterOptions()
    work = tracks(args.workdir, 0.5, options)
    port = free_port()
    cfg = write_config(args.workdir, bundle, work.files(args.stations), args.stations, port, 0,
                       roles=("customer",), channels=(0,), sections={"privacy": {"scored_roles": ["customer"]}})
    print(f"soak: {bundle}, {args.stations} stations, {args.clients} clients, {args.minutes:g} min "
          f"(warm-up {args.warmup_min:g}); load average {os.getloadavg()[0]:.2f}", flush=True)
    samples: list[dict] = []
    with running_daemon(args.workdir, cfg, port, 0) as proc:
        frame = SAMPLE_RATE * options.frame_ms // 1000
        with Listeners(port, args.clients, work, vad_wait_s(options), frame) as listeners:
            start = time.time()
            end = start + args.minutes * 60
            while time.time() < end and proc.poll() is None:
                samples.append({"t": time.time() - start, "rss": proc_rss_mb(proc.pid), "fds": proc_fds(proc.pid),
                                "threads": proc_threads(proc.pid), "cpu_s": tree_cpu_s([proc.pid])})
                time.sleep(min(args.sample_s, max(0.0, end - time.time())))
            drops = scrape(port) if proc.poll() is None else {"daemon died": 1}
            seen = listeners.events()
            closed = list(listeners.closed)
    rows = table(samples, seen, start, args)
    drops = {k: v for k, v in drops.items() if k not in NOT_CAPACITY and v}
    warm = [s for s in samples if s["t"] >= args.warmup_min * 60]
    verdicts = verdict(warm, rows, drops, closed)
    print("\n| minutes | events per client | p50 ms | p99 ms | RSS MiB | fds | threads | CPU % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['from']:g}–{r['to']:g} | {r['events']:.0f} | {r['p50']:.0f} | {r['p99']:.0f} | "
              f"{r['rss']:.1f} | {r['fds']} | {r['threads']} | {r['cpu']:.0f} |")
    print()
    for line in verdicts:
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         "samples": samples, "drops": drops, "closed": closed,
                                         "verdicts": verdicts}, indent=1))


def table(samples: list[dict], seen, start: float, args) -> list[dict]:
    rows, step = [], args.row_min * 60
    t = 0.0
    while t < args.minutes * 60 - 1e-6:
        part = [s for s in samples if t <= s["t"] < t + step]
        events = [e.overhead for e in seen if t <= e.time - start < t + step]
        if part:
            span = part[-1]["t"] - part[0]["t"]
            cpu = (part[-1]["cpu_s"] - part[0]["cpu_s"]) / span * 100 if span > 0 else float("nan")
            rows.append({"from": t / 60, "to": min(t + step, args.minutes * 60) / 60,
                         "events": len(events) / args.clients, "p50": pct(events, 50),
                         "p99": pct(events, 99), "rss": part[-1]["rss"], "fds": part[-1]["fds"],
                         "threads": part[-1]["threads"], "cpu": cpu})
        t += step
    return rows


def verdict(warm: list[dict], rows: list[dict], drops: dict, closed: list) -> list[str]:
    if len(warm) < 2:
        return ["FAIL: too short a run to judge (no samples after the warm-up)"]
    first, last = warm[0], warm[-1]
    half = [s for s in warm if s["t"] >= (first["t"] + last["t"]) / 2]
    early = [s for s in warm if s["t"] < half[0]["t"]] or warm[:1]
    growth = (last["rss"] - first["rss"]) / first["rss"] * 100
    measured = [r for r in rows if r["from"] * 60 >= first["t"] - 1e-6] or rows
    p99_first, p99_last = measured[0]["p99"], measured[-1]["p99"]
    checks = [(growth < 5.0, f"RSS after warm-up {first['rss']:.1f} → {last['rss']:.1f} MiB ({growth:+.1f} %, limit +5 %)"),
              (max(s["fds"] for s in half) <= max(s["fds"] for s in early),
               f"open fds {first['fds']} → {last['fds']} (max first half {max(s['fds'] for s in early)}, "
               f"second half {max(s['fds'] for s in half)})"),
              (max(s["threads"] for s in half) <= max(s["threads"] for s in early),
               f"threads {first['threads']} → {last['threads']} (max first half {max(s['threads'] for s in early)}, "
               f"second half {max(s['threads'] for s in half)})"),
              (p99_last <= 1.25 * p99_first + 20, f"p99 overhead first/last measured row {p99_first:.0f} / {p99_last:.0f} ms"),
              (not drops, f"drops: {drops or 0}"),
              (not closed, f"clients closed: {len(closed)}")]
    return [("pass: " if ok else "FAIL: ") + text for ok, text in checks]


if __name__ == "__main__":
    main()
