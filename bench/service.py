"""Service benchmark: N stations replaying a dialogue in real time, M WebSocket clients.

    python bench/service.py                          # HuBERT-base-sized tower, N = 1,2,4,8
    python bench/service.py --stations 1,4,16 --clients 1,20 --seconds 40 --model tiny

Each run starts `emoclapd run` as a subprocess with N replay stations (the same
synthetic espeak-ng dialogue, each station starting at a different point so bursts do
not line up) and M clients on `/ws`. It reports, per run: utterance events received
per client, latency from the utterance's end (in stream time, mapped to the wall clock)
to the event reaching a client (p50/p95/p99; this includes the segmenter's hangover:
an utterance is known to be over only after `hangover_ms` of silence), drops by reason
from `/metrics`, the daemon's CPU (percent of one core) and peak RSS. The first row
(N and M smallest) is the baseline of the same run; `p95/base` compares with it.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import websockets  # noqa: E402

from emoclap.audio import write_wav  # noqa: E402
from tests.stagekit import stereo_dialogue  # noqa: E402

TURNS = [(0, 0.8), (0, "Good afternoon, can I help you find anything today?"), (0, 0.9),
         (1, "Yes, I am looking for a warm coat for the winter."), (1, 0.7),
         (0, "These wool coats arrived last week, they are very popular."), (0, 1.1),
         (1, "How much is the grey one?"), (1, 0.8),
         (0, "That one is one hundred and twenty dollars."), (0, 1.0),
         (1, "Hmm, that is a bit more than I wanted to spend."), (1, 1.2),
         (0, "We also have this one, which is on sale."), (0, 0.9),
         (1, "Oh, that is lovely. I think I will take it."), (1, 1.5)]


def build_bundle(kind: str, workdir: Path) -> Path:
    """`tiny`: the test bundle; `base`: a HuBERT-base-sized audio tower (random weights),
    both built by the trainer's own model and export from their configs."""
    from tests.tiny_bundle import build_bundle as build, build_tiny_bundle

    folder = workdir / f"bundle-{kind}"
    if (folder / "manifest.json").exists():
        return folder
    print(f"building the {kind} bundle in {folder} (once)", flush=True)
    if kind == "base":
        build(folder, REPO / "configs" / "bench-hubert-base.toml", languages=("en", "ja"),
              description="benchmark: HuBERT-base-sized audio tower, random weights")
    else:
        build_tiny_bundle(folder)
    return folder


def make_audio(workdir: Path, n: int) -> list[Path]:
    """n rotations of one stereo dialogue, so stations do not speak in lockstep."""
    base = workdir / "dialogue.wav"
    stereo, spans = stereo_dialogue(workdir, TURNS)
    paths = []
    for i in range(n):
        shift = int(i * stereo.shape[1] / max(n, 1))
        path = workdir / f"dialogue-{i}.wav"
        if not path.exists():
            write_wav(path, np.roll(stereo, -shift, axis=1))
        paths.append(path)
    write_wav(base, stereo)
    per_loop = len(spans[0]) + len(spans[1])
    return paths, per_loop, stereo.shape[1] / 16000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM (the daemon drains), SIGKILL if it takes longer than `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, (str, list)) else str(value)


def write_config(workdir: Path, bundle: Path, files: list[Path], n: int, port: int,
                 threads: int, *, roles=("staff", "customer"), channels=(0, 1),
                 sections: dict[str, dict] | None = None) -> Path:
    """Station i plays files[i], channel channels[i % ...], as roles[i % ...]; `sections`
    adds or overrides keys (section "" is the top level: provider, ...)."""
    sections = {k: dict(v) for k, v in (sections or {}).items()}
    top = {"bundle": str(bundle), "prompts": str(REPO / "prompts"), "cache": "cache.sqlite3",
           **sections.pop("", {})}
    merged = {"history": {"path": "history.sqlite3"}, "server": {"port": port, "max_clients": 1000},
              "rolling": {"interval_s": 2.0}, "encoder": {"threads": threads}}
    for name, keys in sections.items():
        merged.setdefault(name, {}).update(keys)
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for name, keys in merged.items():
        lines += [f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    for i in range(n):
        lines += ["[[stations]]", f'name = "st{i:02d}"', f'file = "{files[i % len(files)]}"',
                  f"channel = {channels[i % len(channels)]}", f'role = "{roles[i % len(roles)]}"', "loop = true"]
    path = workdir / f"config-{n}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else 0.0


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_threads(pid: int) -> int:
    m = re.search(r"Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) if m else 0


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    drops: dict[str, float] = {}
    for m in re.finditer(r'emoclap_dropped_utterances_total\{reason="(\w+)",station="[^"]*"\} ([0-9.e+]+)|'
                         r'emoclap_dropped_utterances_total\{station="[^"]*",reason="(\w+)"\} ([0-9.e+]+)', text):
        reason, value = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        drops[reason] = drops.get(reason, 0) + float(value)
    over = sum(float(v) for v in re.findall(r"emoclap_input_overflows_total\{[^}]*\} ([0-9.e+]+)", text))
    if over:
        drops["input_overflow"] = over
    return drops


async def client(port: int, latencies: list[float], counts: list[int], i: int, stop: asyncio.Event,
                 warm_until: float, on_event=None) -> None:
    """Client i counts utterance events after `warm_until`, or hands each one to
    `on_event(i, msg, received)` instead."""
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_queue=None) as ws:
        while not stop.is_set():
            try:
                text = await asyncio.wait_for(ws.recv(), 0.5)
            except asyncio.TimeoutError:
                continue
            now = time.time()
            if '"type":"utterance"' not in text[:30]:
                continue
            msg = json.loads(text)
            if on_event is not None:
                on_event(i, msg, now)
                continue
            if now < warm_until:
                continue
            counts[i] += 1
            latencies.append(now - msg["time"])


async def measure(port: int, pid: int, m: int, seconds: float, warmup: float) -> dict:
    latencies: list[float] = []
    counts = [0] * m
    stop = asyncio.Event()
    warm_until = time.time() + warmup
    tasks = [asyncio.create_task(client(port, latencies, counts, i, stop, warm_until)) for i in range(m)]
    await asyncio.sleep(warmup)
    cpu0, t0, rss = proc_cpu_s(pid), time.monotonic(), 0.0
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(0.5)
        rss = max(rss, proc_rss_mb(pid))
    cpu = (proc_cpu_s(pid) - cpu0) / (time.monotonic() - t0) * 100
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"lat": latencies, "counts": counts, "cpu": cpu, "rss": rss}


@contextlib.contextmanager
def running_daemon(workdir: Path, cfg: Path, port: int, threads: int, start_timeout: float = 120.0):
    """`emoclapd run --config cfg` with a fresh history, up (its /healthz answers) until the
    block ends; a daemon that exits early raises RuntimeError with its stderr."""
    for stale in ("history.sqlite3", "history.sqlite3-wal", "history.sqlite3-shm"):
        (workdir / stale).unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(max(threads, 1)))
    # stderr goes to a file: a pipe nobody reads would block a chatty daemon.
    with open(workdir / "daemon.log", "w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(cfg)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            deadline = time.time() + start_timeout
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        log.seek(0)
                        raise RuntimeError(log.read()[-4000:] or "the daemon did not start") from None
                    time.sleep(0.3)
            yield proc
        finally:
            stop(proc, 60)


def run_one(workdir, bundle, files, n, m, seconds, warmup, threads) -> dict:
    port = free_port()
    cfg = write_config(workdir, bundle, files, n, port, threads)
    with running_daemon(workdir, cfg, port, threads) as proc:
        result = asyncio.run(measure(port, proc.pid, m, seconds, warmup))
        result["drops"] = scrape(port)
    return result


def pct(values, q):
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stations", default="1,2,4,8")
    ap.add_argument("--clients", default="1,10")
    ap.add_argument("--seconds", type=float, default=40.0, help="measured time per run")
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--model", default="base", choices=("base", "tiny"))
    ap.add_argument("--threads", type=int, default=0, help="encoder.threads (0: ONNX Runtime's choice)")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "emoclap-bench-service"))
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(args.model, workdir)
    ns = [int(x) for x in args.stations.split(",")]
    ms = [int(x) for x in args.clients.split(",")]
    files, per_loop, loop_s = make_audio(workdir, max(ns))
    expected_rate = per_loop / 2 / loop_s  # utterances per second per station (one channel)
    print(f"model {args.model}; dialogue {loop_s:.1f} s, {per_loop} utterances over both channels; "
          f"{args.seconds:.0f} s measured per run after {args.warmup:.0f} s warm-up; "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    print("| stations | clients | events/client | expected | p50 ms | p95 ms | p99 ms | p95/base | drops | CPU % | RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    base = None
    for n in ns:
        for m in ms:
            r = run_one(workdir, bundle, files, n, m, args.seconds, args.warmup, args.threads)
            lat = r["lat"]
            p95 = pct(lat, 95)
            base = base or p95
            drops = ", ".join(f"{k} {int(v)}" for k, v in sorted(r["drops"].items())) or "0"
            per_client = sum(r["counts"]) / max(m, 1)
            print(f"| {n} | {m} | {per_client:.0f} | {expected_rate * n * args.seconds:.0f} | "
                  f"{pct(lat, 50):.0f} | {p95:.0f} | {pct(lat, 99):.0f} | {p95 / base:.2f} | {drops} | "
                  f"{r['cpu']:.0f} | {r['rss']:.0f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if os.environ.get("EMOCLAP_BENCH_CLEAN"):
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
