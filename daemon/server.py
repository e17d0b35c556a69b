"""The HTTP/WebSocket front of the serve stage.

Routes: `GET /` dashboard, `/ws` score stream, `/ingest` audio in, `/healthz`,
`/metrics`. Plain HTTP routes are answered from `process_request`, before any
WebSocket handshake. A token, when configured, is required on every path, known or not, except
`/healthz` (header `Authorization: Bearer TOKEN`, the scheme in any case, or
`?token=TOKEN`), which without it answers its status alone. The protocols
themselves live in `emoclap.scorestream` and `emoclap.ingest`; this module moves
their messages between sockets and them.
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
from websockets.asyncio.server import serve
from websockets.protocol import State

from emoclap.ingest import IngestLimits, IngestRefused, IngestSession
from emoclap.scorestream import dumps
from emoclap.station import StationStream

from .config import Config
from .hub import Hub
from .links import Sender
from .speakers import make_gate
from .metrics import Metrics, RecentCounts
from .floor import Floor
from .stations import Stations

log = logging.getLogger("emoclapd.server")

STATIC = Path(__file__).parent / "static"
PAGES = ("/", "/index.html", "/healthz", "/metrics")
SOCKETS = ("/ws", "/ingest")
PLACEHOLDER = """<!doctype html><meta charset="utf-8"><title>emoclap</title>
<h1>emoclap</h1><p>The daemon is running. Scores stream on <code>/ws</code>;
health on <a href="healthz">/healthz</a>, metrics on <a href="metrics">/metrics</a>.</p>
"""


def _equal(given: str, token: str) -> bool:
    # compare_digest on str refuses non-ASCII; bytes compare any token in constant time.
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8"))


class Server:
    def __init__(self, cfg: Config, floor: Floor, stations: Stations, hub: Hub, metrics: Metrics,
                 piece_samples: int = 0):
        self.cfg = cfg  # replaced whole by `configure`, never edited
        self.piece_samples = piece_samples  # the bundle's: ingest stations cut pieces as they are spoken
        self.floor = floor
        self.stations = stations  # written here for ingest stations only
        self.hub = hub
        self.metrics = metrics
        self.ingest_sessions: dict[str, IngestSession] = {}
        self.ingest_sender: Sender | None = None
        self.speakers = None  # staff-voice gate for auto ingest stations
        self.started = time.time()
        self.server = None
        self.port: int | None = None
        self._tick_task: asyncio.Task | None = None
        self._busy: dict[int, asyncio.Lock] = {}  # per ingest session: a frame in the works
        self._admitted: dict[str, set] = {path: set() for path in SOCKETS}
        self.refused = RecentCounts(60.0)  # connections and messages refused lately, for /healthz
        self.stopping = False  # set when the drain begins: /healthz says so

    # ---- life cycle
    async def start(self) -> None:
        st, srv = self.cfg.stages, self.cfg.server
        self.ingest_sender = Sender(st.utterances, st.hwm, st.status_interval_s)
        self.speakers = make_gate(self.cfg)
        self.server = await serve(
            self._handler, srv.host, srv.port, process_request=self._process_request,
            max_size=srv.max_message_bytes,
            ping_interval=srv.ping_interval_s, ping_timeout=srv.ping_timeout_s,
            close_timeout=2, server_header="emoclapd")
        self.port = self.server.sockets[0].getsockname()[1]
        self._tick_task = asyncio.create_task(self._tick_ingest())
        log.info("listening on http://%s:%d/ (ws: /ws, ingest: /ingest)", srv.host, self.port)

    async def stop_ingest(self) -> None:
        """Stop taking audio: close every ingest session (their segmenters flush). The
        server keeps listening until `close()`, so /healthz and /metrics show the drain;
        new /ws and /ingest connections are refused (503) once `stopping` is set."""
        for name in list(self.ingest_sessions):
            await self._end_ingest(name)
        if self._tick_task is not None:
            self._tick_task.cancel()
        sender, self.ingest_sender = self.ingest_sender, None
        if sender is not None:
            await asyncio.to_thread(sender.close)  # waits up to its linger time

    def configure(self, cfg: Config) -> None:
        """A reloaded configuration: new ingest sessions open with it, and open ones take
        the new quality thresholds from their next utterance (frozen options, swapped whole)."""
        self.cfg = cfg
        for session in self.ingest_sessions.values():
            if session.stream is not None:
                session.stream.quality = cfg.quality

    async def close(self) -> None:
        await self.hub.close_all(1001, "server shutting down")
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _tick_ingest(self) -> None:
        while self.ingest_sender is not None:
            await asyncio.sleep(self.cfg.stages.status_interval_s)
            if self.ingest_sender is not None:
                self.ingest_sender.tick()

    # ---- HTTP routes and admission
    def _authorized(self, request) -> bool:
        token = self.cfg.server.token
        if not token:
            return True
        scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and _equal(credentials.strip(), token):  # schemes are case-insensitive
            return True
        query = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        return bool(query) and _equal(query, token)

    def _respond(self, connection, status: int, body: str, content_type: str):
        response = connection.respond(HTTPStatus(status), body)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = content_type
        return response

    def _process_request(self, connection, request):
        path = urlsplit(request.path).path
        allowed = ("GET", "HEAD") if path in PAGES else ("GET",)
        if path != "/healthz" and not self._authorized(request):
            # Before the route map: without the token, no path says whether it exists.
            self._refuse("unauthorized")
            return self._respond(connection, 401, "401 unauthorized: bearer token required\n",
                                 "text/plain; charset=utf-8")
        if path not in PAGES and path not in SOCKETS:
            return self._respond(connection, 404, "404 not found\n", "text/plain; charset=utf-8")
        if request.method not in allowed:
            response = self._respond(connection, 405, "405 method not allowed\n", "text/plain; charset=utf-8")
            response.headers["Allow"] = ", ".join(allowed)
            return response
        response = self._route(connection, request, path)
        if request.method == "HEAD":
            response.body = b""  # the headers (Content-Length included) are GET's
        return response

    def _route(self, connection, request, path):
        if path == "/healthz":
            health = self.health()
            if not self._authorized(request):  # anonymous: the verdict, not the floor plan
                health = {"status": health["status"]}
            return self._respond(connection, 200, json.dumps(health), "application/json")
        if path == "/metrics":
            self.floor.refresh_metrics()  # current at every scrape
            return self._respond(connection, 200, self.metrics.render().decode(),
                                 "text/plain; version=0.0.4; charset=utf-8")
        if path in ("/", "/index.html"):
            page = STATIC / "index.html"
            body = page.read_text(encoding="utf-8") if page.is_file() else PLACEHOLDER
            return self._respond(connection, 200, body, "text/html; charset=utf-8")
        # A WebSocket path: admitted here, before the handshake completes, so that a burst
        # of handshakes cannot overshoot the limit; a connection counts until it closes.
        if self.stopping:
            return self._respond(connection, 503, "503 shutting down\n", "text/plain; charset=utf-8")
        limit = self.cfg.server.max_clients if path == "/ws" else self.cfg.server.ingest_max_sessions
        admitted = self._admitted[path]
        admitted.difference_update({c for c in admitted if c.state is State.CLOSED})
        if len(admitted) >= limit:
            self._refuse(f"{path[1:]}_full")
            what = "clients" if path == "/ws" else "ingest sessions"
            return self._respond(connection, 503, f"503 too many {what}\n", "text/plain; charset=utf-8")
        admitted.add(connection)
        return None

    def _refuse(self, reason: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        self.refused.add(reason, time.monotonic())

    def problems(self) -> list[str]:
        out = []
        if self.stopping:
            left = self.floor.draining()
            out.append("stopping: draining" + (f" ({left} utterance(s) to finish)" if left is not None else ""))
        refused = self.refused.counts(time.monotonic())
        if refused:  # clients flooding, probing or sending garbage: the operator should know
            out.append(f"refused in the last {self.refused.window_s:.0f} s: "
                       + ", ".join(f"{reason} {n}" for reason, n in sorted(refused.items())))
        return out + self.floor.problems()

    def health(self) -> dict:
        problems = self.problems()
        fleet = self.floor.fleet_snapshot()
        return {"status": "degraded" if problems else "ok", "problems": problems,
                "uptime_s": round(time.time() - self.started, 1),
                "stations": self.floor.station_states(), "clients": len(self.hub.clients),
                "ingest_sessions": len(self.ingest_sessions),
                "utterances": self.floor.published,
                "dropped": self.metrics.drop_counts(),
                "accounting": {**self.metrics.accounting(),
                               "in_flight": fleet["backlog"]},
                "fleet": fleet}

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
            self.hub.send(client, self.floor.hello())
            async for message in ws:
                self.hub.send(client, client.session.on_text(message))
        except websockets.ConnectionClosed:
            pass
        finally:
            await self.hub.remove(client)
            self.metrics.clients.labels("/ws").set(len(self.hub.clients))

    def _open_ingest_station(self, name: str, role: str, rate: int) -> StationStream:
        if self.cfg.station(name) is not None or name in self.ingest_sessions:
            raise IngestRefused("station_in_use", f"station {name!r} is already in use")
        if self.ingest_sender is None:
            raise IngestRefused("shutting_down", "the server is shutting down")
        self.stations.register(name, role, "ingest", "online")
        self.ingest_sender.set_state(name, "online")
        return StationStream(name, role, self.cfg.segmenter, rate, quality=self.cfg.quality,
                             piece_samples=self.piece_samples if self.cfg.privacy.policy().encodes_early(role) else 0)

    def _tag(self, utterances):
        """Staff voices on an auto station become staff before dispatch (a worker thread:
        the speaker encoder takes milliseconds)."""
        return utterances if self.speakers is None else self.speakers.tag(utterances)

    def _segment(self, session: IngestSession, message: bytes):
        replies, utterances = session.on_binary(message)
        return replies, self._tag(utterances)

    def _send_ingested(self, session: IngestSession, utterances) -> None:
        short = session.stream.take_too_short() if session.stream is not None else 0
        if self.ingest_sender is None:
            return
        self.ingest_sender.too_short(session.station, short)
        if session.stream is not None:
            self.ingest_sender.send_pieces(session.stream.take_pieces())
        self.ingest_sender.dispatch(utterances, self.cfg.privacy.policy())

    async def _end_ingest(self, name: str) -> None:
        session = self.ingest_sessions.pop(name)
        async with self._busy[id(session)]:  # not while a frame is being segmented
            self._send_ingested(session, await asyncio.to_thread(self._tag, session.close()))
        if self.ingest_sender is not None:
            self.ingest_sender.set_state(name, "ended")
            self.ingest_sender.tick(force=True)
        self.stations.set_state(name, "ended")

    async def _ingest(self, ws) -> None:
        srv = self.cfg.server
        limits = IngestLimits(srv.ingest_max_frame_bytes, srv.ingest_max_rate, srv.ingest_burst_s,
                              srv.ingest_max_errors)
        session = IngestSession(limits, self._open_ingest_station)
        busy = self._busy[id(session)] = asyncio.Lock()
        self.metrics.clients.labels("/ingest").inc()
        deadline = asyncio.get_running_loop().time() + srv.ingest_start_timeout_s
        try:
            while True:
                if session.stream is None:  # a connection that never starts is not held
                    remaining = deadline - asyncio.get_running_loop().time()
                    try:
                        message = await asyncio.wait_for(ws.recv(), max(remaining, 0.0))
                    except asyncio.TimeoutError:
                        self._refuse("ingest_no_start")
                        await ws.close(1008, f"no start message within {srv.ingest_start_timeout_s:g} s")
                        return
                else:
                    message = await ws.recv()
                if isinstance(message, str):
                    replies, utterances = session.on_text(message), []
                    if session.station and session.station not in self.ingest_sessions \
                            and self.ingest_sender is not None:
                        self.ingest_sessions[session.station] = session
                else:
                    # Resampling and voice activity take milliseconds a frame: off the loop.
                    async with busy:
                        if session.stream is not None and session.station not in self.ingest_sessions:
                            break  # ended by a shutdown
                        replies, utterances = await asyncio.to_thread(self._segment, session, message)
                if utterances or session.station in self.ingest_sessions:
                    self._send_ingested(session, utterances)
                for reply in replies:
                    if reply["type"] == "error":
                        self.metrics.ingest_errors.labels(reply["reason"]).inc()
                        self.refused.add(f"ingest {reply['reason']}", time.monotonic())
                    await ws.send(dumps(reply))
                if session.abusive:  # garbage at full rate costs every station: not served
                    self._refuse("ingest_abusive")
                    await ws.close(1008, f"more than {limits.max_errors} refused messages in "
                                         f"{limits.error_window_s:g} s")
                    break
        except websockets.ConnectionClosed:
            pass
        finally:
            self.metrics.clients.labels("/ingest").dec()
            if session.station and self.ingest_sessions.get(session.station) is session:
                await self._end_ingest(session.station)
            del self._busy[id(session)]
