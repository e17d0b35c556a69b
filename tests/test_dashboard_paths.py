"""The dashboard shows what each score is made of: the audio path (how it was said) and
the text path (what was said), in a real headless Chromium.

The tiny test bundle has no transcriber, so a real emoclapd never sends a text part; the
page is served instead by a stand-in server on 127.0.0.1 that speaks the /ws protocol
(hello, then the events a test hands it), so the events still arrive as JSON text over a
real WebSocket and go through the page's own socket handler. The utterance events are
shaped as `emoclap.record.Scored.event` writes them.

A fused utterance shows its fused score and both parts in the feed, its transcript as
literal text (hostile HTML included), and "fused · audio + words" on the station's card
and "+ words" on its floor tile; an utterance without a text part says "audio only"; an
event from an older server (no parts) shows the score alone and claims neither; a
`speech` event never shows a transcript. Saves test-artifacts/dashboard-paths.png."""
from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response
from websockets.sync.server import serve

from tests.test_dashboard import chromium

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
PAGE = REPO / "daemon" / "static" / "index.html"
HOSTILE = """<img src=x onerror=alert(1)><script>alert(2)</script> I'll take it, can I pay by card?"""
EMOTIONS = [
    {"name": "purchase_intention", "label": "Purchase intention", "negative": "No purchase intention",
     "positive": "Purchase intention", "roles": ["customer"]},
    {"name": "pleasant", "label": "Pleasant – unpleasant", "negative": "Unpleasant", "positive": "Pleasant",
     "roles": None},
]
HELLO = {"type": "hello", "version": 1, "emotions": EMOTIONS, "scored_roles": ["customer"],
         "stations": [{"name": "till-1", "role": "customer", "source": "replay", "state": "online"},
                      {"name": "desk-1", "role": "staff", "source": "replay", "state": "online"}],
         "prompt_errors": [], "alerts": [], "visits": []}


class FakeServer:
    """The page at / and a /ws that sends hello, then whatever `send` is given."""

    def __init__(self):
        self.outbox: queue.Queue = queue.Queue()
        self.server = serve(self.handler, "127.0.0.1", 0, process_request=self.page)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.base = f"http://127.0.0.1:{self.server.socket.getsockname()[1]}"

    @staticmethod
    def page(connection, request):
        if request.path.split("?")[0] == "/ws":
            return None   # the WebSocket handshake goes on
        body = PAGE.read_bytes()
        return Response(200, "OK", Headers([("Content-Type", "text/html; charset=utf-8"),
                                            ("Content-Length", str(len(body)))]), body)

    def handler(self, ws):
        ws.send(json.dumps(HELLO))
        while True:
            try:
                msg = self.outbox.get(timeout=0.1)
            except queue.Empty:
                try:
                    ws.ping()   # notices a page that went away
                except ConnectionClosed:
                    return
                continue
            ws.send(json.dumps(msg))

    def send(self, msg: dict):
        self.outbox.put(msg)


@pytest.fixture
def fake_server():
    fake = FakeServer()
    fake.thread.start()
    yield fake
    fake.server.shutdown()


@pytest.fixture
def browser():
    with chromium() as b:
        yield b


def utterance(seq: int, scores: dict, parts: dict | None, transcript: str | None = None) -> dict:
    now = time.time()
    event = {"type": "utterance", "station": "till-1", "role": "customer", "seq": seq,
             "start": seq * 3.0, "end": seq * 3.0 + 2.0, "duration": 2.0, "time": now, "scores": scores,
             "rolling": {k: {"score": v, "count": seq, "updated": now} for k, v in scores.items()},
             "insufficient": None, "quality": {"duration_s": 2.0, "level_dbfs": -22.0, "clipped": 0.0, "snr_db": 30.0}}
    if parts is not None:
        event["parts"] = parts
    if transcript is not None:
        event["transcript"] = transcript
    return event


def newest(page, station: str, count: int) -> str:
    """The selector of the station's newest feed entry, once it has `count` entries."""
    page.wait_for_function("([s, n]) => document.querySelectorAll(`#feed li[data-station='${s}']`).length >= n",
                           arg=[station, count], timeout=5000)
    return f'#feed li[data-station="{station}"]:first-child'


def chips(page, entry: str) -> dict:
    return {c.get_attribute("data-emotion") or c.get_attribute("data-basis"): c.inner_text()
            for c in page.query_selector_all(f"{entry} .chip")}


@pytest.mark.slow
def test_feed_card_and_tile_say_what_each_score_is_made_of(fake_server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors, dialogs = [], []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(fake_server.base + "/#cards")
    page.wait_for_selector('#connection[data-state="live"]', timeout=15000)
    page.wait_for_selector('.card[data-station="till-1"] .bar[data-emotion="purchase_intention"]', timeout=5000)
    card = '.card[data-station="till-1"]'

    # Fused: the fused score, then each path's own, all towards the chip's pole.
    fake_server.send(utterance(1, {"purchase_intention": 0.81, "pleasant": 0.3},
                               {"audio": {"purchase_intention": 0.35, "pleasant": 0.4},
                                "text": {"purchase_intention": 0.93, "pleasant": 0.2}}, HOSTILE))
    entry = newest(page, "till-1", 1)
    assert chips(page, entry) == {"purchase_intention": "Purchase intention 81% (audio 35 · words 93)",
                                  "pleasant": "Unpleasant 70% (audio 60 · words 80)",
                                  "words": "fused · audio + words"}
    # The transcript is text, quoted: no element of it exists, no script of it ran.
    assert page.inner_text(f"{entry} .transcript") == f"“{HOSTILE}”"
    assert page.query_selector("#feed img, #feed script") is None
    assert page.query_selector(f"{entry} .transcript *") is None
    # The card's bars stay the fused rolling score; a line says what went into it.
    page.wait_for_selector(f'{card}[data-basis="words"]', timeout=5000)
    assert page.inner_text(f"{card} .basis") == "Last scored utterance: fused · audio + words"
    assert page.inner_text(f'{card} .bar[data-emotion="purchase_intention"] .value') == "81 · n=1"
    ARTIFACTS.mkdir(exist_ok=True)

    # The floor tile: the fused number, and a small note that words went into it.
    page.click('nav.views a[data-view="floor"]')
    tile = '#floor .tile[data-station="till-1"]'
    page.wait_for_selector(f"{tile}[data-words]", timeout=5000)
    assert page.inner_text(f"{tile} .intention") == "81"
    assert page.inner_text(f"{tile} .caption").endswith("· + words")
    assert "words" not in page.inner_text('#floor .tile[data-station="desk-1"]')
    page.click('nav.views a[data-view="cards"]')
    page.wait_for_selector(card, state="visible", timeout=5000)

    # No transcript understood: the score is the audio part, and it says so.
    fake_server.send(utterance(2, {"purchase_intention": 0.6, "pleasant": 0.55},
                               {"audio": {"purchase_intention": 0.6, "pleasant": 0.55}}))
    entry = newest(page, "till-1", 2)
    assert chips(page, entry) == {"purchase_intention": "Purchase intention 60%", "pleasant": "Pleasant 55%",
                                  "audio": "audio only"}
    assert page.query_selector(f"{entry} .transcript") is None
    page.wait_for_selector(f'{card}[data-basis="audio"]', timeout=5000)
    assert page.inner_text(f"{card} .basis") == "Last scored utterance: audio only"
    page.screenshot(path=str(ARTIFACTS / "dashboard-paths.png"), full_page=True)

    # An older server sends no parts: the score alone, neither "audio only" nor words claimed.
    fake_server.send(utterance(3, {"purchase_intention": 0.7}, None))
    entry = newest(page, "till-1", 3)
    assert chips(page, entry) == {"purchase_intention": "Purchase intention 70%"}
    page.wait_for_function(f"() => !document.querySelector('{card}').dataset.basis", timeout=5000)
    assert not page.is_visible(f"{card} .basis")

    # Staff speech stays speech only, even if a transcript came with it (against the protocol).
    fake_server.send({"type": "speech", "station": "desk-1", "role": "staff", "seq": 1, "start": 0.0, "end": 1.5,
                      "duration": 1.5, "time": time.time(), "transcript": "secret staff words"})
    entry = newest(page, "desk-1", 1)
    assert page.inner_text(entry).endswith("speech · not scored")
    assert "secret" not in page.inner_text("body")

    page.wait_for_timeout(200)   # a deferred render would surface here
    assert not errors, errors
    assert not dialogs, dialogs
