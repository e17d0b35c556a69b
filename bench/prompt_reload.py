"""Prompt reload at scale: many prompt files dropped into a running daemon's folder, then removed.

    python bench/prompt_reload.py                       # demo bundle, 500 files, 2 /ws clients
    python bench/prompt_reload.py --files 300 --bundle DIR --sentences 6

`emoclapd run` (no stations) watches a copy of prompts/. N new files (each a bipolar
emotion with `--sentences` new sentences per pole, so each is embedded) land at once;
at most 256 files are read (the documented limit), so the emotions in use should reach
256 − (files already there) + the existing emotions. Reported for the arrival and for the
removal of all N: seconds until the emotion set is what it should be (as a `/ws`
client sees it), the `prompts` messages each client got on the way and their size, and
the daemon's RSS before, at peak and after.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import websockets  # noqa: E402

from bench.capacity import bundle_for  # noqa: E402
from bench.service import free_port, proc_rss_mb, running_daemon, write_config  # noqa: E402
from emoclap.prompts import MAX_FILES  # noqa: E402


class Client(threading.Thread):
    """A /ws client that keeps the latest emotion set and counts `prompts` messages."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.emotions, self.messages, self.bytes = port, None, 0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        async def main():
            async with websockets.connect(f"ws://127.0.0.1:{self.port}/ws", max_queue=None, max_size=None) as ws:
                while not self.stop.is_set():
                    try:
                        text = await asyncio.wait_for(ws.recv(), 0.2)
                    except asyncio.TimeoutError:
                        continue
                    kind = text[:40]
                    if '"type":"hello"' in kind or '"type":"prompts"' in kind:
                        self.emotions = len(json.loads(text)["emotions"])
                        if '"type":"prompts"' in kind:
                            self.messages += 1
                            self.bytes += len(text)
        asyncio.run(main())


def emotion_file(i: int, sentences: int) -> str:
    pos = ", ".join(f'"Sample {i} says yes in way {k}, very much so."' for k in range(sentences))
    neg = ", ".join(f'"Sample {i} says no in way {k}, not at all."' for k in range(sentences))
    return f'label = "Bench {i}"\n[negative]\nlabel = "Not {i}"\nen = [{neg}]\n[positive]\nlabel = "Yes {i}"\nen = [{pos}]\n'


def until(predicate, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="demo")
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--sentences", type=int, default=4, help="new sentences per pole in each file")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--workdir", type=Path, default=REPO / "var" / "bench-prompt-reload")
    args = ap.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = bundle_for(args.bundle, workdir)
    prompts = workdir / "prompts"
    shutil.rmtree(prompts, ignore_errors=True)
    shutil.copytree(REPO / "prompts", prompts, ignore=shutil.ignore_patterns("alternatives"))
    existing = len(list(prompts.glob("*.toml")))
    port = free_port()
    (workdir / "cache.sqlite3").unlink(missing_ok=True)  # every new sentence is embedded, as in a store
    cfg = write_config(workdir, bundle, [], 0, port, 0,
                       sections={"": {"prompts": str(prompts), "cache": str(workdir / "cache.sqlite3")}})
    want = min(existing + args.files, MAX_FILES)
    rows = []
    with running_daemon(workdir, cfg, port, 0) as proc:
        clients = [Client(port) for _ in range(args.clients)]
        for c in clients:
            c.start()
        until(lambda: all(c.emotions == existing for c in clients), 30)
        for step, target in (("add", want), ("remove", existing)):
            rss0, peak, sent0 = proc_rss_mb(proc.pid), 0.0, [(c.messages, c.bytes) for c in clients]
            started = time.monotonic()
            if step == "add":
                for i in range(args.files):
                    (prompts / f"bench_{i:04d}.toml").write_text(emotion_file(i, args.sentences))
            else:
                for path in prompts.glob("bench_*.toml"):
                    path.unlink()

            def done():
                nonlocal peak
                peak = max(peak, proc_rss_mb(proc.pid))
                return all(c.emotions == target for c in clients)
            took = None if until(done, args.timeout) is None else time.monotonic() - started  # from the first write
            time.sleep(1.0)
            messages = [c.messages - m for c, (m, _) in zip(clients, sent0)]
            size = [c.bytes - b for c, (_, b) in zip(clients, sent0)]
            rows.append((step, args.files, target, took, messages[0], size[0] / 2**20, rss0, peak,
                         proc_rss_mb(proc.pid)))
        for c in clients:
            c.stop.set()
    print(f"\n{bundle}; {args.files} files of {2 * args.sentences} new sentences, {existing} there before; "
          f"{args.clients} /ws clients")
    print("| step | files | emotions wanted | seconds | `prompts` messages per client | MiB per client "
          "| RSS before / peak / after MiB |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for step, files, target, took, msgs, mib, rss0, peak, rss1 in rows:
        print(f"| {step} | {files} | {target} | {'timeout' if took is None else f'{took:.1f}'} | {msgs} | "
              f"{mib:.1f} | {rss0:.0f} / {peak:.0f} / {rss1:.0f} |")


if __name__ == "__main__":
    main()
