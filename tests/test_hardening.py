"""Hostile clients and failing parts: bounded admission, expiring client state, HTTP
methods, odd tokens, a failing history disk, broken prompt files and a silent encode
stage — each refused or reported, and /healthz and /metrics say what happened."""
import asyncio
import json
import socket
import sqlite3
import time

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.servicekit import embedding_messages, push, receive, service_config, url, with_service

DIM = 16


def raw_http(port: int, request: bytes) -> bytes:
    """Send one raw request, return everything the server answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and request.startswith(b"HEAD"):
                    break
        except socket.timeout:
            pass
    return b"".join(chunks)


def test_ingest_admission_is_atomic_and_silent_connections_are_closed(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle, ingest_max_sessions=2, ingest_start_timeout_s=0.5)

    async def attempt(svc):
        try:
            ws = await websockets.connect(url(svc, "/ingest"))
            return ws
        except InvalidStatus as err:
            return err.response.status_code

    async def body(svc):
        results = await asyncio.gather(*(attempt(svc) for _ in range(8)))
        accepted = [r for r in results if not isinstance(r, int)]
        refused = [r for r in results if isinstance(r, int)]
        closes = []
        for ws in accepted:  # none of them sends `start`
            try:
                await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed as exc:
                closes.append(exc.rcvd.code if exc.rcvd else None)
        late = await attempt(svc)  # the slots are free again
        if not isinstance(late, int):
            await late.close()
        metrics = svc.parts.server.metrics.render().decode()
        return len(accepted), refused, closes, late, metrics

    accepted, refused, closes, late, metrics = with_service(cfg, body)
    assert accepted == 2 and refused == [503] * 6
    assert closes == [1008, 1008]
    assert not isinstance(late, int)
    assert 'emoclap_rejected_connections_total{reason="ingest_full"} 6.0' in metrics
    assert 'emoclap_rejected_connections_total{reason="ingest_no_start"} 2.0' in metrics


def test_ended_ingest_stations_expire_from_snapshots_and_metrics(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle, ended_station_ttl_s=0.5)

    async def body(svc):
        for i in range(5):
            async with websockets.connect(url(svc, "/ingest")) as ing:
                await ing.send(json.dumps({"type": "start", "station": f"visitor-{i}"}))
                await ing.recv()
        async with websockets.connect(url(svc, "/ws")) as ws:
            first = later = (await receive(ws, "rolling", 1))[0]
            for _ in range(50):  # snapshots every 0.2 s; the ttl is 0.5 s
                later = (await receive(ws, "rolling", 1))[0]
                if not any(name.startswith("visitor-") for name in later["states"]):
                    break
        metrics = svc.parts.server.metrics.render().decode()
        return first, later, metrics, svc.parts.server.health()

    first, later, metrics, health = with_service(cfg, body)
    assert any(name.startswith("visitor-") for name in first["states"])
    assert not any(name.startswith("visitor-") for name in later["states"])
    assert "visitor-" not in metrics and "visitor-" not in json.dumps(health)


def test_http_methods(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle)

    async def body(svc):
        port = svc.parts.server.port
        out = {}
        for method, path in (("HEAD", "/"), ("HEAD", "/healthz"), ("DELETE", "/"), ("OPTIONS", "/"),
                             ("TRACE", "/"), ("POST", "/"), ("PUT", "/metrics"), ("HEAD", "/ws"),
                             ("GET", "/nowhere")):
            request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            out[(method, path)] = await asyncio.to_thread(raw_http, port, request)
        return out

    answers = with_service(cfg, body)
    head, _, rest = answers[("HEAD", "/")].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and rest == b""
    assert b"Content-Type: text/html" in head and b"Content-Length: 0" not in head
    assert answers[("HEAD", "/healthz")].startswith(b"HTTP/1.1 200")
    for key in (("DELETE", "/"), ("OPTIONS", "/"), ("TRACE", "/"), ("POST", "/"), ("PUT", "/metrics")):
        assert answers[key].startswith(b"HTTP/1.1 405"), key
        assert b"Allow: GET, HEAD" in answers[key]
    assert answers[("HEAD", "/ws")].startswith(b"HTTP/1.1 405") and b"Allow: GET\r\n" in answers[("HEAD", "/ws")]
    assert answers[("GET", "/nowhere")].startswith(b"HTTP/1.1 404")


def test_non_ascii_and_wrong_tokens_get_401_not_500(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle, token="s3cret-token")

    async def body(svc):
        port = svc.parts.server.port
        out = []
        for header in ("Bearer pässwörd".encode("utf-8"), "Bearer pässwörd".encode("latin-1"),
                       b"Bearer \xff\xfe", b"Bearer s3cret-token"):
            request = (b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: "
                       + header + b"\r\n\r\n")
            out.append(await asyncio.to_thread(raw_http, port, request))
        query = b"GET /metrics?token=p%C3%A4ss HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        out.append(await asyncio.to_thread(raw_http, port, query))
        return out

    answers = with_service(cfg, body)
    assert [a[:12] for a in answers] == [b"HTTP/1.1 401"] * 3 + [b"HTTP/1.1 200", b"HTTP/1.1 401"]


def test_without_the_token_no_path_says_it_exists_and_health_tells_only_its_status(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle, token="s3cret-token")

    def get(path, auth=b""):
        return (b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                + (b"Authorization: " + auth + b"\r\n" if auth else b"") + b"\r\n")

    async def body(svc):
        port = svc.parts.server.port
        requests = [get(b"/nowhere"), get(b"/nowhere", b"Bearer s3cret-token"),
                    get(b"/metrics", b"bearer s3cret-token"), get(b"/metrics", b"BEARER  s3cret-token"),
                    get(b"/healthz"), get(b"/healthz", b"Bearer s3cret-token")]
        return [await asyncio.to_thread(raw_http, port, r) for r in requests]

    unknown, known, lower, upper, anonymous, full = with_service(cfg, body)
    assert unknown.startswith(b"HTTP/1.1 401") and known.startswith(b"HTTP/1.1 404")
    assert lower.startswith(b"HTTP/1.1 200") and upper.startswith(b"HTTP/1.1 200")
    anonymous_body = json.loads(anonymous.split(b"\r\n\r\n", 1)[1])
    assert set(anonymous_body) == {"status"}
    assert "stations" in json.loads(full.split(b"\r\n\r\n", 1)[1])


def test_failing_history_is_reported_and_scores_still_flow(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle)

    async def body(svc):
        history = svc.parts.history
        real = history.write_many

        def full(rows, visits=(), alerts=()):
            raise sqlite3.OperationalError("database or disk is full")
        history.write_many = full
        async with websockets.connect(url(svc, "/ws")) as ws:
            await receive(ws, "hello", 1)
            await asyncio.to_thread(push, svc, embedding_messages(4, DIM))
            got = await receive(ws, "utterance", 4)
            failing = svc.parts.server.health()
            metrics = svc.parts.server.metrics.render().decode()
            history.write_many = real
            await asyncio.to_thread(push, svc, embedding_messages(1, DIM, station="s2"))
            await receive(ws, "utterance", 1)
            stored = [(e["station"], e["seq"]) for e in history.events()]
        return got, failing, metrics, svc.parts.server.health(), stored

    got, failing, metrics, recovered, stored = with_service(cfg, body)
    assert len(got) == 4  # clients still get scores while the disk is full
    assert failing["status"] == "degraded"
    assert "history: cannot write: database or disk is full (4 row(s) waiting, 64 MiB at most)" \
        in failing["problems"], failing["problems"]
    assert "emoclap_history_waiting_rows 4.0" in metrics
    assert "emoclap_history_write_failures_total 0.0" in metrics  # waiting, not lost
    assert recovered["status"] == "ok", recovered
    # What was published while the disk refused it is stored once it takes writes again.
    assert sorted(stored) == [("s1", 1), ("s1", 2), ("s1", 3), ("s1", 4), ("s2", 1)]


def test_broken_prompt_file_is_reported_to_clients_and_health(tmp_path, tiny_bundle):
    import shutil

    from tests.servicekit import REPO

    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts, ignore=shutil.ignore_patterns("alternatives"))
    cfg = service_config(tmp_path, tiny_bundle)
    cfg.prompts = str(prompts)

    async def body(svc):
        async with websockets.connect(url(svc, "/ws")) as ws:
            hello = (await receive(ws, "hello", 1))[0]
            (prompts / "calm.toml").write_text('label = "Calm"\nbias = nan\n')
            update = (await receive(ws, "prompts", 1, timeout=10))[0]
        return hello, update, svc.parts.server.health(), svc.parts.server.metrics.render().decode()

    hello, update, health, metrics = with_service(cfg, body)
    assert hello["prompt_errors"] == []
    (error,) = update["errors"]
    assert error["file"].endswith("calm.toml") and "'bias' must be a finite number" in error["message"]
    assert health["status"] == "degraded"
    (named,) = [p for p in health["problems"] if p.startswith("prompt file not in use: ")]
    assert "calm.toml" in named and "'bias' must be a finite number" in named
    assert "emoclap_prompt_file_errors 1.0" in metrics


def test_a_silent_encode_stage_makes_the_gateway_degraded(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle)
    cfg.stages.status_interval_s = 0.1  # silence counts after max(1 s, 5 intervals)

    async def body(svc):
        healthy = svc.parts.server.health()
        await asyncio.sleep(1.5)  # nothing upstream: only the serve stage runs
        metrics = svc.parts.server.metrics.render().decode()  # before /healthz is asked again
        return healthy, metrics, svc.parts.server.health()

    healthy, metrics, silent = with_service(cfg, body, stages=("serve",))
    age = next(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("emoclap_upstream_silence_seconds "))
    assert age >= 1.0  # kept current by the rolling timer, not only by /healthz
    assert healthy["status"] == "ok"
    assert silent["status"] == "degraded"
    assert any("no word from the encode stage" in p for p in silent["problems"])


def test_sigterm_while_a_prompt_file_is_being_embedded_exits_cleanly(tmp_path, tiny_bundle):
    import shutil
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.servicekit import REPO, free_port

    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts, ignore=shutil.ignore_patterns("alternatives"))
    port = free_port()
    (tmp_path / "config.toml").write_text(f'bundle = "{tiny_bundle}"\nprompts = "prompts"\n'
                                          f'cache = "cache.sqlite3"\n[server]\nport = {port}\n')
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", "config.toml"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.2)
        many = ", ".join(f'"I am calm for reason number {i}."' for i in range(1999))
        (prompts / "calm.toml").write_text(f'label = "Calm"\n[negative]\nlabel = "Tense"\nen = ["I am tense."]\n'
                                           f'[positive]\nlabel = "Calm"\nen = [{many}]\n')
        time.sleep(0.8)  # the watcher polls every 0.5 s: embedding is under way
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert code == 0, err
    assert "terminate called" not in err and "Traceback" not in err


def test_kill_9_leaves_a_history_that_opens_intact_and_grows_on_restart(tmp_path, tiny_bundle):
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.servicekit import REPO, free_port, write_replay_config
    from tests.stagekit import stereo_dialogue, write_stereo

    stereo, _ = stereo_dialogue(tmp_path, [(0, 0.4), (0, "Good morning."), (0, 0.5),
                                           (1, "I would like the grey coat, please."), (1, 0.5)])
    wav = write_stereo(tmp_path / "dialogue.wav", stereo)
    port = free_port()
    config = write_replay_config(tmp_path, tiny_bundle, wav, port, station="realtime = false\nloop = true\n")

    def run_until(utterances: int) -> int:
        proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline, seen = time.time() + 60, 0
            while time.time() < deadline and seen < utterances:
                time.sleep(0.2)
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                        seen = json.loads(r.read())["utterances"]
                except OSError:
                    pass
            proc.send_signal(signal.SIGKILL)  # mid-stream: replay never stops by itself
            proc.wait(10)
            return seen
        finally:
            proc.kill()

    def rows() -> tuple[int, str]:
        db = sqlite3.connect(tmp_path / "history.sqlite3")
        try:
            return db.execute("SELECT count(*) FROM utterances").fetchone()[0], \
                db.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            db.close()

    first = run_until(8)
    after_first, check_first = rows()
    second = run_until(after_first + 8)  # the same history, opened after a crash
    after_second, check_second = rows()
    assert first >= 8 and check_first == "ok" and after_first >= first  # written before published
    assert check_second == "ok" and after_second >= after_first + 8 and second > 0


def test_a_slow_disk_stores_each_row_once(tmp_path, tiny_bundle):
    """Rows waiting while a write is in progress are retried by the rolling tick too: each
    must still be stored exactly once."""
    cfg = service_config(tmp_path, tiny_bundle)
    cfg.rolling.interval_s = 0.02

    async def body(svc):
        history = svc.parts.history
        real = history.write_many

        def slow(rows, visits=(), alerts=()):
            time.sleep(0.1)
            return real(rows, visits, alerts)
        history.write_many = slow
        async with websockets.connect(url(svc, "/ws")) as ws:
            await receive(ws, "hello", 1)
            for i in range(6):
                await asyncio.to_thread(push, svc, embedding_messages(1, DIM, station=f"s{i}"))
            await receive(ws, "utterance", 6)
        await asyncio.sleep(0.3)
        return [(e["station"], e["seq"]) for e in history.events()]

    stored = with_service(cfg, body)
    assert sorted(stored) == [(f"s{i}", 1) for i in range(6)]
