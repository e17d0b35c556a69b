"""The WebSocket/HTTP server: routes, auth, subscriptions, slow-client isolation."""
import asyncio
import json
import socket
import urllib.error
import urllib.request

import websockets
from websockets.exceptions import InvalidStatus

from tests.servicekit import (embedding_messages, http_url, push, receive, service_config,
                              url, with_service)

DIM = 16


def get(address, headers=None):
    req = urllib.request.Request(address, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type"), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), err.read().decode()


def test_hello_utterances_history_metrics(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle)

    async def body(svc):
        async with websockets.connect(url(svc, "/ws")) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello" and hello["version"] == 1
            names = {e["name"]: e for e in hello["emotions"]}
            assert names["purchase_intention"]["roles"] == ["customer"]
            assert names["pleasant"]["negative"] == "Unpleasant"
            await asyncio.to_thread(push, svc, embedding_messages(5, DIM))
            events = await receive(ws, "utterance", 5)
            rolling = await receive(ws, "rolling", 1)
        status, ctype, text = await asyncio.to_thread(get, http_url(svc, "/metrics"))
        health = json.loads((await asyncio.to_thread(get, http_url(svc, "/healthz")))[2])
        page = await asyncio.to_thread(get, http_url(svc, "/"))
        history = list(svc.parts.history.events())
        return events, rolling, (status, ctype, text), health, page, history

    events, rolling, metrics, health, page, history = with_service(cfg, body)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    e = events[-1]
    assert e["station"] == "s1" and e["role"] == "customer" and e["duration"] == 1.5
    assert set(e["scores"]) >= {"pleasant", "purchase_intention"}
    assert all(0.0 <= v <= 1.0 for v in e["scores"].values())
    assert e["rolling"]["pleasant"]["count"] == 5
    assert rolling[0]["stations"]["s1"]["customer"]["pleasant"]["count"] == 5
    assert rolling[0]["states"]["s1"] == "online"  # dashboards learn station states here
    assert metrics[0] == 200 and metrics[1].startswith("text/plain")
    assert 'emoclap_utterances_total{station="s1"} 5.0' in metrics[2]
    assert health["utterances"] == 5 and health["status"] == "ok"
    assert page[0] == 200 and "emoclap" in page[2] and page[1].startswith("text/html")
    assert [h["seq"] for h in history] == [1, 2, 3, 4, 5]  # written before publishing
    assert history[0]["scores"] == events[0]["scores"]


def test_token_required_and_wrong_token_refused(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle, token="s3cret")

    async def body(svc):
        results = {}
        for name, path, headers in [("none", "/ws", None),
                                    ("wrong", "/ws", {"Authorization": "Bearer nope"}),
                                    ("header", "/ws", {"Authorization": "Bearer s3cret"}),
                                    ("query", "/ws?token=s3cret", None),
                                    ("ingest", "/ingest", None)]:
            try:
                async with websockets.connect(url(svc, path), additional_headers=headers) as ws:
                    results[name] = json.loads(await ws.recv())["type"] if path.startswith("/ws") else "open"
            except InvalidStatus as err:
                results[name] = err.response.status_code
        results["metrics"] = (await asyncio.to_thread(get, http_url(svc, "/metrics")))[0]
        results["healthz"] = (await asyncio.to_thread(get, http_url(svc, "/healthz")))[0]
        results["page"] = (await asyncio.to_thread(get, http_url(svc, "/?token=s3cret")))[0]
        return results

    r = with_service(cfg, body)
    assert r == {"none": 401, "wrong": 401, "header": "hello", "query": "hello", "ingest": 401,
                 "metrics": 401, "healthz": 200, "page": 200}


def test_subscribe_filters_stations_and_bad_messages_get_errors(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle)

    async def body(svc):
        async with websockets.connect(url(svc, "/ws")) as ws:
            await receive(ws, "hello", 1)
            await ws.send("{nope")
            err = await receive(ws, "error", 1)
            await ws.send(json.dumps({"type": "subscribe", "stations": ["b"]}))
            await receive(ws, "subscribed", 1)
            msgs = list(embedding_messages(3, DIM, "a")) + list(embedding_messages(2, DIM, "b"))
            await asyncio.to_thread(push, svc, msgs)
            got = await receive(ws, "utterance", 2)
            rolling = await receive(ws, "rolling", 1)
        return err, got, rolling

    err, got, rolling = with_service(cfg, body)
    assert err[0]["reason"] == "bad_message"
    assert [g["station"] for g in got] == ["b", "b"]
    assert set(rolling[0]["stations"]) == {"b"} and set(rolling[0]["states"]) == {"b"}


def raw_client(port: int) -> socket.socket:
    """A WebSocket client that handshakes and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert b"101" in sock.recv(200)
    return sock


def test_slow_client_is_closed_without_stalling_others(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle, client_queue=32)
    cfg.stages.hwm = 10000
    n = 4000

    async def body(svc):
        slow = await asyncio.to_thread(raw_client, svc.parts.server.port)
        try:
            async with websockets.connect(url(svc, "/ws"), max_queue=None) as fast:
                await receive(fast, "hello", 1)
                await asyncio.to_thread(push, svc, embedding_messages(n, DIM))
                got = await receive(fast, "utterance", n, timeout=120)
                hub = svc.parts.server.hub
                for _ in range(100):  # the close handshake times out after close_timeout
                    if len(hub.clients) == 1:
                        break
                    await asyncio.sleep(0.1)
                closed = svc.parts.server.metrics.clients_closed._value.get()
                clients = len(hub.clients)
            return got, closed, clients
        finally:
            slow.close()

    got, closed, clients = with_service(cfg, body)
    assert [g["seq"] for g in got] == list(range(1, n + 1))  # the fast client lost nothing
    assert closed == 1 and clients == 1  # the slow one was closed and removed


def test_client_limit_answers_503(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle, max_clients=1)

    async def body(svc):
        async with websockets.connect(url(svc, "/ws")) as first:
            await receive(first, "hello", 1)
            try:
                async with websockets.connect(url(svc, "/ws")):
                    return "accepted", None
            except InvalidStatus as err:
                return err.response.status_code, svc.parts.server.health()

    status, health = with_service(cfg, body)
    assert status == 503
    assert "refused in the last 60 s: ws_full 1" in health["problems"], health["problems"]
