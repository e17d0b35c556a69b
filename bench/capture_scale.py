"""The capture side at many stations: does one thread per input hold up at 100?

`emoclapd capture` replays the capacity workload (bench/workload.py: 50 % speech, each
station its own phase) in real time to a PULL socket this benchmark binds, laid out two
ways with the same stations:

- `a file per station`: N inputs, so N capture threads (how the capacity bench and a
  store with one USB microphone per till run);
- `one N-channel file`: one input, one thread, station i on channel i (an audio
  interface with many inputs).

For each it reports the capture process's CPU (one core = 100 %) and threads, the
utterances received against those the workload holds, and how late each utterance left
the segmenter: `emitted − (end of its audio)` minus the segmenter's own hangover wait
(`bench.workload.vad_wait_s`), above the least of its station (each replay stream has a
constant offset of its own: its clock starts before the file is read), i.e. the time
the utterance waited for the interpreter, at p50, p99 and worst. Bounded: `--seconds`
per probe after `--warmup`.

    python bench/capture_scale.py --stations 1,10,50,100 --seconds 30
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.service import proc_cpu_s, proc_rss_mb  # noqa: E402
from bench.workload import tracks, vad_wait_s  # noqa: E402
from emoclap import wire  # noqa: E402
from emoclap.audio import write_wav  # noqa: E402
from emoclap.segmenter import SegmenterOptions  # noqa: E402

LAYOUTS = ("a file per station", "one N-channel file")


def config(workdir: Path, endpoint: str, stations: list[tuple[str, int | None]]) -> Path:
    lines = [f'prompts = "{REPO / "prompts"}"', "[stages]", f'utterances = "{endpoint}"',
             "status_interval_s = 1.0"]
    for i, (file, channel) in enumerate(stations):
        lines += ["[[stations]]", f'name = "st{i:03d}"', f'file = "{file}"', 'role = "customer"',
                  "loop = true", "realtime = true"] + ([f"channel = {channel}"] if channel is not None else [])
    path = workdir / "capture.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def probe(workdir: Path, layout: str, n: int, files: list[Path], seconds: float, warmup: float,
          hangover_s: float) -> dict:
    if layout == LAYOUTS[0]:
        stations = [(str(f), None) for f in files[:n]]
    else:
        many = workdir / f"stations-{n}ch.wav"
        if not many.exists():
            import soundfile as sf
            tracks_ = [sf.read(f, dtype="float32")[0] for f in files[:n]]
            size = min(t.size for t in tracks_)
            write_wav(many, np.stack([t[:size] for t in tracks_]))  # [channels, samples]
        stations = [(str(many), i) for i in range(n)]
    endpoint = f"ipc://{workdir}/utterances-{os.getpid()}"
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(endpoint)
    proc = subprocess.Popen([str(REPO / ".venv/bin/emoclapd"), "capture", "--config",
                             str(config(workdir, endpoint, stations))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=workdir)
    waits, counted, cpu0, started = {}, 0, None, time.monotonic()
    try:
        end = started + warmup + seconds
        while (now := time.monotonic()) < end:
            if cpu0 is None and now >= started + warmup:
                cpu0, t0, rss = proc_cpu_s(proc.pid), now, 0.0
            if proc.poll() is not None:
                raise RuntimeError(f"emoclapd capture exited: {proc.stderr.read()[-2000:]}")
            if not pull.poll(200):
                continue
            while True:
                try:
                    frames = pull.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = wire.decode(frames)
                if msg.kind != "segment" or cpu0 is None:
                    continue
                utt = msg.utterance
                counted += 1
                waits.setdefault(utt.station, []).append(utt.emitted - utt.time - hangover_s)
            if cpu0 is not None:
                rss = max(rss, proc_rss_mb(proc.pid))
        cpu = (proc_cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
        n_threads = threads(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        pull.close()
    # Above each station's least: a replay stream's clock starts before its file is read
    # and its 100-ms blocks are fed as they fall due, so each station has its own constant
    # offset; what load adds is the spread above it.
    w = np.concatenate([np.array(v) - min(v) for v in waits.values()]) * 1000 if waits else np.zeros(1)
    return {"layout": layout, "stations": n, "threads": n_threads, "cpu_pct": round(cpu, 1),
            "cpu_pct_per_station": round(cpu / n, 2), "rss_mb": round(rss, 1), "utterances": counted,
            "wait_p50_ms": round(float(np.percentile(w, 50)), 1),
            "wait_p99_ms": round(float(np.percentile(w, 99)), 1), "wait_max_ms": round(float(w.max()), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stations", default="1,10,50,100")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--workdir", type=Path, default=REPO / "var" / "bench-capacity")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    counts = [int(x) for x in args.stations.split(",")]
    options = SegmenterOptions()
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = tracks(args.workdir, 0.5, options)
    files = work.files(max(counts))
    expected = work.rate * args.seconds
    rows = []
    with tempfile.TemporaryDirectory(prefix="capture-scale-", dir=args.workdir) as tmp:
        for n in counts:
            for layout in LAYOUTS:
                row = probe(Path(tmp), layout, n, files, args.seconds, args.warmup, vad_wait_s(options))
                row["expected"] = round(expected * n)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\nworkload: {work.loop_s:.1f}-s loops, {work.rate * 60:.1f} utterances a minute a station, "
          f"{work.share:.0%} speech; {args.seconds:g} s a probe after {args.warmup:g} s; "
          f"{os.cpu_count()} CPUs\n")
    print("| layout | stations | threads | CPU % | CPU % a station | RSS MB | utterances (expected) "
          "| waited p50 / p99 / max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['stations']} | {r['threads']} | {r['cpu_pct']} | {r['cpu_pct_per_station']} "
              f"| {r['rss_mb']} | {r['utterances']} ({r['expected']}) "
              f"| {r['wait_p50_ms']} / {r['wait_p99_ms']} / {r['wait_max_ms']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
