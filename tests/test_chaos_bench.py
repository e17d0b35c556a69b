"""The chaos run's own parts: the faults do what they say (a relay that delays, a
partition that drops every packet, a disk that fills, a prompt file rewritten and put
back), the stopped daemon's accounting line reads back exactly, and a short run of the
whole thing (tiny bundle) finds nothing lost. Needs root, iproute2 and nftables (CI
runs as root; ./bootstrap test installs them)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from bench import faults
from bench.gateway import STOPPED, parse_stopped
from daemon.service import accounting_line
from tests.servicekit import REPO


def need_root():
    if os.geteuid() != 0:
        pytest.fail("the chaos run needs root (network namespaces, nftables, tmpfs); CI runs as root")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.fail(f"`{tool}` missing: run ./bootstrap test, which installs iproute2 and nftables")


REASONS = st.dictionaries(st.sampled_from(["queue_full", "too_short", "worker_lost", "no_worker", "encoder_error",
                                           "bad_message", "score_error"]), st.integers(1, 10**9), max_size=4)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9), REASONS,
       st.integers(0, 10**9) | st.none())
def test_the_stopped_line_reads_back_as_written(segmented, published, speech, dropped, stored):
    line = "stopped: " + accounting_line({"segmented": segmented, "published": published, "speech": speech,
                                          "dropped": dropped}, stored)
    found = STOPPED.findall(f"2026-12-07 INFO emoclapd: {line}\n")
    if stored is None:  # history off: nothing to compare stored with, so the line says so
        assert found == [] and line.endswith("history off")
        return
    assert parse_stopped(found[0]) == {"segmented": segmented, "published": published, "speech": speech,
                                       "dropped": dropped, "stored": stored, "in_flight": 0}


def echo_server(host: str) -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind((host, 0))
    srv.listen()

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: [c.sendall(d) for d in iter(lambda: c.recv(4096), b"")],
                             daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def round_trip(ns: str, port: int, timeout: float) -> float:
    """Seconds for a byte to go through the relay (from inside `ns`) and come back."""
    out = {}

    def run():
        faults.enter(ns)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
                started = time.monotonic()
                c.sendall(b"x")
                out["echo"] = c.recv(1)
                out["s"] = time.monotonic() - started
        except OSError:  # timed out: nothing came back
            pass
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout + 5)
    return out["s"] if out.get("echo") == b"x" else float("inf")


@pytest.mark.timeout(60)
def test_the_worker_host_delays_cuts_off_and_heals():
    need_root()
    with faults.WorkerHost() as host:
        srv, port = echo_server(host.host_ip)
        relay_port = 20000 + os.getpid() % 20000
        relay = faults.Relay(host.ns, relay_port, (host.host_ip, port)).start()
        try:
            clear = round_trip(host.ns, relay_port, 5)
            relay.delay_s = 0.2
            delayed = round_trip(host.ns, relay_port, 5)
            relay.delay_s = 0.0
            host.partition()
            cut = round_trip(host.ns, relay_port, 1.5)
            host.heal()
            healed = round_trip(host.ns, relay_port, 5)
        finally:
            srv.close()
    assert clear < 0.1 and 0.2 <= delayed < 0.4 and healed < 0.1, (clear, delayed, healed)
    assert cut == float("inf")  # nothing crosses a partition
    assert subprocess.run(["ip", "netns", "pids", host.ns], capture_output=True).returncode != 0  # removed


def test_a_small_disk_fills_to_the_last_byte_and_frees(tmp_path):
    need_root()
    with faults.SmallDisk(tmp_path / "disk", 4) as disk:
        filled = disk.fill()
        with pytest.raises(OSError):
            (disk.folder / "more").write_bytes(b"x" * 8192)
        disk.free()
        (disk.folder / "more").write_bytes(b"x" * 8192)
    assert 3.5 * 2**20 < filled <= 4 * 2**20


def test_a_churned_prompt_file_is_rewritten_and_put_back(tmp_path):
    path = tmp_path / "aroused.toml"
    shutil.copy(REPO / "prompts" / "aroused.toml", path)
    original = path.read_text()
    seen = set()
    stop = threading.Event()

    def read():
        while not stop.is_set():
            seen.add(path.read_text())
            time.sleep(0.01)
    reader = threading.Thread(target=read)
    reader.start()
    n = faults.churn(path, 0.6, 0.05)
    stop.set()
    reader.join()
    assert n >= 6 and path.read_text() == original
    assert len(seen) > 3  # each version is new text, so each is embedded again


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_short_chaos_run_loses_nothing(tmp_path):
    need_root()
    out = tmp_path / "chaos.json"
    done = subprocess.run([sys.executable, "bench/chaos.py", "--quick", "--faults", "kill9,hang,partition,disk,sigterm",
                           "--fault-s", "5", "--workdir", str(tmp_path / "work"), "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=380)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["fault"]: r for r in result["rows"]}
    assert list(rows) == ["baseline", "kill9", "hang", "partition", "disk", "sigterm"]
    for name, row in rows.items():
        assert row["ok"], (name, row)
        assert row["unaccounted"] == 0 and row["twice"] == 0 and row["stored"] == row["published"], row
    assert all(v.startswith("pass") for v in result["verdicts"]), result["verdicts"]
