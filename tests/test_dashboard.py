"""The dashboard in a real headless Chromium against a real `emoclapd run`: scores
appear and update (audio only: the tiny bundle has no transcriber), the customer's visit
and an alert show on its card and on the floor view, a prompt file added while it is
open shows up as a new emotion, and a wrong token is refused. Saves a screenshot to
test-artifacts/dashboard.png. The floor view with 24 stations is tests/test_floor_view.py;
fused audio + words scores and transcripts are tests/test_dashboard_paths.py."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.servicekit import free_port, write_replay_config

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "s3cret-token"
ARTIFACTS = REPO / "test-artifacts"
ALERT = """[[alerts]]
name = "ready to buy"
emotion = "purchase_intention"
above = 0.0
min_utterances = 1
"""
CALM = """label = "Calm – tense"
key_word = "calm"
[negative]
label = "Tense"
en = ["I feel tense."]
[positive]
label = "Calm"
en = ["I feel calm."]
"""


@pytest.fixture
def daemon(tmp_path, tiny_bundle, small_corpus):
    shutil.copytree(REPO / "prompts", tmp_path / "prompts")
    dialogue = small_corpus / "dialogues" / "s1-car-d1.wav"
    port = free_port()
    config = write_replay_config(
        tmp_path, tiny_bundle, dialogue, port, prompts=tmp_path / "prompts",
        sections=f'token = "{TOKEN}"\n[rolling]\ninterval_s = 1.0\n{ALERT}', station="loop = true\n")
    with emoclapd_run(config, port) as base:
        yield base, tmp_path / "prompts"


@contextlib.contextmanager
def emoclapd_run(config, port: int):
    """`emoclapd run` as a process, its base URL once /healthz answers; on the way out
    SIGTERM, and a clean exit is part of the test (also for tests/test_floor_view.py)."""
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("emoclapd did not start:\n" + proc.stdout.read())
            time.sleep(0.2)
    yield base
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=30) == 0, proc.stdout.read()
    finally:
        proc.kill()


@contextlib.contextmanager
def chromium():
    """A real headless Chromium (also for tests/test_floor_view.py)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium missing: run ./bootstrap test, which installs it")
    with sync_playwright() as p:
        # No sandbox (root in CI) and no background networking: the box may be offline.
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def browser():
    with chromium() as b:
        yield b


def bar_count(page, station: str, emotion: str) -> int:
    text = page.inner_text(f'.card[data-station="{station}"] .bar[data-emotion="{emotion}"] .value')
    return int(text.split("n=")[1])


@pytest.mark.slow
def test_dashboard_live_scores_new_emotion_and_token(daemon, browser):
    base, prompts = daemon
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base}/?token={TOKEN}")
    page.wait_for_selector('#connection[data-state="live"]', timeout=15000)

    customer = '.card[data-station="customer"]'
    staff = '.card[data-station="staff"]'
    page.wait_for_selector(f'{customer} .bar[data-emotion="purchase_intention"][data-score]',
                           timeout=60000)
    # Staff are speech activity only (the default privacy policy): no bars, no scores,
    # an utterance count that grows, and feed entries without score chips.
    page.wait_for_function(
        """(sel) => { const a = document.querySelector(sel);
                      return a && parseInt(a.textContent) > 0; }""",
        arg=f"{staff} .activity", timeout=60000)
    assert page.query_selector(f"{staff} .bar") is None
    staff_feed = page.query_selector_all('#feed li[data-station="staff"]')
    assert staff_feed and all("not scored" in li.inner_text() and "%" not in li.inner_text()
                              for li in staff_feed)
    # The tiny bundle has no transcriber: each score is the audio path's, and says so.
    page.wait_for_selector(f'{customer}[data-basis="audio"]', timeout=10000)
    assert page.inner_text(f"{customer} .basis") == "Last scored utterance: audio only"
    scored_feed = page.query_selector_all('#feed li[data-station="customer"]:not(.insufficient)')
    assert scored_feed and all(li.query_selector('.chip.basis[data-basis="audio"]') and not li.query_selector(".transcript")
                               for li in scored_feed)
    score = float(page.get_attribute(f'{customer} .bar[data-emotion="purchase_intention"]',
                                     "data-score"))
    assert 0.0 <= score <= 1.0
    # The customer's first utterance opened a visit and fired the rule (any score).
    assert page.inner_text(f"{customer} .visit").startswith("Visit ")
    page.wait_for_selector(f"{customer}.alert .alerts li", timeout=10000)
    assert "ready to buy" in page.inner_text(f"{customer} .alerts")
    assert page.query_selector('#cards-view ul.alert-list li.fired[data-station="customer"]') is not None
    assert "alert" not in page.get_attribute(staff, "class")

    # Two stations open on the cards; the floor is one click away and shows the same.
    assert page.get_attribute("body", "data-view") == "cards"
    page.click('nav.views a[data-view="floor"]')
    page.wait_for_selector('#floor .tile.alert[data-station="customer"][data-visit]', timeout=5000)
    assert page.query_selector('#floor .tile.speech-only[data-station="staff"] .intention') is None
    page.click('nav.views a[data-view="cards"]')
    page.wait_for_selector(f"{customer}", state="visible", timeout=5000)

    # Scores update live: the customer's utterance count grows as the dialogue plays.
    first = bar_count(page, "customer", "purchase_intention")
    page.wait_for_function(
        """([sel, n]) => {
             const v = document.querySelector(sel);
             return v && parseInt(v.textContent.split("n=")[1]) > n; }""",
        arg=[f'{customer} .bar[data-emotion="purchase_intention"] .value', first],
        timeout=60000)
    assert page.query_selector_all("#feed li")

    # A prompt file added now appears as a new emotion on the open page, no reload.
    (prompts / "calm.toml").write_text(CALM)
    page.wait_for_selector(f'{customer} .bar[data-emotion="calm"]', timeout=15000)
    assert "Tense" in page.inner_text(f'{customer} .bar[data-emotion="calm"] .poles')
    page.wait_for_selector(f'{customer} .bar[data-emotion="calm"][data-score]', timeout=60000)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert not errors, errors

    # A wrong token gets neither the page nor the score stream.
    stranger = browser.new_page()
    assert stranger.goto(f"{base}/?token=wrong").status == 401
    assert stranger.goto(f"{base}/").status == 401
    outcome = page.evaluate("""(url) => new Promise(done => {
        const ws = new WebSocket(url);
        ws.onopen = () => { ws.close(); done("opened"); };
        ws.onerror = () => done("refused");
    })""", base.replace("http", "ws") + "/ws?token=wrong")
    assert outcome == "refused"
