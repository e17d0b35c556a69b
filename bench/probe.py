"""One capacity probe: `emoclapd run` with N stations, 10 clients, one window of utterances."""
from __future__ import annotations

import asyncio
import math
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.service import REPO, client, free_port, pct, proc_rss_mb, running_daemon, scrape, stop, write_config
from bench.workload import Workload
from emoclap.audio import SAMPLE_RATE
from emoclap.latency import STAGES

NOT_CAPACITY = {"too_short"}  # refusals of what was said, not of load
REPLAY_CHUNK = SAMPLE_RATE // 10  # what a real-time replay feeds at once (daemon/sources.py)


@dataclass
class Setup:
    """One row: a bundle and the settings it runs with."""
    row: str
    bundle: Path
    threads: int = 0
    max_batch: int = 8
    max_wait_ms: int = 0  # the daemon's default
    workers: int = 1
    backend: str = "onnxruntime"
    provider: str = "cpu"
    sets: dict = field(default_factory=dict)  # section -> {key: value}

    def sections(self, workdir: Path, port: int) -> dict[str, dict]:
        out = {k: dict(v) for k, v in self.sets.items()}
        out.setdefault("", {})["provider"] = self.provider
        out.setdefault("encoder", {}).update(max_batch=self.max_batch, max_wait_ms=self.max_wait_ms)
        out.setdefault("privacy", {})["scored_roles"] = ["customer"]
        if self.backend != "onnxruntime":
            out["encoder"]["backend"] = self.backend
        if self.workers > 1:  # the gateway's own worker and workers - 1 `emoclapd encode` joining it
            out.setdefault("stages", {}).setdefault("workers", f"ipc://{workdir}/workers-{port}.ipc")
        return out

    def label(self) -> str:
        return f"{self.row} t{self.threads} b{self.max_batch} w{self.max_wait_ms}"


def tree_cpu_s(pids: list[int]) -> float:
    """User + system seconds of the processes and all their descendants."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, list(pids)
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += (int(stats[pid][11]) + int(stats[pid][12])) / os.sysconf("SC_CLK_TCK")
        todo += children.get(pid, [])
    return total


def histogram_means(port: int) -> dict[str, float]:
    """Mean encoder call and segmenter-to-publish time (ms) over the daemon's life, and the
    encode workers alive at the end, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for key, name in (("encode_ms", "emoclap_encoder_batch_seconds"), ("publish_ms", "emoclap_event_latency_seconds")):
        total = re.search(rf"^{name}_sum(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
        count = re.search(rf"^{name}_count(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
        if total and count and float(count.group(1)):
            out[key] = float(total.group(1)) / float(count.group(1)) * 1000
    alive = re.search(r"^emoclap_workers_alive(?:{[^}]*})? ([0-9.e+-]+)$", text, re.M)
    if alive:  # encode workers the broker hears: did the extra ones join?
        out["workers"] = float(alive.group(1))
    return out


def fed_at(msg: dict, loop_samples: int, vad_s: float, frame: int) -> float:
    """Wall-clock time at which the replay gave the daemon the audio that closed the
    utterance: its end + the VAD wait, moved back to the start of the replay chunk that
    held it (a replay feeds each chunk when the chunk begins, up to 100 ms before a
    microphone could have; within each loop the chunks start again at sample 0)."""
    t0 = msg["time"] - msg["end"]
    close = round((msg["end"] + vad_s) * SAMPLE_RATE / frame) * frame  # frames tile the stream
    loop, pos = divmod(close - 1, loop_samples)
    return t0 + (loop * loop_samples + pos // REPLAY_CHUNK * REPLAY_CHUNK) / SAMPLE_RATE


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Window:
    clients: int
    warmup_s: float
    min_s: float
    max_s: float
    min_utterances: int
    limit_s: float
    vad_s: float
    frame: int  # samples per VAD frame


async def observe(port: int, pids: list[int], n: int, work: Workload, w: Window) -> dict:
    """Latency of the utterances that end in the window, as the clients see them."""
    expected_rate = n * work.rate
    span = min(w.max_s, max(w.min_s, w.min_utterances / max(expected_rate, 1e-9)))
    grace = max(2.0, 2 * w.limit_s + w.vad_s)
    seen: list[list[float]] = [[] for _ in range(w.clients)]
    parts: list[dict] = []  # one per event a client got: its overhead, split by stage
    t0 = time.time() + w.warmup_s
    t1 = t0 + span

    def on_event(i, msg, received):
        if t0 <= msg["time"] < t1:
            fed = fed_at(msg, work.loop_samples, w.vad_s, w.frame)
            seen[i].append(received - fed)
            if "latency_ms" in msg:
                parts.append(split(msg, fed, received))

    stop = asyncio.Event()
    tasks = [asyncio.create_task(client(port, [], [], i, stop, 0.0, on_event)) for i in range(w.clients)]
    why, cpu0, rss = "", None, 0.0
    planned = expected_rate * span * w.clients
    while time.time() < t1 + grace and not why:
        await asyncio.sleep(0.5)
        if cpu0 is None and time.time() >= t0:
            cpu0, c0 = tree_cpu_s(pids), time.monotonic()
        rss = max(rss, sum(proc_rss_mb(p) for p in pids if alive(p)))
        if any(t.done() for t in tasks):
            why = "a client was closed"
        elif not all(alive(p) for p in pids):
            why = "a process died"
        elif sum(x > w.limit_s for s in seen for x in s) > 0.01 * planned + w.clients:
            why = "p99 over the limit"  # more late events than the window's 1 % can be
    elapsed = time.monotonic() - c0 if cpu0 is not None else 0.0
    cpu = (tree_cpu_s(pids) - cpu0) / elapsed * 100 if elapsed > 0 else float("nan")
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"overheads": [x for s in seen for x in s], "per_client": [len(s) for s in seen],
            "expected": expected_rate * span, "span_s": span, "cpu": cpu, "rss": rss, "early": why,
            "stages": where_time_goes(parts)}


def split(msg: dict, fed: float, received: float) -> dict:
    """One event's overhead (ms) by part: the daemon's stages (`latency_ms`), with `closing`
    counted from the audio that closed it (`fed`), and `client`: its queue, the socket and
    the client's own loop (received − the daemon handing it over)."""
    ms = dict(msg["latency_ms"])
    ended = msg["time"]
    handed = ended + sum(ms.values()) / 1000
    ms["closing"] = ms.get("closing", 0.0) - (fed - ended) * 1000
    ms["client"] = (received - handed) * 1000
    ms["overhead"] = (received - fed) * 1000
    return ms


def where_time_goes(parts: list[dict]) -> dict[str, dict]:
    """Per part: p50 and p99 over every event, and its mean over the slowest 1 % of events
    (at least 5): what the p99 overhead is made of."""
    if not parts:
        return {}
    slow = sorted(parts, key=lambda m: m["overhead"])[-max(5, len(parts) // 100):]
    out = {}
    for name in (*STAGES, "client", "overhead"):
        values = [m.get(name, 0.0) for m in parts]
        out[name] = {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
                     "slowest": float(np.mean([m.get(name, 0.0) for m in slow]))}
    return out


def stage_table(stages: dict[str, dict]) -> str:
    if not stages:
        return "    (no per-stage times: the daemon's events carry no latency_ms)"
    rows = ["    part        p50 ms   p99 ms   mean in the slowest 1 %"]
    rows += [f"    {name:<10} {v['p50']:7.1f} {v['p99']:8.1f} {v['slowest']:9.1f}" for name, v in stages.items()]
    return "\n".join(rows)


@dataclass
class Probe:
    n: int
    ok: bool
    why: str
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    received: float = 0.0
    expected: float = 0.0
    drops: dict = field(default_factory=dict)
    means: dict = field(default_factory=dict)  # histogram_means
    stages: dict = field(default_factory=dict)  # where_time_goes
    cpu: float = float("nan")
    rss: float = 0.0
    seconds: float = 0.0

    def line(self) -> str:
        drops = ", ".join(f"{k} {int(v)}" for k, v in sorted(self.drops.items())) or "0"
        verdict = "pass" if self.ok else f"FAIL ({self.why})"
        return (f"  N={self.n:4d}: overhead p50/p95/p99 {self.p50_ms:6.0f}/{self.p95_ms:6.0f}/{self.p99_ms:6.0f} ms; "
                f"{self.received:.0f}/{self.expected:.0f} utterances per client; drops {drops}; "
                + "".join(f"{k} {v:.0f}; " for k, v in self.means.items()) +
                f"CPU {self.cpu:.0f} %; RSS {self.rss:.0f} MiB; {self.seconds:.0f} s -> {verdict}")


def probe(setup: Setup, n: int, work: Workload, w: Window, workdir: Path, worker_command: str,
          helpers: list[int]) -> Probe:
    """One run of N stations; `helpers`: processes serving the daemon (a Triton server)
    whose CPU counts too."""
    started = time.monotonic()
    port = free_port()
    cfg = write_config(workdir, setup.bundle, work.files(n), n, port, setup.threads, roles=("customer",),
                       channels=(0,), sections=setup.sections(workdir, port))
    spawned: list[subprocess.Popen] = []
    try:
        with running_daemon(workdir, cfg, port, setup.threads) as proc:
            argv = shlex.split(worker_command.format(config=cfg, python=sys.executable))
            for k in range(setup.workers - 1):
                with open(workdir / f"worker-{k + 1}.log", "w") as log:
                    spawned.append(subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log))
            r = asyncio.run(observe(port, [proc.pid] + [p.pid for p in spawned] + helpers, n, work, w))
            drops, means = scrape(port), histogram_means(port)
    except RuntimeError as exc:
        return Probe(n, False, "daemon: " + str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "daemon failed",
                     seconds=time.monotonic() - started)
    finally:
        for p in spawned:
            stop(p, 30)
    lat = r["overheads"]
    received = float(np.mean(r["per_client"])) if r["per_client"] else 0.0
    missing = r["expected"] - received
    p = Probe(n, True, "", pct(lat, 50), pct(lat, 95), pct(lat, 99), received, r["expected"], drops, means,
              r["stages"], r["cpu"], r["rss"], time.monotonic() - started)
    lost = {k: v for k, v in drops.items() if k not in NOT_CAPACITY and v}
    why = [r["early"]] if r["early"] else []
    why += [f"{k} {int(v)}" for k, v in lost.items()]
    if not lat or p.p99_ms > w.limit_s * 1000:
        why.append(f"p99 {p.p99_ms:.0f} ms")
    if not r["early"] and missing > 2 * math.sqrt(n) + 0.01 * r["expected"] + 1:  # phases make `expected` approximate
        why.append(f"{missing:.0f} utterances missing")
    p.ok, p.why = not why, "; ".join(dict.fromkeys(why))
    return p

