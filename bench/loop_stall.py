"""Event-loop stalls in the daemon's asyncio loop, under ingest load and a prompt re-embed.

    python bench/loop_stall.py [--bundle DIR] [--seconds 15] [--why] [--reload-after S]
    cd /tmp/other-checkout && PYTHONPATH=$PWD python bench/loop_stall.py   # measure that code

`--stations N --clients M` add N replay stations of the capacity workload and M `/ws`
readers to the load, to measure the loop at a sustained station count:

    python bench/loop_stall.py --bundle data/demo-bundle --stations 46 --clients 10 --threads 2

`Service(cfg, stages=("capture", "encode", "serve"))` runs in-process on the loop this
script owns, next to a ticker task that sleeps 10 ms and records the gap between its
wake-ups: a long gap is time the loop spent on something else. Row `quiet`: the service
idle. Row `load`: 4 `/ingest` clients stream espeak-ng speech in real time in 100 ms
frames (one at 48 kHz, so resampling runs) and, after 2 s, a prompt file with 500 new
sentences lands in the prompts folder (the bank's watcher polls every 0.5 s and embeds
them); the window lasts --seconds. The text tower is the real all-MiniLM-L6-v2 (heads
untrained; built once into --bundle-cache), so a re-embed costs what it does in production.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

SENTENCES = ["Good afternoon, can I help you find anything today?", "How much is the grey one?",
             "Hmm, that is a bit more than I wanted to spend.", "Oh, that is lovely. I think I will take it."]
CLIENT_RATES = (16000, 16000, 16000, 48000)
EMOTION = "bench_mood"


def build_bundle(out: Path) -> int:
    """The demo model's towers with untrained heads: only the text tower's cost matters here."""
    import torch
    from trainer.config import load_config
    from trainer.export import export_bundle
    from trainer.model import ClapModel, load_tokenizer

    torch.manual_seed(0)
    cfg = load_config(REPO / "configs/demo.toml")
    tmp = out.with_name(out.name + ".partial")  # a killed build never looks like a bundle
    shutil.rmtree(tmp, ignore_errors=True)
    export_bundle(ClapModel(cfg.model), load_tokenizer(cfg.model.text, cfg.model.max_tokens), tmp,
                  languages=["en"], texts=SENTENCES, real_audio=[speech(16000, pauses=False)],
                  sources={"audio": "random init (hubert)", "text": cfg.model.text.pretrained},
                  description="loop_stall benchmark: untrained heads")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return 0


def speech(rate: int, pauses: bool = True) -> np.ndarray:
    """The sentences spoken by espeak-ng at `rate`, with pauses so the VAD cuts utterances."""
    import soundfile as sf
    import soxr

    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(SENTENCES):
            subprocess.run(["espeak-ng", "-w", f"{tmp}/{i}.wav", text], check=True, capture_output=True)
            audio, sr = sf.read(f"{tmp}/{i}.wav", dtype="float32", always_2d=True)
            parts.append(soxr.resample(audio.mean(axis=1), sr, rate).astype(np.float32))
            parts.append(np.zeros(int(rate * (0.6 + 0.2 * i) * pauses), np.float32))
    return np.concatenate(parts)


def prompt_file(n: int = 250) -> str:
    """n distinct English sentences per pole, word combinations nothing has embedded yet."""
    def pole(words: str) -> str:
        adjectives = [f"{a} {b}" for a in ("quite", "very", "rather", "truly", "so") for b in words.split(",")]
        sentences = [f"{w} {h} {a} today." for a in adjectives for w in ("I", "We", "My friend", "My partner",
                     "The customer") for h in ("feel", "seem", "am told we are", "look", "sound")]
        return "[" + ", ".join(f'"{s}"' for s in sentences[:n]) + "]"
    calm = pole("relaxed,serene,settled,easygoing,at ease,peaceful,unhurried,composed,untroubled,mellow")
    tense = pole("tense,jittery,on edge,wound up,restless,nervous,strained,anxious,uneasy,agitated")
    return (f'label = "Bench calm – tense"\n[negative]\nlabel = "Tense"\nen = {tense}\n'
            f'[positive]\nlabel = "Calm"\nen = {calm}\n')


def make_config(tmp: Path, bundle: Path, stations: list[Path] = (), threads: int = 1):
    from daemon.config import parse_config

    shutil.copytree(REPO / "prompts", tmp / "prompts")  # the benchmark writes into its copy
    # Without --stations no [[stations]]: all audio comes through /ingest.
    replay = "".join(f'[[stations]]\nname = "st{i:03d}"\nfile = "{f}"\nrole = "customer"\nloop = true\n'
                     for i, f in enumerate(stations))
    return parse_config(f'bundle = "{bundle}"\nprompts = "prompts"\nprovider = "cpu"\n'
                        f'cache = "prompt-cache.sqlite3"\n[encoder]\nthreads = {threads}\n[server]\n'
                        'host = "127.0.0.1"\nport = 0\nmax_clients = 1000\n[history]\npath = "history.sqlite3"\n'
                        '[transcripts]\nenabled = false\n' + replay,
                        source="loop_stall.toml", base=tmp)


async def listener(port: int, stop: asyncio.Event, seen: list[int]) -> None:
    """A dashboard: a `/ws` client that reads every message."""
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/ws", max_queue=None) as ws:
        while not stop.is_set():
            try:
                await asyncio.wait_for(ws.recv(), 0.5)
                seen[0] += 1
            except asyncio.TimeoutError:
                continue


async def ticker(stop: asyncio.Event, times: list[float]) -> None:
    times.append(time.perf_counter())
    while not stop.is_set():
        await asyncio.sleep(0.010)
        times.append(time.perf_counter())


async def client(port: int, name: str, rate: int, audio: np.ndarray, stop: asyncio.Event, errors: list):
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/ingest") as ws:
        await ws.send(f'{{"type":"start","station":"{name}","role":"customer","sample_rate":{rate}}}')
        if '"started"' not in (reply := await ws.recv()):
            errors.append(reply)

        async def read():  # after "started" the server speaks only to refuse a frame
            async for message in ws:
                errors.append(message)
        reader = asyncio.create_task(read())
        pcm, frame, t0, i = (np.clip(audio, -1, 1) * 32767).astype("<i2"), rate // 10, time.perf_counter(), 0
        while not stop.is_set():
            # An absolute schedule: a late wake-up is caught up, as a real client's buffer would.
            await asyncio.sleep(max(0.0, t0 + i * 0.1 - time.perf_counter()))
            start = (i * frame) % (len(pcm) - frame)
            await ws.send(pcm[start:start + frame].tobytes())
            i += 1
        reader.cancel()


def summary(times: list[float], marks: tuple[float, float] | None = None) -> dict:
    starts, ends, gaps = np.array(times[:-1]), np.array(times[1:]), np.diff(times) * 1000
    # A gap "during" the re-embed overlaps [file written, emotion seen] at all.
    during = None if marks is None else int(((gaps > 50) & (ends >= marks[0]) & (starts <= marks[1])).sum())
    return {"ticks": len(gaps), "window": times[-1] - times[0], "max": gaps.max(),
            "p99": np.percentile(gaps, 99), "over50": int((gaps > 50).sum()), "during": during}


def published(service) -> int:  # getattr: the attribute may move in a refactor
    return getattr(getattr(service.parts, "floor", None), "published", 0)


async def measure(cfg, args) -> list[tuple[str, dict]]:
    from daemon.service import Service

    if args.why:  # asyncio's debug mode logs each callback that held the loop over 50 ms
        asyncio.get_running_loop().set_debug(True)
        asyncio.get_running_loop().slow_callback_duration = 0.05
    audio = {rate: speech(rate) for rate in set(CLIENT_RATES)}
    began = time.perf_counter()
    service = Service(cfg, stages=("capture", "encode", "serve"), config_path=None)
    await service.start()
    print(f"service.start(): {time.perf_counter() - began:.2f} s (before the ticker runs)")
    bank, rows = service.parts.bank, []
    try:
        stop, times = asyncio.Event(), []
        tick = asyncio.create_task(ticker(stop, times))
        await asyncio.sleep(args.quiet)
        stop.set()
        await tick
        rows.append(("quiet", {**summary(times), "utterances": 0, "errors": 0}))

        stop, times, errors, before = asyncio.Event(), [], [], published(service)
        tick = asyncio.create_task(ticker(stop, times))
        clients = [asyncio.create_task(client(service.parts.server.port, f"bench-{i}", rate,
                                              np.roll(audio[rate], i * rate), stop, errors))
                   for i, rate in enumerate(CLIENT_RATES)]  # rolled 1 s apart: utterances interleave
        seen = [0]
        clients += [asyncio.create_task(listener(service.parts.server.port, stop, seen))
                    for _ in range(args.clients)]
        t_start = time.perf_counter()
        await asyncio.sleep(2.0)
        latency0 = getattr(bank, "last_latency_s", None)
        (Path(cfg.prompts) / f"{EMOTION}.toml").write_text(prompt_file(), encoding="utf-8")
        t_write, t_seen = time.perf_counter(), None
        if args.reload_after is not None:
            await asyncio.sleep(args.reload_after)
            await service.reload("loop_stall --reload-after")
        # A fixed window, not "until seen", so utterance counts compare across runs.
        while time.perf_counter() < t_start + args.seconds:
            if t_seen is None and EMOTION in bank.emotions:
                t_seen = time.perf_counter()
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(tick, *clients)
        latency = getattr(bank, "last_latency_s", None)
        rows.append(("load", {**summary(times, (t_write, t_seen or times[-1])),
                              "utterances": published(service) - before, "errors": len(errors),
                              "received": seen[0],
                              "seen": t_seen and t_seen - t_write,
                              "embed": latency if t_seen and latency != latency0 else None}))
    finally:
        began = time.perf_counter()
        await service.stop()
        print(f"service.stop(): {time.perf_counter() - began:.2f} s")
    return rows


def table(rows) -> str:
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    out = ["| phase | window s | ticks | longest gap ms | p99 gap ms | gaps > 50 ms | of those, during "
           "re-embed | re-embed s (bank) | emotion visible after write s | utterances published | "
           "ingest errors | messages read by /ws clients |", "|---" * 12 + "|"]
    out += [f"| {name} | {r['window']:.1f} | {r['ticks']} | {r['max']:.1f} | {r['p99']:.1f} | {r['over50']} | "
            f"{fmt(r['during'], 'd')} | {fmt(r.get('embed'), '.2f')} | {fmt(r.get('seen'), '.2f')} | "
            f"{r['utterances']} | {r['errors']} | {r.get('received', 0)} |" for name, r in rows]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, help="an existing bundle (nothing is built)")
    ap.add_argument("--bundle-cache", type=Path, default=Path("/tmp/emoclap-bench-bundle"))
    ap.add_argument("--seconds", type=float, default=15.0, help="load window")
    ap.add_argument("--quiet", type=float, default=5.0, help="idle window")
    ap.add_argument("--why", action="store_true", help="log callbacks that hold the loop > 50 ms")
    ap.add_argument("--reload-after", type=float, help="also call Service.reload() (SIGHUP's path) "
                    "S seconds after the write")
    ap.add_argument("--stations", type=int, default=0, help="also N replay stations of the capacity "
                    "workload (bench/workload.py: 50 %% speech, real time, looping)")
    ap.add_argument("--clients", type=int, default=0, help="/ws clients reading every message")
    ap.add_argument("--threads", type=int, default=1, help="[encoder] threads")
    ap.add_argument("--build-bundle", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_bundle:
        return build_bundle(args.build_bundle)
    logging.basicConfig(level=logging.INFO if args.why else logging.WARNING, format="%(name)s: %(message)s")
    import daemon

    print(f"daemon: {daemon.__file__}")
    bundle = args.bundle or args.bundle_cache
    if not (bundle / "manifest.json").exists():
        if args.bundle:
            sys.exit(f"{bundle}: not a bundle (no manifest.json)")
        # A child process, so torch and its thread pool stay out of the measured process.
        print(f"building the bundle in {bundle} ...", flush=True)
        subprocess.run([sys.executable, __file__, "--build-bundle", str(bundle)], check=True)
    print(f"bundle: {bundle}")
    files = []
    if args.stations:
        from bench.workload import tracks
        from emoclap.segmenter import SegmenterOptions

        work_dir = REPO / "var" / "bench-capacity"
        work_dir.mkdir(parents=True, exist_ok=True)
        files = tracks(work_dir, 0.5, SegmenterOptions()).files(args.stations)
    with tempfile.TemporaryDirectory(prefix="emoclap-stall-") as tmp:
        rows = asyncio.run(measure(make_config(Path(tmp), bundle.resolve(), files, args.threads), args))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
