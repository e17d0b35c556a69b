"""Alerts end to end: a real `emoclapd run` fires a rule on a replayed dialogue; the alert
reaches /ws, `hello`, the history (and `history export --alerts`), /metrics and a local
webhook receiver after a retry. A receiver that never answers does not hold up scoring,
and a reload that removes a rule clears its alert.

The tiny test bundle has random weights, so its scores are arbitrary: the rules here use
`above = 0.0`, which every score reaches, so they fire for certain, on the utterance
that brings the rolling count to `min_utterances`."""
import asyncio
import copy
import json
import logging
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import websockets

from emoclap import wire
from emoclap.alerts import Rule
from emoclap.record import Utterance
from daemon.webhook import WebhookConfig
from tests.servicekit import REPO, free_port, push, receive, service_config, url, with_service, write_replay_config
from tests.stagekit import stereo_dialogue, write_stereo
from tests.test_webhook import Receiver

STAFF, CUSTOMER = 0, 1
TURNS = [(STAFF, 3.0), (STAFF, "Good afternoon, can I help you?"), (STAFF, 0.8),
         (CUSTOMER, "Yes, I am looking for a warm coat."), (CUSTOMER, 0.8),
         (STAFF, "These ones arrived this week."), (STAFF, 0.8),
         (CUSTOMER, "I will take the grey one, please."), (CUSTOMER, 0.8),
         (CUSTOMER, "Can I pay by card?"), (CUSTOMER, 1.5)]
SECRET = "Bearer alert-secret-42"


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


@pytest.fixture
def receiver():
    made = []
    yield lambda *script: made.append(Receiver(script)) or made[-1]
    for r in made:
        r.close()


def test_rule_fires_on_ws_history_metrics_and_webhook_after_a_retry(tmp_path, tiny_bundle, receiver):
    stereo, spans = stereo_dialogue(tmp_path, TURNS)
    wav = write_stereo(tmp_path / "dialogue.wav", stereo)
    hook = receiver(500)  # the first attempt fails, the retry is accepted
    port = free_port()
    config = write_replay_config(tmp_path, tiny_bundle, wav, port, sections=f"""
[[alerts]]
name = "any intention"
emotion = "purchase_intention"
above = 0.0
min_utterances = 2
[webhook]
url = "{hook.url()}"
backoff_s = 0.1
events = ["fired", "cleared"]
headers = {{ Authorization = "{SECRET}" }}
""")
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(config)], cwd=REPO,
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:  # the replay is in real time: the first customer utterance ends ~8 s in
            try:
                get(port, "/healthz")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        customer, fired, hello = asyncio.run(watch(port, len(spans[CUSTOMER])))
        deadline = time.monotonic() + 30
        while "emoclap_webhook_deliveries_total{outcome=\"ok\"} 1.0" not in (metrics := get(port, "/metrics")):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # closes the visit: the alert is cleared
        assert proc.wait(30) == 0, log_path.read_text()
    finally:
        proc.kill()
    log = log_path.read_text()
    # fired once, on the customer utterance that brought the rolling count to 2
    at = next(e for e in customer if e["rolling"]["purchase_intention"]["count"] >= 2)
    assert fired["seq"] == at["seq"] and fired["count"] == 2 and fired["value"] == at["rolling"][
        "purchase_intention"]["score"]
    assert fired["visit"] == at["visit"] and fired["id"].startswith("any intention@customer-")
    assert (fired["rule"], fired["station"], fired["role"], fired["threshold"], fired["rearm"]) == (
        "any intention", "customer", "customer", 0.0, -0.05)
    # a dashboard that connects mid-visit and mid-alert sees both in `hello`
    assert hello["alerts"] == [fired]
    [visit] = hello["visits"]
    assert visit["visit"] == fired["visit"] and visit["state"] in ("opened", "updated")
    assert 'emoclap_alerts_total{rule="any intention",state="fired"} 1.0' in metrics
    assert "emoclap_webhook_retries_total 1.0" in metrics
    # the history: fired, and cleared (same id) when SIGTERM closed the visit
    export = subprocess.run([sys.executable, "-m", "daemon.cli", "history", "export", "--alerts",
                             "--format", "jsonl", "--config", str(config)],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    stored = [json.loads(line) for line in export.stdout.splitlines()]
    assert stored[0] == fired and [a["state"] for a in stored] == ["fired", "cleared"]
    assert stored[1]["id"] == fired["id"] and stored[1]["time"] >= fired["time"]
    csv_rows = subprocess.run([sys.executable, "-m", "daemon.cli", "history", "export", "--alerts",
                               "--config", str(config)], cwd=REPO, capture_output=True, text=True,
                              timeout=60, check=True).stdout.splitlines()
    assert csv_rows[0].startswith("id,state,time,rule,station") and len(csv_rows) == 3
    # the receiver: fired twice (500, then accepted), then cleared; the secret only there
    bodies = [json.loads(body) for _, _, body in hook.requests]
    assert bodies[:2] == [fired, fired] and bodies[2]["state"] == "cleared" and len(bodies) == 3
    assert all(headers["Authorization"] == SECRET for _, headers, _ in hook.requests)
    assert "alert-secret-42" not in log


async def watch(port, customer_utterances):
    """Customer utterances and the `fired` alert on /ws; then `hello` on a second connection."""
    customer, fired = [], None
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        await receive(ws, "hello", 1)
        deadline = time.monotonic() + 60
        while len(customer) < customer_utterances or fired is None:
            msg = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
            if msg["type"] == "utterance" and msg["station"] == "customer":
                customer.append(msg)
            elif msg["type"] == "alert":
                assert fired is None and msg["state"] == "fired", msg  # above = 0 never re-arms
                fired = msg
                async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as late:
                    hello = (await receive(late, "hello", 1))[0]
    return customer, fired, hello


def embeddings(n, t0):
    rng = np.random.default_rng(1)
    for seq in range(1, n + 1):
        v = rng.normal(size=16).astype(np.float32)
        yield wire.embedding(Utterance("desk", "customer", seq, seq * 2.0, seq * 2.0 + 1.5, t0, time.time(),
                                       embedding=v / np.linalg.norm(v)))


def test_a_receiver_that_never_answers_holds_up_nothing_and_reload_clears(tmp_path, tiny_bundle, receiver):
    hook = receiver("hang")  # takes the POST and never answers
    cfg = service_config(tmp_path, tiny_bundle)
    cfg.alerts = (Rule("any", "purchase_intention", "above", 0.0, -0.05, min_utterances=1),)
    cfg.webhook = WebhookConfig(hook.url(), timeout_s=60, retries=0)
    n = 6

    async def body(svc):
        metrics = svc.parts.server.metrics
        async with websockets.connect(url(svc, "/ws")) as ws:
            await receive(ws, "hello", 1)
            messages = list(embeddings(n, time.time()))
            await asyncio.to_thread(push, svc, messages[:1])  # fires
            got = await receive(ws, "utterance", 1) + await receive(ws, "alert", 1)
            for _ in range(300):  # until the receiver holds the POST
                if hook.requests:
                    break
                await asyncio.sleep(0.05)
            await asyncio.to_thread(push, svc, messages[1:])
            got += await receive(ws, "utterance", n - 1)
            # every later utterance came while the receiver still held the delivery
            assert len(hook.requests) == 1 and not hook.release.is_set()
            delivered = sum(metrics.registry.get_sample_value("emoclap_webhook_deliveries_total",
                                                              {"outcome": o}) or 0 for o in ("ok", "failed"))
            # a reload that removes the rule (and the webhook) clears its active alert, at once
            new = copy.deepcopy(svc.cfg)
            new.alerts, new.webhook = (), None
            await svc._apply(new)
            cleared = (await receive(ws, "alert", 1))[0]
            assert svc.parts.serve.broadcaster.webhook is None
        async with websockets.connect(url(svc, "/ws")) as ws:
            hello = (await receive(ws, "hello", 1))[0]
        return got, delivered, cleared, hello, list(svc.parts.history.alerts())

    got, delivered, cleared, hello, stored = with_service(cfg, body)
    assert [m["type"] for m in got] == ["utterance", "alert"] + ["utterance"] * (n - 1) and delivered == 0
    fired = got[1]
    assert fired["seq"] == 1 and [m["seq"] for m in got if m["type"] == "utterance"] == list(range(1, n + 1))
    assert cleared["id"] == fired["id"] and cleared["state"] == "cleared"
    assert hello["alerts"] == [] and stored == [fired, cleared]


def test_unknown_emotion_is_logged_once_and_never_fires(tmp_path, tiny_bundle, caplog):
    cfg = service_config(tmp_path, tiny_bundle)
    cfg.alerts = (Rule("calm", "calm", "above", 0.0, -0.05),)

    async def body(svc):
        async with websockets.connect(url(svc, "/ws")) as ws:
            await receive(ws, "hello", 1)
            await asyncio.to_thread(push, svc, embeddings(3, time.time()))
            await receive(ws, "utterance", 3)
        svc.parts.serve.prompts_changed()  # the prompt set is read again: still no calm
        return svc.parts.floor.scoring.active_alerts()

    with caplog.at_level(logging.WARNING, logger="emoclapd.serve"):
        active = with_service(cfg, body)
    assert active == [] and caplog.text.count("rule 'calm' watches emotion 'calm'") == 1
