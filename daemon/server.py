"""The WebSocket/HTTP server and the score/publish stage's event loop.

Routes: `GET /` dashboard, `/ws` score stream, `/ingest` audio in, `/healthz`,
`/metrics`. Plain HTTP routes are answered from `process_request`, before any
WebSocket handshake. A token, when configured, is required on every route except
`/healthz` (header `Authorization: Bearer TOKEN` or `?token=TOKEN`).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import websockets
import zmq
import zmq.asyncio
from websockets.asyncio.server import serve

from . import wire
from .capture import StationPipe, segmenter_options
from .config import Config
from .hub import Hub
from .ingest import IngestLimits, IngestRefused, IngestSession, error
from .links import Sender, context
from .metrics import Metrics
from .publisher import Publisher

log = logging.getLogger("emoclapd.server")

STATIC = Path(__file__).parent / "static"
PLACEHOLDER = """<!doctype html><meta charset="utf-8"><title>emoclap</title>
<h1>emoclap</h1><p>The daemon is running. Scores stream on <code>/ws</code>;
health on <a href="healthz">/healthz</a>, metrics on <a href="metrics">/metrics</a>.</p>
"""


class Server:
    def __init__(self, cfg: Config, publisher: Publisher, metrics: Metrics):
        self.cfg = cfg
        self.publisher = publisher
        self.metrics = metrics
        self.hub = Hub(cfg.server.client_queue, on_slow=metrics.clients_closed.inc)
        self.ingest_sessions: dict[str, IngestSession] = {}
        self.ingest_sender: Sender | None = None
        self.started = time.time()
        self.server = None
        self.port: int | None = None
        self.eos = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._pull = None

    # ---- life cycle
    async def start(self) -> None:
        st, srv = self.cfg.stages, self.cfg.server
        actx = zmq.asyncio.Context.shadow(context().underlying)
        self._pull = actx.socket(zmq.PULL)
        self._pull.set_hwm(st.hwm)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.bind(st.embeddings)
        self.ingest_sender = Sender(st.utterances, st.hwm, st.status_interval_s)
        self.server = await serve(
            self._handler, srv.host, srv.port, process_request=self._process_request,
            max_size=srv.max_message_bytes,
            ping_interval=srv.ping_interval_s, ping_timeout=srv.ping_timeout_s,
            close_timeout=2, server_header="emoclapd")
        self.port = self.server.sockets[0].getsockname()[1]
        self._tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._rolling_loop())]
        log.info("listening on http://%s:%d/ (ws: /ws, ingest: /ingest)", srv.host, self.port)

    async def stop_ingest(self) -> None:
        """Stop taking audio: close every ingest session (their segmenters flush)."""
        if self.server is not None:
            self.server.close(close_connections=False)
        for session in list(self.ingest_sessions.values()):
            session.close()
        self.ingest_sessions.clear()
        if self.ingest_sender is not None:
            self.ingest_sender.close()
            self.ingest_sender = None

    async def wait_drained(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.eos.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        await self.hub.close_all(1001, "server shutting down")
        for task in self._tasks:
            task.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self._pull is not None:
            self._pull.close()

    # ---- score/publish
    async def _pump(self) -> None:
        while True:
            frames = await self._pull.recv_multipart()
            try:
                msg = wire.decode(frames)
            except wire.WireError as exc:
                log.warning("serve: skipped a malformed message: %s", exc)
                continue
            event = self.publisher.on_message(msg)
            if event is not None:
                self.hub.broadcast(event, station=event["station"])
                await asyncio.sleep(0)  # let client writers run between events of a burst
            if msg.kind == "eos":
                self.eos.set()

    async def _rolling_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.rolling.interval_s)
            built: dict = {}  # one snapshot per distinct subscription, not per client

            def snapshot(client):
                key = None if client.stations is None else frozenset(client.stations)
                if key not in built:
                    built[key] = self.publisher.rolling_message(client.stations)
                return built[key]
            self.hub.broadcast_each(snapshot)
            self.metrics.queue_depth.labels("client_send_max").set(self.hub.depth())
            if self.ingest_sender is not None:
                self.ingest_sender.tick()

    def prompts_changed(self) -> None:
        """Called on the loop when the prompt bank changed."""
        self.publisher.forget_missing()
        self.hub.broadcast(self.publisher.prompts_message())

    # ---- HTTP routes and admission
    def _authorized(self, request) -> bool:
        token = self.cfg.server.token
        if not token:
            return True
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip(), token):
            return True
        query = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        return bool(query) and hmac.compare_digest(query, token)

    def _respond(self, connection, status: int, body: str, content_type: str):
        response = connection.respond(HTTPStatus(status), body)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = content_type
        return response

    def _process_request(self, connection, request):
        path = urlsplit(request.path).path
        if path == "/healthz":
            return self._respond(connection, 200, json.dumps(self.health()), "application/json")
        if not self._authorized(request):
            return self._respond(connection, 401, "401 unauthorized: bearer token required\n",
                                 "text/plain; charset=utf-8")
        if path == "/metrics":
            return self._respond(connection, 200, self.metrics.render().decode(),
                                 "text/plain; version=0.0.4; charset=utf-8")
        if path in ("/", "/index.html"):
            page = STATIC / "index.html"
            body = page.read_text(encoding="utf-8") if page.is_file() else PLACEHOLDER
            return self._respond(connection, 200, body, "text/html; charset=utf-8")
        if path == "/ws":
            if len(self.hub.clients) >= self.cfg.server.max_clients:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many clients\n")
            return None
        if path == "/ingest":
            if len(self.ingest_sessions) >= self.cfg.server.ingest_max_sessions:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many ingest sessions\n")
            return None
        return connection.respond(HTTPStatus.NOT_FOUND, "404 not found\n")

    def health(self) -> dict:
        stations = {n: s["state"] for n, s in self.publisher.stations.items()}
        bad = [n for n, s in stations.items() if s in ("offline", "failed")]
        return {"status": "degraded" if bad else "ok", "uptime_s": round(time.time() - self.started, 1),
                "stations": stations, "clients": len(self.hub.clients),
                "ingest_sessions": len(self.ingest_sessions),
                "utterances": self.publisher.published,
                "dropped": self.metrics.drop_counts()}

    # ---- WebSocket handlers
    async def _handler(self, ws) -> None:
        path = urlsplit(ws.request.path).path
        if path == "/ws":
            await self._score_stream(ws)
        elif path == "/ingest":
            await self._ingest(ws)

    async def _score_stream(self, ws) -> None:
        client = self.hub.add(ws)
        self.metrics.clients.labels("/ws").set(len(self.hub.clients))
        try:
            self.hub.send(client, self.publisher.hello())
            async for message in ws:
                reply = self._client_message(client, message)
                if reply is not None:
                    self.hub.send(client, reply)
        except websockets.ConnectionClosed:
            pass
        finally:
            await self.hub.remove(client)
            self.metrics.clients.labels("/ws").set(len(self.hub.clients))

    def _client_message(self, client, message) -> dict | None:
        try:
            msg = json.loads(message) if isinstance(message, str) else None
        except json.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict) or msg.get("type") != "subscribe":
            return error("bad_message", 'expected {"type": "subscribe", "stations": [...] or null}')
        stations = msg.get("stations")
        if stations is not None and not (isinstance(stations, list)
                                         and all(isinstance(s, str) for s in stations)):
            return error("bad_message", "stations: expected a list of names or null")
        client.stations = set(stations) if stations is not None else None
        return {"type": "subscribed", "stations": stations}

    def _open_ingest_station(self, name: str, role: str, rate: int) -> StationPipe:
        if self.cfg.station(name) is not None or name in self.ingest_sessions:
            raise IngestRefused("station_in_use", f"station {name!r} is already in use")
        if self.ingest_sender is None:
            raise IngestRefused("shutting_down", "the server is shutting down")
        self.publisher.register(name, role, "ingest", "online")
        self.ingest_sender.set_state(name, "online")
        return StationPipe(name, role, segmenter_options(self.cfg), self.ingest_sender, rate)

    async def _ingest(self, ws) -> None:
        srv = self.cfg.server
        limits = IngestLimits(srv.ingest_max_frame_bytes, srv.ingest_max_rate, srv.ingest_burst_s)
        session = IngestSession(limits, self._open_ingest_station)
        self.metrics.clients.labels("/ingest").inc()
        try:
            async for message in ws:
                replies = (session.on_text(message) if isinstance(message, str)
                           else session.on_binary(message))
                if session.station and session.station not in self.ingest_sessions \
                        and self.ingest_sender is not None:
                    self.ingest_sessions[session.station] = session
                for reply in replies:
                    if reply["type"] == "error":
                        self.metrics.ingest_errors.labels(reply["reason"]).inc()
                    await ws.send(json.dumps(reply))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.metrics.clients.labels("/ingest").dec()
            if session.station and self.ingest_sessions.get(session.station) is session:
                del self.ingest_sessions[session.station]
                session.close()
                if self.ingest_sender is not None:
                    self.ingest_sender.set_state(session.station, "ended")
                    self.ingest_sender.tick(force=True)
                self.publisher.set_state(session.station, "ended")
