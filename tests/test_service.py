"""`emoclapd run` as a subprocess: a synthetic stereo dialogue replayed in real time
reaches a WebSocket client; SIGTERM drains (no accepted utterance lost), closes
clients with 1001 and exits 0; sd_notify READY/WATCHDOG/STOPPING."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import websockets

from daemon.history import History
from tests.servicekit import free_port, write_replay_config
from tests.stagekit import stereo_dialogue, write_stereo

REPO = Path(__file__).resolve().parent.parent
STAFF, CUSTOMER = 0, 1
TURNS = [(STAFF, 1.5), (STAFF, "Good afternoon, can I help you?"), (STAFF, 1.0),
         (CUSTOMER, "Yes, I am looking for a present for my sister."), (CUSTOMER, 1.0),
         (STAFF, "These scarves are new this week."), (STAFF, 1.0),
         (CUSTOMER, "That blue one is lovely, how much does it cost, and do you have it in "
                    "another colour as well, maybe green or a darker blue?"), (CUSTOMER, 1.0)]


@pytest.mark.slow
def test_run_replays_dialogue_and_drains_on_sigterm(tmp_path, tiny_bundle):
    stereo, spans = stereo_dialogue(tmp_path, TURNS)
    wav = write_stereo(tmp_path / "dialogue.wav", stereo)
    port = free_port()
    write_replay_config(tmp_path, tiny_bundle, wav, port, sections="""[stages]
utterances = "ipc://u.sock"
""")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    states, ready = [], threading.Event()

    def listen():  # what systemd does: read every notification as it comes
        notify.settimeout(0.5)
        while not ready.is_set() or states[-1:] != ["STOPPING=1"]:
            try:
                states.append(notify.recv(100).decode())
            except socket.timeout:
                if proc.poll() is not None:
                    return
            if states[-1:] == ["READY=1"]:
                ready.set()
    listener = threading.Thread(target=listen, daemon=True)
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="400000")
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config",
                                 str(tmp_path / "config.toml")], cwd=REPO, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    listener.start()
    try:
        assert ready.wait(60), "no READY=1"
        last_on, last_off = spans[CUSTOMER][-1]
        events, close = asyncio.run(watch(port, proc, (last_on + last_off) / 2))
        code = proc.wait(30)
    finally:
        proc.kill()
        print(log_path.read_text())
    log = log_path.read_text()
    listener.join(5)
    assert code == 0, log
    assert "WATCHDOG=1" in states and states[-1] == "STOPPING=1"
    assert close == (1001, "server shutting down")
    # the script's utterances, each found once, within the segmenter's error
    for station, channel in (("staff", STAFF), ("customer", CUSTOMER)):
        got = [e for e in events if e["station"] == station]
        assert len(got) == len(spans[channel]), (station, got, spans[channel], log)
        for e, (on, off) in zip(got, spans[channel]):
            assert abs(e["start"] - on) < 0.35, (e, on)
            assert e["role"] == station
            # Customers are scored; staff are speech activity only (the default privacy policy).
            assert (e["type"], "scores" in e) == (("utterance", True) if station == "customer"
                                                  else ("speech", False))
        for e, (on, off) in list(zip(got, spans[channel]))[:-1]:
            assert abs(e["end"] - off) < 0.5, (e, off)
    pairs = [(e, span) for station, channel in (("staff", STAFF), ("customer", CUSTOMER))
             for e, span in zip([e for e in events if e["station"] == station], spans[channel])]
    print("segmenter error end to end (s): start", [round(e["start"] - on, 2) for e, (on, _) in pairs],
          "end", [round(e["end"] - off, 2) for e, (_, off) in pairs])
    # Each scored utterance says where its time went: every stage, adding up to no more
    # than the time from its last audio to this client having it (a paced replay hands
    # over each 100-ms chunk as it begins: up to 0.1 s before its audio's wall time).
    for e in (e for e in events if e["type"] == "utterance"):
        ms = e["latency_ms"]
        assert {"closing", "to_encoder", "queue", "encode", "to_serve", "score", "store", "publish"} <= set(ms), e
        assert all(v >= 0 for v in ms.values()) and ms["encode"] > 0
        assert sum(ms.values()) / 1000 <= e["received_at"] - e["time"] + 0.1 + 0.01, e
    # the utterance SIGTERM interrupted was cut at the stop, not lost
    cut = [e for e in events if e["station"] == "customer"][-1]
    assert last_on < cut["end"] < last_off
    history = list(History(tmp_path / "history.sqlite3").events())
    assert [(h["station"], h["seq"]) for h in history] == [(e["station"], e["seq"]) for e in events]
    # Its last log line accounts for every utterance cut: each published, stored, none dropped.
    scored = sum(e["type"] == "utterance" for e in events)
    assert (f"stopped: {len(events)} utterance(s) segmented, {scored} published, {len(events) - scored} "
            f"speech only, 0 dropped (none), {len(events)} stored") in log, log[-2000:]


async def watch(port, proc, stop_at):
    """Collect events; send SIGTERM at stream time `stop_at`; return events and close code."""
    events = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        hello = json.loads(await ws.recv())
        assert {s["name"] for s in hello["stations"]} == {"staff", "customer"}
        deadline = time.time() + 60
        sent = False
        try:
            while time.time() < deadline:
                try:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 0.1))
                except asyncio.TimeoutError:
                    msg = None
                if msg and msg["type"] in ("utterance", "speech"):
                    events.append(dict(msg, received_at=time.time()))
                if events and not sent:
                    t0 = events[0]["time"] - events[0]["end"]
                    if time.time() >= t0 + stop_at:
                        proc.send_signal(signal.SIGTERM)
                        sent = True
        except websockets.ConnectionClosed:
            pass
        return events, (ws.close_code, ws.close_reason)


@pytest.mark.slow
def test_stages_in_three_processes(tmp_path, tiny_bundle):
    """`capture`, `encode` and `serve` apart, over ipc:// and tcp://: the same results."""
    stereo, spans = stereo_dialogue(tmp_path, TURNS[:6])
    wav = write_stereo(tmp_path / "dialogue.wav", stereo)
    port, link = free_port(), free_port()
    write_replay_config(tmp_path, tiny_bundle, wav, port, sections=f"""[stages]
utterances = "tcp://127.0.0.1:{link}"
workers = "ipc://w.sock"
""", station="realtime = false\n")
    procs = {}
    try:
        for stage in ("capture", "encode", "serve"):  # capture first: it waits for the others
            procs[stage] = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", stage, "--config", str(tmp_path / "config.toml")],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        want = len(spans[1])  # scored: the customer's; the staff's are speech activity
        health = {}
        deadline = time.time() + 60
        while time.time() < deadline and health.get("utterances") != want:
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
            except OSError:
                pass
        assert health.get("utterances") == want, health
        assert health["stations"] == {"staff": "ended", "customer": "ended"}
        for stage in ("capture", "encode", "serve"):
            procs[stage].send_signal(signal.SIGTERM)
            assert procs[stage].wait(30) == 0, procs[stage].stderr.read()
    finally:
        for p in procs.values():
            p.kill()
    stations = [h["station"] for h in History(tmp_path / "history.sqlite3").events()]
    assert sorted(stations) == sorted(["staff"] * len(spans[0]) + ["customer"] * len(spans[1]))


def test_journald_lines_carry_priority(monkeypatch, capsys):
    import logging

    from daemon.notify import setup_logging

    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    setup_logging("INFO")
    try:
        logging.getLogger("emoclapd.sources").warning("device lost\nretrying")
        logging.getLogger("emoclapd").info("ready")
    finally:
        logging.getLogger().handlers.clear()
    assert capsys.readouterr().err.splitlines() == [
        "<4>emoclapd.sources: device lost", "    retrying", "<6>emoclapd: ready"]
