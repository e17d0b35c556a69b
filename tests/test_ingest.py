"""WebSocket ingest: start message, s16le frames, limits; bad frames get errors and the
session goes on; closing flushes the station's last utterance."""
import asyncio
import json

import numpy as np
import soxr
import websockets

from tests.servicekit import receive, service_config, url, with_service
from tests.speech import dialogue

SCRIPT = [0.5, "Hello, I would like to see the red shoes.", 1.0,
          "Do you have them in size nine?", 1.0, "That sounds good, I will take them."]


def frames(audio: np.ndarray, rate: int, seconds: float = 0.1):
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(rate * seconds) * 2
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]


async def replies(ws, n):
    return [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(n)]


def test_ingest_good_and_bad_frames(tmp_path, tiny_bundle):
    audio, spans = dialogue(SCRIPT, tmp_path)  # ends on speech: only the close flushes it
    cfg = service_config(tmp_path, tiny_bundle, ingest_max_rate=1000.0, ingest_max_frame_bytes=8000)

    async def body(svc):
        async with websockets.connect(url(svc, "/ws")) as watcher:
            await receive(watcher, "hello", 1)
            async with websockets.connect(url(svc, "/ingest")) as ing:
                await ing.send(b"\x00\x00")  # audio before start
                await ing.send("not json")
                await ing.send(json.dumps({"type": "start", "station": "bad name!"}))
                await ing.send(json.dumps({"type": "start", "station": "kiosk-1",
                                           "role": "customer", "sample_rate": 8000}))
                early = await replies(ing, 4)
                await ing.send(b"\x00\x00\x00")  # odd byte count
                await ing.send(b"\x00" * 9000)  # over the frame limit
                await ing.send(json.dumps({"type": "start", "station": "again"}))
                bad = await replies(ing, 3)
                low = soxr.resample(audio, 16000, 8000).astype(np.float32)
                for frame in frames(low, 8000):
                    await ing.send(frame)
                # the session took nothing wrongly; everything after the errors is audio
                got = await receive(watcher, "utterance", 2, timeout=30)
            got += await receive(watcher, "utterance", 1, timeout=30)  # flushed on close
            health = svc.parts.server.health()
        return early, bad, got, health

    early, bad, got, health = with_service(cfg, body)
    assert [r.get("reason") for r in early[:3]] == ["not_started", "bad_json", "bad_start"]
    assert early[3] == {"type": "started", "station": "kiosk-1", "role": "customer", "sample_rate": 8000}
    assert [r["reason"] for r in bad] == ["bad_frame", "frame_too_large", "already_started"]
    assert [g["station"] for g in got] == ["kiosk-1"] * 3
    assert all(g["role"] == "customer" and "purchase_intention" in g["scores"] for g in got)
    for g, (on, off) in zip(got, spans):
        assert abs(g["start"] - on) < 0.4 and abs(g["end"] - off) < 0.6, (g, on, off)
    assert health["stations"]["kiosk-1"] == "ended"
    assert health["status"] == "degraded"  # someone sends garbage: the operator is told what
    assert "refused in the last 60 s: ingest already_started 1, ingest bad_frame 1, ingest bad_json 1, " \
           "ingest bad_start 1, ingest frame_too_large 1, ingest not_started 1" in health["problems"]


def test_configured_station_names_are_refused(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle, stations='[[stations]]\nname = "desk"\nfile = "x.wav"\n')

    async def body(svc):
        async with websockets.connect(url(svc, "/ingest")) as ing:
            await ing.send(json.dumps({"type": "start", "station": "desk"}))
            return await replies(ing, 1)

    (reply,) = with_service(cfg, body)
    assert reply["reason"] == "station_in_use"


def test_a_client_sending_garbage_is_closed_and_what_it_said_before_is_kept(tmp_path, tiny_bundle):
    """Garbage at full rate costs every station's latency: after more than
    `ingest_max_errors` refusals in 10 s the connection is closed (1008); the speech it
    sent before was accepted and is scored."""
    audio, spans = dialogue(SCRIPT[:2], tmp_path)
    cfg = service_config(tmp_path, tiny_bundle, ingest_max_rate=1000.0, ingest_max_errors=5)

    async def body(svc):
        async with websockets.connect(url(svc, "/ws")) as watcher:
            await receive(watcher, "hello", 1)
            async with websockets.connect(url(svc, "/ingest")) as ing:
                await ing.send(json.dumps({"type": "start", "station": "kiosk-9", "role": "customer"}))
                for frame in frames(audio, 16000):
                    await ing.send(frame)
                errors = 0
                try:
                    for _ in range(50):
                        await ing.send(b"\x01")
                    while True:
                        reply = json.loads(await asyncio.wait_for(ing.recv(), 10))
                        errors += reply["type"] == "error"
                except websockets.ConnectionClosed as exc:
                    closed = (exc.rcvd.code, exc.rcvd.reason)
            got = await receive(watcher, "utterance", len(spans), timeout=30)
        return closed, errors, got, svc.parts.server.health()

    closed, errors, got, health = with_service(cfg, body)
    assert closed == (1008, "more than 5 refused messages in 10 s") and errors == 6
    assert [g["station"] for g in got] == ["kiosk-9"] * len(spans)
    assert any("ingest_abusive 1" in p for p in health["problems"]), health["problems"]
