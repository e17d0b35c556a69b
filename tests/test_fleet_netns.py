"""The fleet as a multi-host deployment: an edge (`emoclapd capture`), two encode
workers and a gateway (`emoclapd serve`), each in a network namespace of its own with
its own address, linked by veth pairs to a bridge in a fifth namespace, talking tcp.
One worker is killed (-9) mid-stream; the gateway's /healthz, /metrics and history
must account for every utterance the edge cut: published once, or dropped with a
reason. Needs root and iproute2 (CI runs as root)."""
import ctypes
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from emoclap.audio import write_wav
from emoclap.station import StationStream
from daemon.config import parse_config
from tests.servicekit import REPO
from tests.speech import dialogue

SCRIPT = [0.6, "Good morning, I would like to see the jackets.", 0.9, "How much is the grey one?", 0.8,
          "That is a little more than I wanted to spend.", 0.9, "Do you have it in blue?", 0.7]
NODES = {"edge": "10.77.0.1", "w1": "10.77.0.2", "w2": "10.77.0.3", "gw": "10.77.0.4"}
CLONE_NEWNET = 0x40000000
TOKEN = "fleet-test-token"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def netns():
    """Five namespaces (four hosts and a bridge), removed again whatever happens."""
    if os.geteuid() != 0:
        pytest.fail("the namespace test needs root (network namespaces, veth pairs); CI runs it as root")
    if shutil.which("ip") is None:
        pytest.fail("`ip` (iproute2) missing: run ./bootstrap test, which installs it")
    tag = secrets.token_hex(3)
    prefix = f"emoclap-t-{tag}"
    names = {node: f"{prefix}-{node}" for node in [*NODES, "br"]}
    made, links = [], []
    try:
        for ns in names.values():
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", names["br"], "link", "add", "br0", "type", "bridge")
        ip("-n", names["br"], "link", "set", "br0", "up")
        for i, (node, address) in enumerate(NODES.items()):
            host_end, bridge_end = f"v{tag}{i}h", f"v{tag}{i}b"  # IFNAMSIZ: 15
            ip("link", "add", host_end, "type", "veth", "peer", "name", bridge_end)
            links.append(host_end)
            ip("link", "set", host_end, "netns", names[node])
            ip("link", "set", bridge_end, "netns", names["br"])
            ip("-n", names["br"], "link", "set", bridge_end, "master", "br0", "up")
            ip("-n", names[node], "addr", "add", f"{address}/24", "dev", host_end)
            ip("-n", names[node], "link", "set", host_end, "up")
        yield names
    finally:
        for ns in made:  # our processes in them first, then the namespaces (their links go too)
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in links:  # a link that never left this namespace
            subprocess.run(["ip", "link", "del", link], capture_output=True)


def in_namespace(ns: str, fn):
    """Run `fn` in a thread that joined namespace `ns` (a network namespace is per thread)."""
    out: dict = {}

    def run():
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                out["error"] = OSError(ctypes.get_errno(), f"setns {ns}")
                return
        finally:
            os.close(fd)
        try:
            out["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            out["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if "error" in out:
        raise out["error"]
    return out.get("value")


def expected_utterances(audio: np.ndarray, cfg) -> int:
    """What the edge's segmenter cuts from the file, fed as replay feeds it (1 s blocks)."""
    stream = StationStream("desk", "customer", cfg.segmenter)
    n = 0
    for pos in range(0, audio.size, 16000):
        n += len(stream.feed(audio[pos:pos + 16000]))
    return n + len(stream.finish())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_of_a_worker_on_another_host_loses_nothing(netns, tmp_path, tiny_bundle):
    speech, _ = dialogue(SCRIPT, tmp_path)
    audio = np.tile(speech, 40)
    wav = tmp_path / "floor.wav"
    write_wav(wav, audio[None, :])
    gw = NODES["gw"]
    config = tmp_path / "fleet.toml"
    config.write_text(f'''bundle = "{tiny_bundle}"
prompts = "{REPO / 'prompts'}"
cache = "cache.sqlite3"
[history]
path = "history.sqlite3"
[server]
host = "{gw}"
port = 8765
token = "{TOKEN}"
[encoder]
max_batch = 2
max_wait_ms = 150
threads = 1
[stages]
utterances = "tcp://{gw}:5555"
workers = "tcp://{gw}:5556"
heartbeat_interval_s = 0.25
status_interval_s = 0.2
[[stations]]
name = "desk"
role = "customer"
file = "{wav}"
realtime = false
''')
    want = expected_utterances(audio, parse_config(config.read_text()))
    logs = {node: open(tmp_path / f"{node}.log", "w") for node in ("gw", "w1", "w2", "edge")}
    procs: dict[str, subprocess.Popen] = {}

    def start(node: str, stage: str) -> None:
        procs[node] = subprocess.Popen(
            ["ip", "netns", "exec", netns[node], sys.executable, "-m", "daemon.cli", stage,
             "--config", str(config)], cwd=REPO, stdout=logs[node], stderr=subprocess.STDOUT)

    def get(path: str) -> str:
        req = urllib.request.Request(f"http://{gw}:8765{path}", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.read().decode()

    def health() -> dict:
        try:
            return json.loads(in_namespace(netns["gw"], lambda: get("/healthz")))
        except OSError:
            return {}

    def wait(what: str, predicate, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = health()
            if h and predicate(h):
                return h
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {health()}\n" + "\n".join(
            f"--- {n}\n{(tmp_path / f'{n}.log').read_text()[-3000:]}" for n in logs))

    def workers(h: dict) -> dict:
        return {w["pid"]: w for w in (h.get("fleet") or {}).get("workers", [])}

    started = time.monotonic()
    try:
        start("gw", "serve")
        start("w1", "encode")
        start("w2", "encode")
        wait("two workers at the gateway", lambda h: len(workers(h)) == 2, 40)
        start("edge", "capture")
        w1, w2 = procs["w1"].pid, procs["w2"].pid  # `ip netns exec` execs: these are the workers
        h = wait("both workers busy, w1 holding work",
                 lambda h: {w1, w2} <= set(workers(h)) and workers(h)[w1]["answered"] > 0
                 and workers(h)[w2]["answered"] > 0 and workers(h)[w1]["inflight"] > 0, 30)
        addresses = {w["pid"]: w["address"] for w in workers(h).values()}
        at_kill = (h["utterances"], h["stations"].get("desk"))
        procs["w1"].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        wait("w1 gone from the fleet", lambda h: w1 not in workers(h), 10)
        detected = time.monotonic() - killed
        done = wait("every utterance accounted for",
                    lambda h: h["stations"].get("desk") == "ended" and h["fleet"]["accepted"] == want
                    and h["fleet"]["backlog"] == 0, 30)
        finished = time.monotonic() - killed
        metrics = in_namespace(netns["gw"], lambda: get("/metrics"))
        for node in ("edge", "w2", "gw"):
            procs[node].send_signal(signal.SIGTERM)
        codes = {node: procs[node].wait(30) for node in ("edge", "w2", "gw")}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for f in logs.values():
            f.close()
    print(f"\n{want} utterances; w1 killed holding work with {at_kill[0]} published, the edge "
          f"{at_kill[1]}: gone from the fleet after {detected:.2f} s, "
          f"all accounted for {finished:.2f} s after the kill; requeued {done['fleet']['requeued']}, "
          f"duplicates discarded {done['fleet']['duplicates']}; whole run {time.monotonic() - started:.1f} s")
    assert addresses == {w1: NODES["w1"], w2: NODES["w2"]}  # tcp from their own hosts
    assert at_kill[0] < want and at_kill[1] == "online"  # mid-stream: the edge still cutting
    assert codes == {"edge": 0, "w2": 0, "gw": 0}
    published = done["utterances"]
    dropped = done["dropped"]
    assert published + sum(dropped.values()) == want, (published, dropped, want)  # 0 unaccounted
    assert dropped == {}, dropped
    assert done["fleet"]["requeued"] >= 1
    assert f'emoclap_utterances_total{{station="desk"}} {float(want)}' in metrics
    assert "emoclap_requeued_total" in metrics and "emoclap_workers_alive 1.0" in metrics
    db = sqlite3.connect(tmp_path / "history.sqlite3")
    try:
        keys = [(e["station"], e["seq"]) for e in map(json.loads, (r[0] for r in db.execute(
            "SELECT event FROM utterances")))]
    finally:
        db.close()
    assert len(keys) == len(set(keys)) == want  # no (station, seq) twice
    assert sorted(seq for _, seq in keys) == list(range(1, want + 1))
