"""Capacity: the most live stations a configuration sustains, beside the compute floor.

    python bench/capacity.py                               # HuBERT-base fp32 and int8, demo bundle
    python bench/capacity.py --rows hubert-int8 --threads 1,2 --max-batch 1,8 --max-wait-ms 0,5,20
    python bench/capacity.py --rows hubert-int8 --workers 2          # encode workers (broker)
    python bench/capacity.py --rows hubert-int8 --backend triton     # Triton backend
    python bench/capacity.py --quick                       # smoke: tiny bundle, 10-s windows

A probe starts `emoclapd run` (bench/service.py) with N replay stations and 10 `/ws`
clients. Every station is a customer (so every utterance is embedded) replaying, in real
time and in a loop, a one-voice track of the service benchmark's dialogue sentences
with pauses set so that the voice-activity segments fill half the loop; each station
has its own order of sentences and pauses, so utterances do not end in step. The window
spans utterances that end in it (at least `--seconds` and `--min-utterances`), each
awaited until a grace period after it.

Overhead of an event = its arrival at a client − the utterance's end − the VAD wait
(the silence the segmenter needs to close an utterance: (hangover − post padding),
rounded to frames, 180 ms by default), i.e. the time from the daemon having the audio
that closes the utterance to a client having its scores. A real-time replay hands the
daemon 100-ms chunks as each begins, so the closing audio arrives up to 100 ms early;
the overhead is counted from the start of the chunk that held it. A probe passes with p99 overhead ≤ `--limit-ms`
(300), no drops (queue_full, encoder_error, input overflows: `too_short` refusals of
voiced blips are not capacity), no client closed, and at most a handful of the
utterances spoken in the window missing. The search doubles N from `--start` until a
probe fails, then bisects (within 5 %), in at most `--budget-min` per row.

Floor (bench/floor.py): cores × GEMM rate ÷ (tower FLOP per audio second × speech
share), with the FLOP counted on the row's own graph at the track's utterance lengths
and int8 products priced at the measured int8 rate.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import select
import shlex
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import floor  # noqa: E402
from bench.probe import Probe, Setup, Window, probe, stage_table  # noqa: E402
from bench.service import free_port, stop  # noqa: E402
from bench.workload import tracks, vad_wait_s  # noqa: E402
from emoclap.audio import SAMPLE_RATE  # noqa: E402
from emoclap.segmenter import SegmenterOptions  # noqa: E402

ROWS = ("hubert-fp32", "hubert-int8", "hubert-int8-pieces", "demo", "whisper-fp32", "whisper-int8", "tiny")


def search(run: Callable[[int], Probe], start: int, max_n: int, budget_s: float,
           resolution: float = 0.05) -> list[Probe]:
    """Probes from `run(n)`: n doubles from `start` until one fails, then bisection until
    the largest pass and the smallest fail are within `resolution` (or 1) of each other;
    no new probe once `budget_s` has passed (the first always runs). Returns the probes by n."""
    deadline = time.monotonic() + budget_s
    probes: dict[int, Probe] = {}
    lo, hi, n = 0, None, max(1, min(start, max_n))
    while not probes or time.monotonic() < deadline:
        p = probes[n] = run(n)
        if p.ok:
            lo = n
        else:
            hi = n
            if p.why.startswith("daemon:") and lo == 0:
                break  # the configuration does not run at all
        if hi is None:
            if n >= max_n:
                break
            n = min(2 * n, max_n)
        elif hi - lo <= max(1, math.ceil(resolution * lo)):
            break
        else:
            n = (lo + hi) // 2
    return sorted(probes.values(), key=lambda p: p.n)


TRITON = ("{repo}/.venv-triton/bin/python -m daemon.triton_host {bundle} --grpc-port {grpc} --http-port {http} "
          "--metrics-port {metrics} --threads {threads}")


@contextlib.contextmanager
def triton_server(setup: Setup, command: str, workdir: Path):
    """For a Triton row, a Triton server (daemon.triton_host) on free ports for all of the
    row's probes; yields its pids and the [encoder] keys that point the daemon at it."""
    if setup.backend != "triton":
        yield [], {}
        return
    ports = {k: free_port() for k in ("grpc", "http", "metrics")}
    argv = shlex.split(command.format(repo=REPO, bundle=setup.bundle, threads=setup.threads, **ports))
    if not Path(argv[0]).exists():
        raise RuntimeError(f"{argv[0]} not found (run ./bootstrap test: it makes .venv-triton)")
    with open(workdir / "triton.log", "w+") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None:
                ready, _, _ = select.select([proc.stdout], [], [], 1.0)
                if ready and proc.stdout.readline().strip() == "ready":
                    break
            else:
                log.seek(0)
                raise RuntimeError("the Triton server did not start: " + (log.read()[-1000:] or "no output"))
            yield [proc.pid], {"triton_url": f"127.0.0.1:{ports['grpc']}"}
        finally:
            stop(proc, 30)


def transcriber_load(bundle: Path, segments: list[int], sets: dict) -> tuple[str, float] | None:
    """(precision, decoder FLOP over one loop of the track) where the row reads words."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    if not manifest.get("transcriber") or not sets.get("transcripts", {}).get("enabled", True):
        return None
    flop = sum(floor.transcriber_flop(bundle, n / SAMPLE_RATE) or 0.0 for n in segments)
    return floor.transcriber_kind(bundle), flop


def bundle_for(row: str, workdir: Path) -> Path:
    if Path(row).is_dir():
        return Path(row).resolve()
    if row == "hubert-int8-pieces":  # the same tower encoded in 1-s pieces
        from bench.encoder import CONFIG, build_in_pieces
        folder = REPO / "var" / "bench-encoder" / CONFIG.stem / "int8-pieces"
        if not (folder / "manifest.json").exists():
            build_in_pieces(folder)
        return folder
    if row.startswith("hubert-"):
        from bench.encoder import CONFIG
        folder = REPO / "var" / "bench-encoder" / CONFIG.stem / row.removeprefix("hubert-")
        if not (folder / "manifest.json").exists():
            from bench.encoder import build
            build(REPO / "var" / "bench-encoder")
        return folder
    if row == "demo" and (REPO / "data" / "demo-bundle" / "manifest.json").exists():
        return REPO / "data" / "demo-bundle"
    if row in ("demo", "whisper-fp32", "whisper-int8"):
        folder = REPO / "var" / "bench-whisper"
        if not all((folder / p / "manifest.json").exists() for p in ("fp32", "int8")):
            subprocess.run([sys.executable, "bench/whisper_encoder.py", "--workdir", str(folder)], cwd=REPO, check=True)
        return folder / ("int8" if row.endswith("int8") else "fp32")
    if row == "tiny":
        from bench.service import build_bundle
        return build_bundle("tiny", workdir)
    raise SystemExit(f"unknown row {row!r}: one of {', '.join(ROWS)} or a bundle folder")


NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def parse_sets(items: list[str]) -> dict[str, dict]:
    """`SECTION.KEY=VALUE` or `KEY=VALUE` (top level); VALUE in TOML, or a bare word taken
    as a string → {section: {key: value}}. ValueError names the item that is wrong."""
    out: dict[str, dict] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        section, _, name = key.strip().rpartition(".")
        if not eq or not NAME.fullmatch(name) or (section and not NAME.fullmatch(section)) or "\n" in raw:
            raise ValueError(f"--set {item[:80]!r}: expected SECTION.KEY=VALUE (one line, names of letters, "
                             "digits and _)")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out.setdefault(section, {})[name] = value
    return out


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="hubert-fp32,hubert-int8,demo", help=f"comma list of {', '.join(ROWS)} or bundle folders")
    ap.add_argument("--threads", default="0", help="encoder.threads, comma list (0: one per physical core)")
    ap.add_argument("--max-batch", default="8", help="encoder.max_batch, comma list")
    ap.add_argument("--max-wait-ms", default="0", help="encoder.max_wait_ms, comma list (default: the daemon's, 0)")
    ap.add_argument("--workers", type=int, default=1, help="[stages] workers (encode workers behind the broker)")
    ap.add_argument("--worker-command", default="{python} -m daemon.cli encode --config {config}",
                    help="an encode worker joining the gateway's broker, started workers - 1 times per probe")
    ap.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "triton"), help="[encoder] backend")
    ap.add_argument("--triton-command", default=TRITON, help="the Triton server for --backend triton, once per row")
    ap.add_argument("--provider", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="any other config key")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--share", type=float, default=0.5, help="VAD segments' share of each station's loop")
    ap.add_argument("--limit-ms", type=float, default=300.0, help="p99 overhead a probe may have")
    ap.add_argument("--seconds", type=float, default=45.0, help="shortest window")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="longest window")
    ap.add_argument("--min-utterances", type=int, default=200, help="utterances a window must span")
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--start", type=int, default=4)
    ap.add_argument("--max-stations", type=int, default=256)
    ap.add_argument("--budget-min", type=float, default=25.0, help="time per row for its search")
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny bundle, N ≤ 8, 10-s windows")
    ap.add_argument("--json", type=Path, help="write every probe here")
    ap.add_argument("--workdir", type=Path, default=REPO / "var" / "bench-capacity")
    args = ap.parse_args()
    if args.quick:
        if args.rows == ap.get_default("rows"):
            args.rows = "tiny"
        args.seconds, args.max_seconds, args.min_utterances, args.warmup = 10.0, 20.0, 0, 3.0
        args.start, args.max_stations, args.budget_min = 2, min(args.max_stations, 8), min(args.budget_min, 4.0)
    args.workdir.mkdir(parents=True, exist_ok=True)

    try:
        sets = parse_sets(args.set)
    except ValueError as exc:
        ap.error(str(exc))
    segmenter = SegmenterOptions(**sets.get("segmenter", {}))
    w = Window(args.clients, args.warmup, args.seconds, args.max_seconds, args.min_utterances,
               args.limit_ms / 1000, vad_wait_s(segmenter), SAMPLE_RATE * segmenter.frame_ms // 1000)
    work = tracks(args.workdir, args.share, segmenter)
    lengths = ", ".join(f"{s / SAMPLE_RATE:.1f}" for s in work.segments)
    print(f"workload: {work.loop_s:.1f}-s loop per station, {len(work.segments)} utterances ({lengths} s), "
          f"VAD segments {work.share:.1%} of it (voiced {work.speech_s / work.loop_s:.1%}); {args.clients} clients; "
          f"VAD wait {w.vad_s * 1000:.0f} ms; load average {os.getloadavg()[0]:.2f}", flush=True)
    rates = floor.gemm_rates(args.cores, int8=True)
    print("\n".join(floor.describe_rates(rates)), flush=True)

    setups = [Setup(row, bundle_for(row, args.workdir), t, b, mw, args.workers, args.backend, args.provider, sets)
              for row in args.rows.split(",")
              for t, b, mw in itertools.product(ints(args.threads), ints(args.max_batch), ints(args.max_wait_ms))]
    floors: dict[Path, float] = {}
    for bundle in dict.fromkeys(s.bundle for s in setups):
        flops = floor.GraphFlops(bundle / "audio_encoder.onnx", floor.piece_samples(bundle))
        per_loop = dict.fromkeys(floor.KINDS, 0.0)
        for samples in work.segments:
            for k, v in flops(samples).items():
                per_loop[k] += v
        audio_only = sum(per_loop.values())
        decoder = transcriber_load(bundle, work.segments, sets)
        if decoder:
            per_loop[decoder[0]] += decoder[1]
        load = {k: v / work.loop_s for k, v in per_loop.items()}
        extra = f"; at the track's utterances {audio_only / (sum(work.segments) / SAMPLE_RATE) / 1e9:.2f}"
        if decoder:
            extra += (f"; the text path's decoder {decoder[1] / (sum(work.segments) / SAMPLE_RATE) / 1e9:.2f} "
                      f"({decoder[0]}, at its token bound) on top")
        if floor.is_hubert_base(bundle):
            extra += "; HuBERT-base by hand " + ", ".join(
                f"{s:g} s {floor.hubert_analytic(s) / s / 1e9:.2f}" for s in (1.0, 10.0))
        print(floor.describe_flops(str(bundle.relative_to(REPO) if bundle.is_relative_to(REPO) else bundle),
                                   flops, extra), flush=True)
        floors[bundle] = floor.floor_stations(load, rates)
        del flops

    results = []
    for setup in setups:
        print(f"\n{setup.label()}, workers {setup.workers}, backend {setup.backend}, provider {setup.provider} "
              f"({setup.bundle}); floor {floors[setup.bundle]:.1f} stations", flush=True)
        try:
            with triton_server(setup, args.triton_command, args.workdir) as (helpers, keys):
                setup.sets = {**setup.sets, "encoder": {**setup.sets.get("encoder", {}), **keys}}
                def run(n: int, setup=setup, helpers=helpers) -> Probe:
                    p = probe(setup, n, work, w, args.workdir, args.worker_command, helpers)
                    print(p.line(), flush=True)
                    print(stage_table(p.stages), flush=True)
                    return p
                probes = search(run, args.start, args.max_stations, args.budget_min * 60)
        except RuntimeError as exc:
            print(f"  not run: {exc}", flush=True)
            probes = []
        best = max((p for p in probes if p.ok), key=lambda p: p.n, default=None)
        results.append((setup, probes, best))
        if args.json:
            args.json.write_text(json.dumps([{"setup": {**asdict(s), "bundle": str(s.bundle)}, "floor": floors[s.bundle],
                                              "probes": [asdict(p) for p in ps]} for s, ps, _ in results], indent=1))

    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    print("\n| config | threads | max_batch | max_wait_ms | workers | backend | floor stations | sustained stations "
          "| sustained/floor | p99 overhead ms at sustained N | CPU % at sustained N |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for s, probes, best in results:
        fl = floors[s.bundle] if s.provider == "cpu" else float("nan")
        first_fail = min((p.n for p in probes if not p.ok and (best is None or p.n > best.n)), default=None)
        sustained = (f"{best.n}" if best else "0") + (f" (< {first_fail})" if first_fail else " (search ended)")
        print(f"| {s.row} | {s.threads} | {s.max_batch} | {s.max_wait_ms} | {s.workers} | {s.backend} | {fl:.1f} | "
              f"{sustained} | {(best.n if best else 0) / fl:.2f} | {best.p99_ms if best else float('nan'):.0f} | "
              f"{best.cpu if best else float('nan'):.0f} |")


if __name__ == "__main__":
    main()
