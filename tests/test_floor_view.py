"""The dashboard's floor view in a real headless Chromium against a real `emoclapd run`
with 24 stations (16 customer microphones, one of them far too quiet, and 8 staff ones,
replaying the small corpus's dialogues in a loop) and an alert rule that fires on any
score.

On a 1920×1080 screen every tile is on screen and the page does not scroll; sorting
reorders the tiles (and is remembered); a customer's visit shows on its tile with a
length that ticks; the alert highlights the tile and is listed; staff tiles show speech
activity only; a click opens the station's card and one click goes back; an utterance
the server flags as insufficient is shown greyed with its reason and moves no score.
On a phone the tiles flow and the page scrolls, without sideways overflow. Screenshots
go to test-artifacts/ (floor-1920x1080.png, card.png, floor-phone.png, feed-narrow.png).

And hostile `/ws` messages (any JSON, and valid messages with any field replaced by
anything) never throw in the page's message handler or its rendering, and leave a page
that still shows the next valid messages right."""
from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.servicekit import free_port
from tests.test_dashboard import chromium, emoclapd_run

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
DIALOGUES = ("s1-car-d1", "s2-phone-d1", "s3-sofa-d1")
STATIONS = 24
RULE = "ready to buy"
QUIET = "floor-22"  # a customer microphone far too quiet: its utterances are insufficient


def role_of(i: int) -> str:
    return "staff" if i % 3 == 0 else "customer"


def floor_config(folder: Path, bundle: Path, corpus: Path, port: int) -> Path:
    """24 replay stations: station i (1-based) is staff when i is a multiple of 3, and
    replays dialogue i mod 3 (its staff or customer channel), so names interleave roles;
    QUIET replays its dialogue 40 dB down (`folder/quiet.wav`), too quiet to count."""
    def wav(i):
        return folder / "quiet.wav" if f"floor-{i:02d}" == QUIET else corpus / "dialogues" / f"{DIALOGUES[i % 3]}.wav"
    stations = "".join(f"""
[[stations]]
name = "floor-{i:02d}"
role = "{role_of(i)}"
source = "replay"
file = "{wav(i)}"
channel = {0 if role_of(i) == "staff" else 1}
loop = true
""" for i in range(1, STATIONS + 1))
    path = folder / "config.toml"
    path.write_text(f"""bundle = "{bundle}"
prompts = "{REPO / 'prompts'}"
cache = "cache.sqlite3"
[history]
path = "history.sqlite3"
[server]
port = {port}
[rolling]
interval_s = 1.0
[[alerts]]
name = "{RULE}"
emotion = "purchase_intention"
above = 0.0
min_utterances = 1
cooldown_s = 1
{stations}""")
    return path


@pytest.fixture
def floor_daemon(tmp_path, tiny_bundle, small_corpus):
    port = free_port()
    audio, rate = soundfile.read(small_corpus / "dialogues" / f"{DIALOGUES[22 % 3]}.wav", dtype="float32")
    soundfile.write(tmp_path / "quiet.wav", audio * 10 ** (-40 / 20), rate, subtype="PCM_16")
    config = floor_config(tmp_path, tiny_bundle, small_corpus, port)
    with emoclapd_run(config, port) as base:
        yield base


@pytest.fixture
def browser():
    with chromium() as b:
        yield b


def tile_names(page) -> list[str]:
    return page.eval_on_selector_all("#floor .tile", "ts => ts.map(t => t.dataset.station)")


def geometry(page) -> dict:
    return page.evaluate("""() => ({
        inner: [innerWidth, innerHeight],
        scroll: [document.documentElement.scrollWidth, document.documentElement.scrollHeight],
        tiles: [...document.querySelectorAll('#floor .tile')].map(t => {
            const r = t.getBoundingClientRect();
            return {name: t.dataset.station, left: r.left, top: r.top, right: r.right, bottom: r.bottom,
                    overflow: t.scrollHeight > t.clientHeight + 1};
        })})""")


def feed_overlaps(page) -> list[str]:
    """Feed entries whose station name and time run into each other."""
    return page.evaluate("""() => [...document.querySelectorAll('#feed li:not([hidden])')].filter(li => {
        const a = li.querySelector('.who').getBoundingClientRect(), b = li.querySelector('.when').getBoundingClientRect();
        return a.width && b.width && a.right > b.left - 2 && a.bottom > b.top && b.bottom > a.top;
    }).map(li => li.textContent)""")


@pytest.mark.slow
def test_floor_view_24_stations_visits_alerts_sorting_and_card(floor_daemon, browser):
    base = floor_daemon
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base + "/")
    page.wait_for_selector('#connection[data-state="live"]', timeout=15000)

    # More than a few stations: the floor is the default view, one tile per station.
    page.wait_for_function(f"document.querySelectorAll('#floor .tile').length === {STATIONS}", timeout=15000)
    assert page.get_attribute("body", "data-view") == "floor"
    page.select_option("#sort", "name")
    assert tile_names(page) == [f"floor-{i:02d}" for i in range(1, STATIONS + 1)]

    # A visit opens with a customer's first utterance: its tile shows it and its length,
    # and the length ticks on between events. The rule above fires on any score.
    visit_tile = '#floor .tile[data-visit][data-alert]'
    page.wait_for_selector(visit_tile, timeout=40000)
    name = page.get_attribute(visit_tile, "data-station")
    tile = f'#floor .tile[data-station="{name}"]'
    assert role_of(int(name.split("-")[1])) == "customer"
    first = page.inner_text(f"{tile} .visit b")
    assert first.count(":") == 1
    page.wait_for_function("""([sel, first]) => {
        const b = document.querySelector(sel);
        const secs = t => t.split(":").reduce((a, x) => a * 60 + Number(x), 0);
        return b && secs(b.textContent) >= secs(first) + 2; }""", arg=[f"{tile} .visit b", first], timeout=10000)
    assert "alert" in page.get_attribute(tile, "class")
    assert RULE in page.inner_text(f"{tile} .alert-line")
    alert_id = page.get_attribute(tile, "data-alert")
    listed = f'#floor-side li.fired[data-alert="{alert_id}"]'
    assert page.query_selector(listed) is not None
    assert RULE in page.inner_text(listed) and name in page.inner_text(listed)
    assert page.inner_text("#alert-count").startswith("⚠")
    assert page.get_attribute(tile, "data-intention") is not None
    assert page.inner_text(f"{tile} .trend") in ("", "↑", "↓", "→")
    assert "%" in page.inner_text(f"{tile} .extreme")

    # The too-quiet microphone: its utterances arrive flagged by the server, are greyed in
    # the feed with the reason, and move no score (no number and no alert on its tile).
    quiet = f'#feed li.insufficient[data-station="{QUIET}"]'
    page.wait_for_selector(quiet, state="attached", timeout=20000)
    assert "not scored: too quiet (" in page.text_content(quiet) and "dBFS)" in page.text_content(quiet)
    assert "%" not in page.text_content(quiet)
    quiet_tile = f'#floor .tile[data-station="{QUIET}"]'
    assert page.text_content(f"{quiet_tile} .intention") == "–"
    assert page.get_attribute(quiet_tile, "data-intention") is None
    assert "alert" not in page.get_attribute(quiet_tile, "class")

    # Staff stations: speech activity only, never a score (the server sends none).
    page.wait_for_function("""() => [...document.querySelectorAll('#floor .tile.speech-only .talk')]
                              .some(t => t.textContent !== '0:00')""", timeout=20000)
    staff = page.query_selector_all("#floor .tile.speech-only")
    assert len(staff) == STATIONS // 3
    assert all(role_of(int(t.get_attribute("data-station").split("-")[1])) == "staff" for t in staff)
    assert all(t.query_selector(".intention") is None and "%" not in t.inner_text()
               and "data-intention" not in t.evaluate("t => Object.keys(t.dataset).join()") for t in staff)

    # All 24 tiles on one 1920×1080 screen, the document does not scroll, no tile spills.
    geo = geometry(page)
    assert geo["scroll"][0] <= geo["inner"][0] and geo["scroll"][1] <= geo["inner"][1], geo
    assert len(geo["tiles"]) == STATIONS
    for t in geo["tiles"]:
        assert t["left"] >= 0 and t["top"] >= 0 and t["right"] <= 1920 and t["bottom"] <= 1080, t
        assert not t["overflow"], t
    page.screenshot(path=str(ARTIFACTS / "floor-1920x1080.png"))

    # Sorting: by purchase intention (scored stations first, highest first, staff last),
    # alerts first.
    page.select_option("#sort", "intention")
    order = tile_names(page)
    assert order != [f"floor-{i:02d}" for i in range(1, STATIONS + 1)]
    scores = page.eval_on_selector_all("#floor .tile", "ts => ts.map(t => t.dataset.intention)")
    known = [float(v) for v in scores if v is not None]
    assert known and scores[:len(known)] == [v for v in scores if v is not None]   # unscored last
    assert known == sorted(known, reverse=True)
    assert all(role_of(int(n.split("-")[1])) == "staff" or n == QUIET for n in order[len(known):])
    page.select_option("#sort", "alerts")
    flags = page.eval_on_selector_all("#floor .tile", "ts => ts.map(t => t.classList.contains('alert'))")
    assert flags[0] and flags == sorted(flags, reverse=True)
    # One click to the station's card (visit, active alert), one click back.
    page.click(tile)
    page.wait_for_selector(f'body[data-view="station"] .card.focused[data-station="{name}"]', timeout=5000)
    card = f'.card[data-station="{name}"]'
    assert page.is_visible(card)
    assert sum(page.is_visible(f'.card[data-station="floor-{i:02d}"]') for i in range(1, STATIONS + 1)) == 1
    assert page.inner_text(f"{card} .visit").startswith("Visit ")
    assert RULE in page.inner_text(f"{card} .alerts")
    assert "alert" in page.get_attribute(card, "class")
    assert set(page.eval_on_selector_all("#cards-view ul.alert-list li", "ls => ls.map(l => l.dataset.station)")) == {name}
    page.wait_for_selector(f'{card} .bar[data-emotion="purchase_intention"][data-score]', timeout=5000)
    # the feed shows this station only, the name and the time never run into each other
    page.wait_for_selector(f'#feed li[data-station="{name}"]:not([hidden])', timeout=20000)
    assert not page.query_selector_all(f'#feed li:not([hidden]):not([data-station="{name}"])')
    assert feed_overlaps(page) == []

    # An insufficient utterance that (against the protocol) carries moved rolling scores,
    # through the page's own message handler: greyed with its reason, bars unmoved.
    bar = f'{card} .bar[data-emotion="purchase_intention"]'
    quiet = f'#feed li.insufficient[data-station="{name}"]'
    # One task of the page's own: the live utterances of this station cannot land between
    # reading the bar, the injected event and reading it again.
    seen = page.evaluate("""([name, bar, card, quiet]) => {
        render();
        const before = document.querySelector(bar + " .value").textContent;
        onMessage({type: "utterance", station: name, role: "customer", seq: 999999,
            start: 1, end: 2, duration: 1.0, time: Date.now() / 1000, scores: {purchase_intention: 0.99},
            rolling: {purchase_intention: {score: 0.99, count: 999, updated: Date.now() / 1000}},
            insufficient: "too_quiet",
            quality: {duration_s: 0.9, level_dbfs: -57.2, clipped: 0.0, snr_db: 12.0}});
        render();
        const item = document.querySelector(quiet);
        return {before, after: document.querySelector(bar + " .value").textContent,
                card: document.querySelector(card + " .quality").textContent,
                feed: item ? item.textContent : ""};
    }""", [name, bar, card, quiet])
    assert "too quiet (-57 dBFS)" in seen["feed"] and "99" not in seen["feed"], seen
    assert page.evaluate("(sel) => getComputedStyle(document.querySelector(sel)).opacity", quiet) != "1"
    assert seen["after"] == seen["before"], seen
    assert "too quiet" in seen["card"], seen
    page.screenshot(path=str(ARTIFACTS / "card.png"))

    page.click("#back")
    page.wait_for_selector('body[data-view="floor"]', timeout=5000)
    assert page.is_visible(tile)

    # The sort choice survives a reload; a page opened mid-visit and mid-alert shows
    # both at once (from hello).
    page.reload()
    page.wait_for_function(f"document.querySelectorAll('#floor .tile').length === {STATIONS}", timeout=15000)
    assert page.input_value("#sort") == "alerts"
    assert page.query_selector(f'{tile}[data-visit].alert') is not None

    # A phone: the tiles flow in a column and the page scrolls, never sideways.
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function("document.body.classList.contains('flow')", timeout=5000)
    geo = geometry(page)
    assert geo["scroll"][0] <= geo["inner"][0], geo
    assert all(t["right"] <= 390 and not t["overflow"] for t in geo["tiles"]), geo["tiles"]
    page.screenshot(path=str(ARTIFACTS / "floor-phone.png"))

    # The feed on a narrow screen: a long station name is cut short, never run into by the time.
    page.goto(base + "/#cards")
    page.wait_for_selector('#connection[data-state="live"]', timeout=15000)
    page.evaluate("""() => onMessage({type: "speech", station: "entrance-kiosk-by-the-revolving-door-north",
        role: "staff", seq: 1, start: 0, end: 2.5, duration: 2.5, time: Date.now() / 1000})""")
    page.wait_for_selector('#feed li[data-station="entrance-kiosk-by-the-revolving-door-north"]', timeout=2000)
    assert feed_overlaps(page) == []
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    page.locator("#feed").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "feed-narrow.png"))
    assert not errors, errors


def test_floor_config_is_valid(tmp_path):
    """The fixture's configuration (and its alert rule) passes the daemon's own checks."""
    from daemon.config import load_config
    cfg = load_config(floor_config(tmp_path, tmp_path, tmp_path, 8765))
    assert len(cfg.stations) == STATIONS and [r.name for r in cfg.alerts] == [RULE]
    assert sum(s.role == "staff" for s in cfg.stations) == STATIONS // 3


# ---- hostile messages: the page's handler and rendering, fed JSON text as the socket would

KEYS = ["type", "station", "role", "stations", "states", "emotions", "name", "label", "negative", "positive",
        "roles", "scores", "rolling", "score", "count", "updated", "time", "duration", "visit", "visits",
        "alerts", "state", "id", "rule", "emotion", "direction", "threshold", "value", "start", "end",
        "utterances", "talk_share", "purchase_intention", "first", "last", "max", "slope_per_min",
        "insufficient", "quality", "level_dbfs", "clipped", "snr_db", "duration_s", "scored_roles",
        "message", "reason", "customer", "__proto__", "constructor", "toString",
        "parts", "audio", "text", "transcript"]
TEXT = st.text(st.characters(blacklist_categories=()), max_size=12) | st.sampled_from(KEYS)
LEAF = (st.none() | st.booleans() | st.integers(-2**53, 2**53)
        | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
ANY = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=5),
                   max_leaves=16)
NOW = 1795304266.8
ROLLING = {"purchase_intention": {"score": 0.71, "count": 3, "updated": NOW}, "pleasant": {"score": 0.2, "count": 3}}
VISIT = {"type": "visit", "state": "updated", "station": "s1", "visit": "s1-1", "start": NOW - 60, "end": NOW,
         "duration": 60.0, "utterances": 3, "talk_share": 0.4,
         "purchase_intention": {"first": 0.5, "last": 0.7, "max": 0.7, "slope_per_min": 0.2, "count": 3}}
ALERT = {"type": "alert", "state": "fired", "id": "r@s1-1", "rule": "r", "station": "s1", "role": "customer",
         "emotion": "purchase_intention", "direction": "above", "threshold": 0.7, "rearm": 0.6, "value": 0.74,
         "count": 4, "visit": "s1-1", "time": NOW, "seq": 3}
EMOTION = {"name": "purchase_intention", "label": "Purchase intention", "negative": "No", "positive": "Yes",
           "roles": ["customer"]}
TEMPLATES = [
    {"type": "hello", "version": 1, "emotions": [EMOTION, dict(EMOTION, name="pleasant", label="Pleasant", roles=None)],
     "stations": [{"name": "s1", "role": "customer", "source": "replay", "state": "online"},
                  {"name": "s2", "role": "staff", "source": "replay", "state": "online"}],
     "prompt_errors": [], "scored_roles": ["customer"], "alerts": [ALERT], "visits": [VISIT]},
    {"type": "utterance", "station": "s1", "role": "customer", "seq": 1, "start": 1.0, "end": 3.0, "duration": 2.0,
     "time": NOW, "scores": {"purchase_intention": 0.7, "pleasant": 0.2}, "rolling": ROLLING, "visit": "s1-1",
     "insufficient": "too_quiet", "quality": {"duration_s": 1.9, "level_dbfs": -60.0, "clipped": 0.0, "snr_db": 9.0}},
    {"type": "utterance", "station": "s1", "role": "customer", "seq": 2, "start": 4.0, "end": 6.0, "duration": 2.0,
     "time": NOW, "scores": {"purchase_intention": 0.8, "pleasant": 0.3}, "rolling": ROLLING, "visit": "s1-1",
     "parts": {"audio": {"purchase_intention": 0.4, "pleasant": 0.3}, "text": {"purchase_intention": 0.9}},
     "transcript": "I'll take it.",
     "insufficient": None, "quality": {"duration_s": 1.9, "level_dbfs": -20.0, "clipped": 0.0, "snr_db": 30.0}},
    {"type": "speech", "station": "s2", "role": "staff", "seq": 2, "start": 1.0, "end": 3.0, "duration": 2.0,
     "time": NOW},
    {"type": "rolling", "time": NOW, "stations": {"s1": {"customer": ROLLING}}, "states": {"s1": "online", "s2": "offline"}},
    VISIT, dict(VISIT, state="closed"), ALERT, dict(ALERT, state="cleared"),
    {"type": "prompts", "emotions": [EMOTION], "errors": []},
    {"type": "error", "reason": "bad_message", "message": "x"},
]


def mutated(template: dict):
    """The template with each field kept, replaced by anything, or (one level down) mutated."""
    def field(value):
        if isinstance(value, dict):
            return st.just(value) | ANY | mutated(value)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return st.just(value) | ANY | st.lists(mutated(value[0]), max_size=3)
        return st.just(value) | ANY
    return st.fixed_dictionaries({k: field(v) for k, v in template.items()},
                                 optional={k: ANY for k in KEYS[:12] if k not in template})


def one_field(value):
    """`value` with exactly one field, at any depth, replaced by anything: every other
    field stays valid, so the handler gets far with it."""
    def inner(v):
        return ANY | one_field(v) if isinstance(v, (dict, list)) and v else ANY
    if isinstance(value, dict) and value:
        return st.sampled_from(sorted(value)).flatmap(lambda k: inner(value[k]).map(lambda v: {**value, k: v}))
    if isinstance(value, list) and value:
        return st.integers(0, len(value) - 1).flatmap(
            lambda i: inner(value[i]).map(lambda v: value[:i] + [v] + value[i + 1:]))
    return ANY


# every field, at every depth, of every message, replaced by each of these in turn
HOSTILE = [None, -1.5, 1e308, "__proto__", [], {}]


def replaced(value, path, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


def paths(value, path=(), seen=()):
    """Every field's path; a nested message that is also a template of its own (the
    alert in `hello`) is replaced whole, its fields are swept on its own."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield path + (key,)
        if not any(child == other for other in seen):
            yield from paths(child, path + (key,), seen)


def sweep() -> list[tuple[str, str]]:
    views = ["#floor", "#cards", "#station=s1"]
    out, swept = [], []
    for template in TEMPLATES:
        # a closed visit or cleared alert after the open one: its top level is what differs
        shallow = template["type"] in ("visit", "alert") and any(o["type"] == template["type"] for o in swept)
        for path in paths(template, seen=TEMPLATES):
            if shallow and len(path) > 1:
                continue
            for value in HOSTILE:
                out.append((json.dumps(replaced(template, path, value)), views[len(out) % 3]))
        swept.append(template)
    return out


MESSAGES = (st.sampled_from(TEMPLATES).flatmap(one_field) | st.sampled_from(TEMPLATES).flatmap(mutated)
            | st.dictionaries(TEXT, ANY, max_size=6) | ANY)
# what a page shows when it formats a value it should have refused
GARBAGE = r"/NaN|undefined|\[object |Infinity|Invalid Date/"
SWEEP = """([hello, cases]) => {
    const errors = [];
    const shown = () => [...document.querySelectorAll("header, main")].map(e => e.textContent).join(" ");
    for (const [text, hash] of cases) {
        history.replaceState(null, "", hash);
        try { onMessage(JSON.parse(hello)); onMessage(JSON.parse(text)); render(); }
        catch (err) { errors.push(text + " " + hash + ": " + (err.stack || err)); }
        const garbage = shown().match(GARBAGE);
        if (garbage) errors.push(text + " " + hash + " shows " + garbage[0]);
    }
    return errors;
}""".replace("GARBAGE", GARBAGE)

FEED = """([texts, hash]) => {
    const errors = [];
    for (const text of texts) {
        let msg;
        try { msg = JSON.parse(text); } catch (err) { continue; }   // the socket handler skips these too
        try { onMessage(msg); } catch (err) { errors.push("onMessage: " + (err.stack || err)); }
    }
    history.replaceState(null, "", hash);
    try { render(); } catch (err) { errors.push(hash + " render: " + (err.stack || err)); }
    const shown = [...document.querySelectorAll("header, main")].map(e => e.textContent).join(" ");
    const garbage = shown.match(GARBAGE);
    if (garbage && !texts.some(t => GARBAGE.test(t))) errors.push(hash + " shows " + garbage[0]);
    return errors;
}""".replace("GARBAGE", GARBAGE)


@pytest.fixture
def static_page():
    """The page from a plain static server on 127.0.0.1 (no /ws: it keeps reconnecting)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    handler = functools.partial(Quiet, directory=str(REPO / "daemon" / "static"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_hostile_messages_never_break_the_page(static_page, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(static_page)
    page.wait_for_function("typeof onMessage === 'function'")

    cases = sweep()
    assert page.evaluate(SWEEP, [json.dumps(TEMPLATES[0]), cases]) == [], len(cases)

    @settings(max_examples=40, deadline=None, database=None)
    @given(st.lists(MESSAGES, min_size=1, max_size=4), st.sampled_from(["#floor", "#cards", "#station=s1"]))
    def feed(batch, hash):
        # each batch after a valid hello: it resets the page and names the stations
        texts = [json.dumps(TEMPLATES[0])] + [json.dumps(m) for m in batch]
        assert page.evaluate(FEED, [texts, hash]) == [], texts

    feed()
    # Whatever came before, the next valid messages show as they should.
    hello = dict(TEMPLATES[0], stations=[{"name": "ok-1", "role": "customer", "state": "online"}],
                 alerts=[], visits=[])
    utterance = dict(TEMPLATES[1], station="ok-1", insufficient=None, visit=None)
    assert page.evaluate(FEED, [[json.dumps(hello), json.dumps(utterance)], "#floor"]) == []
    assert page.eval_on_selector_all("#floor .tile", "ts => ts.map(t => t.dataset.station)") == ["ok-1"]
    assert page.inner_text('#floor .tile[data-station="ok-1"] .intention') == "71"
    page.wait_for_timeout(200)  # a deferred render would surface here
    assert not errors, errors
