"""Chaos run: faults injected one at a time into a loaded daemon; is anything lost?

    python bench/chaos.py                              # demo bundle, 4 stations, every fault
    python bench/chaos.py --faults kill9,sigterm --stations 2 --bundle DIR
    python bench/chaos.py --quick                      # tiny bundle, short faults (a smoke run)

A gateway, `emoclapd run` on this host (N real-time replay stations, every one a
customer, the capacity benchmark's tracks; its own encode worker; history on a 64-MiB
tmpfs; an alert rule per emotion and a webhook receiver), and a second encode worker,
`emoclapd encode`, in a network namespace of its own, joined over tcp through a veth pair
(bench/faults.py). 10 `/ws` clients stay connected throughout (bench/listeners.py).
Each fault runs for `--fault-s` after the daemon is healthy, then is removed:

  kill9      kill -9 of the namespaced worker (restarted after)
  hang       SIGSTOP of that worker, then SIGCONT
  partition  every packet between the worker's host and the gateway's dropped
  lossy      10 % of the worker's packets dropped, and 200 ms added to what it sends
  disk       the history's disk filled to the last byte, then freed
  webhook    the alert webhook's receiver accepts and never answers
  ingest     4 /ingest sessions sending malformed frames and full-scale noise at full speed
  flood      1,000 /ws connections opened at once, held, closed
  prompts    a prompt file rewritten in place every 100 ms
  sigterm    SIGTERM of the gateway under load (right after the prompt churn), then a restart

For each: utterances accepted (cut by the segmenters), published, stored (history rows
added), dropped by reason, and unaccounted = accepted − published − dropped − in flight
once the fault is over (from /healthz `accounting`; across the restart, from the stopped
daemon's last log line); keys published twice (seen twice by a client, or stored twice);
p99 overhead (as in bench/capacity.py) of utterances that ended during the fault and in
the `--after-s` after recovery; recovery = from removing the fault to /healthz `ok`; the
gateway's peak RSS; and what /healthz said meanwhile. A fault passes with 0 unaccounted,
0 twice, stored = published, /healthz degraded naming the fault's cause while it lasted
(where there is one), and ok after.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import faults  # noqa: E402
from bench.capacity import bundle_for  # noqa: E402
from bench.gateway import Gateway, Watch, settled, stored_rows, unaccounted, wait_for  # noqa: E402
from bench.listeners import Listeners  # noqa: E402
from bench.service import free_port, pct, write_config  # noqa: E402
from bench.workload import tracks, vad_wait_s  # noqa: E402
from daemon.config import ServerConfig  # noqa: E402
from emoclap.audio import SAMPLE_RATE  # noqa: E402
from emoclap.segmenter import SegmenterOptions  # noqa: E402

FAULTS = ("kill9", "hang", "partition", "lossy", "disk", "webhook", "ingest", "flood", "prompts", "sigterm")
CAUSES = {"kill9": "encode worker", "hang": "encode worker", "partition": "encode worker", "lossy": "link round trip",
          "disk": "history: cannot write", "webhook": "webhook:", "ingest": "refused in the last",
          "flood": "refused in the last", "sigterm": "stopping: draining"}  # what /healthz must name
FOUND_BY_TRAFFIC = {"disk", "webhook"}


@dataclass
class Row:
    fault: str
    seconds: float = 0.0
    accepted: int = 0
    published: int = 0
    stored: int = 0
    dropped: dict = field(default_factory=dict)
    unaccounted: int | None = None
    twice: int = 0
    p99_during: float = float("nan")
    p99_after: float = float("nan")
    recovery_s: float | None = None
    rss_mib: float = 0.0
    degraded_share: float = 0.0
    said: list = field(default_factory=list)
    detail: str = ""
    ok: bool = False


def normalise(problem: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "#", problem)


class Run:
    def __init__(self, args, workdir: Path):
        self.args, self.workdir = args, workdir
        self.rows: list[Row] = []

    def setup(self, stack) -> None:
        args, workdir = self.args, self.workdir
        bundle = bundle_for(args.bundle, workdir)
        options = SegmenterOptions()
        work = tracks(workdir, 0.5, options)
        self.host = stack.enter_context(faults.WorkerHost())
        self.disk = stack.enter_context(faults.SmallDisk(workdir / "disk", 64))
        self.webhook = faults.WebhookReceiver()
        stack.callback(self.webhook.close)
        prompts = workdir / "prompts"
        shutil.rmtree(prompts, ignore_errors=True)
        shutil.copytree(REPO / "prompts", prompts, ignore=shutil.ignore_patterns("alternatives"))
        self.churned = prompts / "aroused.toml"
        port, workers, relay = free_port(), free_port(), free_port()
        self.db = self.disk.folder / "history.sqlite3"
        sections = {"": {"prompts": str(prompts), "cache": str(workdir / "cache.sqlite3")},
                    "history": {"path": str(self.db)}, "encoder": {"threads": 1},
                    "privacy": {"scored_roles": ["customer"]}, "rolling": {"half_life_s": 3.0},
                    "server": {"max_clients": ServerConfig().max_clients},  # what a user gets
                    "stages": {"workers": f"tcp://{self.host.host_ip}:{workers}"},
                    "webhook": {"url": self.webhook.url, "timeout_s": 1.0, "retries": 1, "backoff_s": 0.5,
                                "events": ["fired", "cleared"]}}
        config = write_config(workdir, bundle, work.files(args.stations), args.stations, port, 1,
                              roles=("customer",), channels=(0,), sections=sections)
        config.write_text(config.read_text() + "".join(
            f'[[alerts]]\nname = "{p.stem} high"\nemotion = "{p.stem}"\nabove = 0.5\nrearm = 0.45\ncooldown_s = 1\n'
            for p in sorted(prompts.glob("*.toml"))))
        worker_config = workdir / "worker.toml"
        worker_config.write_text(f'bundle = "{bundle}"\n[encoder]\nthreads = 1\n[stages]\n'
                                 f'workers = "tcp://127.0.0.1:{relay}"\n')
        self.relay = faults.Relay(self.host.ns, relay, (self.host.host_ip, workers)).start()
        self.worker_argv = self.host.command([sys.executable, "-m", "daemon.cli", "encode", "--config",
                                              str(worker_config)])
        (workdir / "gateway.log").write_text("")
        self.gateway = Gateway(config, port, workdir / "gateway.log")
        self.gateway.start()
        stack.callback(lambda: self.gateway.proc.poll() is None and self.gateway.proc.kill())
        self.worker = None
        self.start_worker()
        stack.callback(lambda: self.worker.poll() is None and self.worker.kill())
        self.watch = Watch(self.gateway)
        self.watch.start()
        stack.callback(self.watch.stop.set)
        frame = SAMPLE_RATE * options.frame_ms // 1000
        self.listeners = stack.enter_context(Listeners(port, args.clients, work, vad_wait_s(options), frame))

    def start_worker(self, wait: bool = True) -> None:
        with open(self.workdir / "worker.log", "a") as log:
            self.worker = subprocess.Popen(self.worker_argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
                                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        if wait and not wait_for(lambda: self.workers() >= 2, 120):
            raise RuntimeError("the namespaced worker did not join: " + (self.workdir / "worker.log").read_text()[-2000:])

    def workers(self) -> int:
        health = self.gateway.health()
        return (health or {}).get("fleet", {}).get("alive", 0) if health else 0

    def ready(self) -> bool:
        health = self.gateway.health()
        return bool(health and health["status"] == "ok" and health["fleet"]["alive"] >= 2)

    # ---- one fault
    def fault(self, name: str) -> Row:
        args, row = self.args, Row(name)
        if not wait_for(self.ready, 90):
            row.detail = f"not healthy before the fault: {self.watch.latest()}"
            return row
        before, rows_before = settled(self.gateway), stored_rows(self.db)
        start = time.time()
        row.detail = self.inject(name, args.fault_s) or ""
        end = time.time()
        row.seconds = end - start
        ok_at = wait_for(lambda: self.ready() and time.time(), args.recover_s)
        row.recovery_s = None if not ok_at else ok_at - end
        time.sleep(args.after_s)
        after = settled(self.gateway)
        life = self.gateway.lives[-1] if name == "sigterm" and self.gateway.lives else None

        def delta(get) -> int:  # across a restart: what the stopped life added, and the new one
            return get(life) - get(before) + get(after) if life else get(after) - get(before)
        row.accepted = delta(lambda a: a["segmented"])
        row.published = delta(lambda a: a["published"] + a["speech"])
        reasons = sorted(set(after["dropped"]) | set(before["dropped"]) | set(life["dropped"] if life else ()))
        row.dropped = {r: n for r in reasons if (n := delta(lambda a, r=r: a["dropped"].get(r, 0)))}
        row.stored = stored_rows(self.db) - rows_before
        row.unaccounted = unaccounted(after) + (unaccounted(life) if life else 0)
        seen = self.listeners.events(start)
        per_client: dict = {}
        for s in seen:
            per_client.setdefault(s.client, []).append(s.key)
        row.twice = sum(len(keys) - len(set(keys)) for keys in per_client.values())
        row.p99_during = pct([s.overhead for s in seen if s.time < end], 99)
        back = ok_at or end
        row.p99_after = pct([s.overhead for s in seen if back <= s.time < back + args.after_s], 99)
        samples = self.watch.between(start, back)
        row.rss_mib = max((s[2] for s in self.watch.between(start, back + args.after_s)), default=0.0)
        polled = [h for _, h, _ in samples if h is not None]
        row.degraded_share = sum(h["status"] == "degraded" for h in polled) / len(polled) if polled else 0.0
        said: dict[str, int] = {}
        for h in polled:
            for p in h.get("problems", []):
                said[normalise(p)] = said.get(normalise(p), 0) + 1
        row.said = sorted(said, key=lambda p: -said[p])[:3]
        cause = CAUSES.get(name)
        if cause and name in FOUND_BY_TRAFFIC and not any(s.time < end for s in seen):
            # A full disk or a dead webhook shows only when something is written or sent.
            row.detail += "; nothing was published during the fault, so it could not show"
            cause = None
        named = cause is None or any(cause in p for p in said)
        row.ok = (row.unaccounted == 0 and row.twice == 0 and row.stored == row.published and named
                  and row.recovery_s is not None)
        return row

    def inject(self, name: str, seconds: float) -> str | None:
        if name == "kill9":
            self.worker.send_signal(signal.SIGKILL)
            self.worker.wait()
            time.sleep(seconds)
            self.start_worker(wait=False)  # recovery counts its start-up
            return "recovery includes the new worker's start-up"
        elif name == "hang":
            self.worker.send_signal(signal.SIGSTOP)
            time.sleep(seconds)
            self.worker.send_signal(signal.SIGCONT)
        elif name in ("partition", "lossy"):
            if name == "partition":
                self.host.partition()
            else:
                self.host.lossy(10)
                self.relay.delay_s = 0.2
            time.sleep(seconds)
            self.host.heal()
            self.relay.delay_s = 0.0
        elif name == "disk":
            filled = self.disk.fill()
            time.sleep(seconds)
            self.disk.free()
            return f"filled {filled / 2**20:.1f} MiB"
        elif name == "webhook":
            # Hung until an alert is sent to it (they come when scores cross a rule), then `seconds` more.
            self.webhook.hang.set()
            waited = wait_for(lambda: self.webhook.hung > 0, 60)
            time.sleep(seconds)
            self.webhook.hang.clear()
            return (f"{self.webhook.hung} deliveries left unanswered, {self.webhook.delivered} answered in all"
                    + ("" if waited else "; no alert came in 60 s"))
        elif name == "ingest":
            counts = faults.garbage_ingest(self.gateway.port, 4, seconds, {}, 32000)
            return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        elif name == "flood":
            counts = faults.flood(self.gateway.port, 1000, seconds, {})
            return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        elif name == "prompts":
            return f"{faults.churn(self.churned, seconds)} rewrites"
        elif name == "baseline":
            time.sleep(seconds)
        elif name == "sigterm":
            code, took, life = self.gateway.stop()
            self.gateway.start()
            if not wait_for(lambda: self.workers() >= 2, 60):
                return f"exit {code} after {took:.1f} s; the worker did not rejoin"
            return f"exit {code} after {took:.1f} s (drained)" + ("" if life else "; no accounting line")
        return None

    # ---- the end
    def finish(self) -> list[str]:
        """Stop the gateway; every life's published = stored, nothing stored twice."""
        code, took, life = self.gateway.stop()
        lives = self.gateway.lives
        published = sum(x["published"] + x["speech"] for x in lives)
        stored = stored_rows(self.db)
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as con:
            events = [json.loads(r[0]) for r in con.execute("SELECT event FROM utterances")]
        keys = [(e["station"], round((e["time"] - e["end"]) * 1000), e["seq"]) for e in events]
        lost = sum(unaccounted(x) for x in lives)
        return [f"{'pass' if code == 0 else 'FAIL'}: the last stop exited {code} after {took:.1f} s",
                f"{'pass' if published == stored else 'FAIL'}: published over {len(lives)} lives {published}, "
                f"stored {stored}",
                f"{'pass' if len(keys) == len(set(keys)) else 'FAIL'}: stored twice: {len(keys) - len(set(keys))}",
                f"{'pass' if lost == 0 else 'FAIL'}: unaccounted at the stops: {lost}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="demo", help="a bundle folder, or a capacity row name (default: demo)")
    ap.add_argument("--stations", type=int, default=4)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--fault-s", type=float, default=10.0)
    ap.add_argument("--recover-s", type=float, default=90.0, help="longest wait for /healthz ok after a fault")
    ap.add_argument("--after-s", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="tiny bundle, 2 stations, 3-s faults")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path, default=REPO / "var" / "bench-chaos")
    args = ap.parse_args()
    if args.quick:  # where not given
        for key, value in (("bundle", "tiny"), ("stations", 2), ("fault_s", 3.0), ("after_s", 3.0)):
            if getattr(args, key) == ap.get_default(key):
                setattr(args, key, value)
    chosen = [f for f in args.faults.split(",") if f]
    unknown = [f for f in chosen if f not in FAULTS]
    if unknown:
        ap.error(f"--faults: unknown {', '.join(unknown)} (known: {', '.join(FAULTS)})")
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))  # the flood's sockets
    run = Run(args, args.workdir)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        run.setup(stack)
        print(f"chaos: {args.stations} stations, {args.clients} clients, faults of {args.fault_s:g} s; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        for name in ["baseline"] + chosen:
            row = run.fault(name)
            run.rows.append(row)
            print(f"  {row.fault}: {json.dumps(asdict(row))}", flush=True)
        verdicts = run.finish()
    print(f"\n{len(run.rows)} phases in {(time.monotonic() - started) / 60:.1f} min\n")
    print("| fault | s | accepted | published | stored | dropped | unaccounted | twice | p99 during / after ms "
          "| recovery s | RSS MiB | /healthz meanwhile | verdict |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---|---|")
    for r in run.rows:
        dropped = ", ".join(f"{k} {v}" for k, v in r.dropped.items()) or "0"
        said = "; ".join(r.said) or "ok"
        print(f"| {r.fault} | {r.seconds:.0f} | {r.accepted} | {r.published} | {r.stored} | {dropped} | "
              f"{r.unaccounted} | {r.twice} | {r.p99_during:.0f} / {r.p99_after:.0f} | "
              f"{'—' if r.recovery_s is None else f'{r.recovery_s:.1f}'} | {r.rss_mib:.0f} | "
              f"{r.degraded_share:.0%} degraded: {said} | {'pass' if r.ok else 'FAIL'} |")
    print()
    for r in run.rows:
        if r.detail:
            print(f"{r.fault}: {r.detail}")
    for line in verdicts:
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in run.rows], "verdicts": verdicts}, indent=1))


if __name__ == "__main__":
    main()
