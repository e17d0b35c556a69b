"""Customer visits: the core state machine (no sockets) and the service end to end."""
import asyncio
import json
import subprocess
import sys
import time

import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st

from emoclap import wire
from emoclap.record import Utterance
from emoclap.visits import Visits
from tests.servicekit import REPO, push, receive, service_config, url, with_service


def utt(t, duration=2.0, station="s1", score=None):
    e = {"type": "utterance", "station": station, "role": "customer", "time": t, "duration": duration,
         "scores": {"pleasant": 0.5}}
    if score is not None:
        e["scores"]["purchase_intention"] = score
    return e


def speech(t, duration=2.0, station="s1", role="staff"):
    return {"type": "speech", "station": station, "role": role, "time": t, "duration": duration}


def test_trajectory_and_talk_share_by_hand():
    v = Visits(end_after_s=90)
    assert v.observe(speech(998.0)) == (None, [])  # staff alone opens nothing
    vid, [opened] = v.observe(utt(1002.0, score=0.2))  # 1000 → 1002
    assert vid == "s1-1000000" and opened["state"] == "opened"
    assert opened["talk_share"] == 1.0 and opened["purchase_intention"] == {
        "first": 0.2, "last": 0.2, "max": 0.2, "slope_per_min": None, "count": 1}
    assert v.observe(speech(1010.0, 6.0)) == (vid, [opened | {
        "state": "updated", "end": 1010.0, "duration": 10.0, "talk_share": 0.25}])
    v.observe(utt(1032.0, score=0.8))
    _, [last] = v.observe(utt(1062.0, 4.0, score=0.5))
    # points (2, .2), (32, .8), (62, .5) in seconds after the start: slope .005/s = .3/min
    assert last["purchase_intention"] == {"first": 0.2, "last": 0.5, "max": 0.8, "slope_per_min": 0.3,
                                          "count": 3}
    assert last["utterances"] == 3 and last["talk_share"] == pytest.approx(8 / 14, abs=1e-4)
    assert v.tick(1062.0 + 90) == []  # silence must exceed end_after_s
    [closed] = v.tick(1062.0 + 90.5)
    assert closed == last | {"state": "closed"} and v.open == {}


def test_unscored_visit_late_silence_and_unique_ids():
    v = Visits(end_after_s=10)
    a, _ = v.observe(utt(5.0, 1.0))
    _, evs = v.observe(utt(30.0, 1.0))  # started 24 s after the last end: the tick was late
    assert [e["state"] for e in evs] == ["closed", "opened"] and evs[0]["visit"] == a
    assert evs[0]["purchase_intention"] is None and evs[1]["visit"] != a
    b = evs[1]["visit"]
    v.close_all()
    c, _ = v.observe(utt(30.0, 1.0))  # same start again (a replay): still a new id
    assert c not in (a, b)
    assert v.forget("s1")["visit"] == c and v.forget("s1") is None
    with pytest.raises(ValueError):
        Visits(0)


def test_stations_are_independent_and_zero_length_speech():
    v = Visits(end_after_s=10)
    x, _ = v.observe(utt(1.0, 0.0, station="a"))
    y, evs = v.observe(utt(2.0, station="b"))
    assert x != y and evs[0]["station"] == "b"
    _, [opened] = v.observe(utt(1.0, 0.0, station="c"))
    assert opened["talk_share"] is None  # no speech seconds at all
    assert {e["station"] for e in v.tick(100.0)} == {"a", "b", "c"}


@st.composite
def interleavings(draw):
    """Events of two stations and ticks, times non-decreasing, gaps around end_after_s."""
    t, out = 0.0, []
    for _ in range(draw(st.integers(0, 60))):
        t += draw(st.sampled_from([0.0, 0.5, 3.0, 9.9, 10.0, 10.1, 25.0]))
        kind = draw(st.sampled_from(["customer", "staff", "auto", "tick"]))
        duration = draw(st.sampled_from([0.0, 0.3, 2.0, 5.0]))
        station = draw(st.sampled_from(["a", "b"]))
        score = draw(st.none() | st.floats(0, 1))
        out.append(("tick", t) if kind == "tick" else
                   (kind, utt(t, duration, station, score) if kind == "customer"
                    else speech(t, duration, station, kind)))
    return out


@settings(max_examples=300, deadline=None)
@given(interleavings())
def test_every_customer_utterance_in_exactly_one_visit(events):
    v = Visits(end_after_s=10)
    visit_of, closed, opened = [], {}, set()

    def take(evs):
        for e in evs:
            if e["state"] == "opened":
                assert e["visit"] not in opened
                opened.add(e["visit"])
            else:
                assert e["visit"] in opened and e["visit"] not in closed  # closed at most once
            if e["state"] == "closed":
                closed[e["visit"]] = e
    for kind, payload in events:
        if kind == "tick":
            take(v.tick(payload))
            continue
        vid, evs = v.observe(payload)
        take(evs)
        if kind == "customer":
            assert vid is not None and vid not in closed
            visit_of.append((payload["station"], vid))
        assert len(v.open) <= 2  # bounded: one open visit per station
    take(v.close_all())
    assert set(closed) == opened and v.open == {}
    for station, vid in visit_of:
        assert closed[vid]["station"] == station
    for station in ("a", "b"):
        spans = sorted((c["start"], c["end"]) for c in closed.values() if c["station"] == station)
        assert all(s1 <= e1 <= s2 for (s1, e1), (s2, _) in zip(spans, spans[1:]))
    assert sum(c["utterances"] for c in closed.values()) == len(visit_of)


# ---- through the service

DIM = 16


def test_visits_on_ws_in_history_and_export(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle)
    cfg.visits.end_after_s = 1.0
    t0 = time.time()

    def messages():
        import numpy as np
        rng = np.random.default_rng(0)
        for seq, (role, start) in enumerate([("customer", 0.0), ("staff", 2.0), ("customer", 4.0)], 1):
            u = Utterance("s1", role, seq, start, start + 1.5, t0, time.time())
            if role == "staff":
                yield wire.speech(u)
            else:
                vec = rng.normal(size=DIM).astype(np.float32)
                u.embedding = vec / np.linalg.norm(vec)
                yield wire.embedding(u)

    async def body(svc):
        async with websockets.connect(url(svc, "/ws")) as ws:
            await receive(ws, "hello", 1)
            await asyncio.to_thread(push, svc, messages())
            got = []
            while not got or got[-1].get("state") != "closed":
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if msg["type"] in ("utterance", "speech", "visit"):
                    got.append(msg)
        return got, list(svc.parts.history.visits()), list(svc.parts.history.events())

    got, stored, history = with_service(cfg, body)
    visits = [m for m in got if m["type"] == "visit"]
    assert [m["state"] for m in visits] == ["opened", "updated", "updated", "closed"]
    vid = visits[0]["visit"]
    assert vid.startswith("s1-") and abs(int(vid[3:]) - t0 * 1000) <= 2
    assert all(m["visit"] == vid for m in got)  # utterances and staff speech carry the id
    closed = visits[-1]
    assert closed["utterances"] == 2 and closed["talk_share"] == pytest.approx(2 / 3, abs=1e-3)
    assert closed["duration"] == pytest.approx(5.5, abs=2e-3)
    assert closed["purchase_intention"]["count"] == 2
    assert stored == [closed] and all(h["visit"] == vid for h in history)

    config = tmp_path / "c.toml"
    config.write_text(f'[history]\npath = "{cfg.history.path}"\n')
    base = [sys.executable, "-m", "daemon.cli", "history", "export", "--visits", "--config", str(config)]
    run = lambda *extra: subprocess.run(base + list(extra), cwd=REPO, capture_output=True, text=True,  # noqa: E731
                                        timeout=60, check=True)
    assert [json.loads(line) for line in run("--format", "jsonl").stdout.splitlines()] == [closed]
    rows = run("--since", str(int(t0) - 1)).stdout.splitlines()
    assert rows[0].startswith("visit,station,start,end,duration,utterances,talk_share,intention_first")
    assert rows[1].startswith(f"{vid},s1,") and len(rows) == 2
    assert run("--since", str(int(t0) + 3600)).stdout.splitlines() == rows[:1]


def test_open_visit_is_closed_and_stored_at_shutdown(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle)

    async def body(svc):
        import numpy as np
        v = np.ones(DIM, np.float32) / np.sqrt(DIM)
        await asyncio.to_thread(push, svc, [wire.embedding(
            Utterance("s1", "customer", 1, 0.0, 1.0, time.time(), time.time(), embedding=v))])
        for _ in range(100):
            if svc.parts.serve.scoring.visits.open:
                break
            await asyncio.sleep(0.05)
        return svc.parts.history

    history = with_service(cfg, body)
    from daemon.history import History
    [closed] = list(History(history.path).visits())
    assert closed["state"] == "closed" and closed["utterances"] == 1
