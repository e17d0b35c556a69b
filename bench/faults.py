"""The chaos run's faults, each something that happens to a real deployment.

- `WorkerHost`: a network namespace for an encode worker, joined to this host by a veth
  pair, with nftables rules that cut it off (partition) or drop 10 % of its outgoing
  packets, and a `Relay` in it that adds delay to what it sends. This kernel has no
  `netem` qdisc, so delay is a userspace relay on the worker's side and loss is real
  packet loss (TCP retransmits it), from nftables.
- `WebhookReceiver`: an alert receiver that answers 200, or hangs without answering.
- `flood`: many `/ws` connections opened at once; `garbage_ingest`: `/ingest` sessions
  sending malformed and hostile audio as fast as the server reads it.
- `SmallDisk`: the history's folder on a tmpfs of its own, filled up on demand.
- `churn`: a prompt file rewritten in place (not atomically, as editors do) every 100 ms.

Needs root (namespaces, nftables, mount) and iproute2 and nftables installed.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import websockets

CLONE_NEWNET = 0x40000000


def run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")


def enter(ns: str) -> None:
    """Move the calling thread into network namespace `ns` (namespaces are per thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    finally:
        os.close(fd)


class Relay(threading.Thread):
    """TCP relay inside the worker's namespace: the worker connects to 127.0.0.1:`port`,
    the relay to `target`. Bytes from the worker wait `delay_s` before they go on."""

    def __init__(self, ns: str, port: int, target: tuple[str, int]):
        super().__init__(name="relay", daemon=True)
        self.ns, self.port, self.target = ns, port, target
        self.delay_s = 0.0
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            enter(self.ns)
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self.error = exc
            self.ready.set()

    def start(self) -> "Relay":
        super().start()
        self.ready.wait(10)
        if self.error is not None:
            raise RuntimeError(f"relay: {self.error}")
        return self

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.ready.set()
        async with server:
            await server.serve_forever()

    async def _handle(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False),
                             return_exceptions=True)

    async def _pipe(self, reader, writer, delayed: bool) -> None:
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        async def send():
            while (item := await queue.get()) is not None:
                due, data = item
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                writer.write(data)
                await writer.drain()
        sender = asyncio.create_task(send())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + (self.delay_s if delayed else 0.0), data))
        except OSError:
            pass
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await sender
            writer.close()


def free_subnet() -> str:
    """A 10.78.X /24 no interface of this host has (a run killed before it could clean up
    leaves its namespace's link behind)."""
    taken = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
    for x in secrets.SystemRandom().sample(range(256), 256):
        if f" 10.78.{x}." not in taken:
            return f"10.78.{x}"
    raise RuntimeError("no free 10.78.X.0/24 subnet for the worker's namespace")


class WorkerHost:
    """A namespace with its own address on a veth pair to this host."""

    def __init__(self, subnet: str | None = None):
        tag = secrets.token_hex(3)
        self.ns, self.host_link, self.link = f"emoclap-chaos-{tag}", f"vc{tag}h", f"vc{tag}w"
        subnet = subnet or free_subnet()
        self.host_ip, self.ip = f"{subnet}.1", f"{subnet}.2"

    def __enter__(self) -> "WorkerHost":
        if os.geteuid() != 0:
            raise SystemExit("the chaos run needs root: network namespaces, nftables, a tmpfs")
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise SystemExit(f"`{tool}` missing: apt-get install iproute2 nftables")
        try:
            run("ip", "netns", "add", self.ns)
            run("ip", "-n", self.ns, "link", "set", "lo", "up")
            run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", self.link)
            run("ip", "link", "set", self.link, "netns", self.ns)
            run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_link)
            run("ip", "link", "set", self.host_link, "up")
            run("ip", "-n", self.ns, "addr", "add", f"{self.ip}/24", "dev", self.link)
            run("ip", "-n", self.ns, "link", "set", self.link, "up")
            self.nft("add table inet chaos")
            self.nft("add chain inet chaos out { type filter hook output priority 0 ; }")
            self.nft("add chain inet chaos in { type filter hook input priority 0 ; }")
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        pids = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True)

    def nft(self, rule: str) -> None:
        run("ip", "netns", "exec", self.ns, "nft", rule)

    def partition(self) -> None:
        """Every packet between the worker's host and this one vanishes; connections stay up."""
        self.nft(f"add rule inet chaos out oifname {self.link} drop")
        self.nft(f"add rule inet chaos in iifname {self.link} drop")

    def lossy(self, percent: int) -> None:
        self.nft(f"add rule inet chaos out oifname {self.link} numgen random mod 100 < {percent} drop")

    def heal(self) -> None:
        self.nft("flush chain inet chaos out")
        self.nft("flush chain inet chaos in")

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]


class WebhookReceiver:
    """Alert webhook receiver on 127.0.0.1: 200 for each POST, or, while `hang` is set,
    a connection that is read and never answered."""

    def __init__(self):
        receiver = self
        self.hang = threading.Event()
        self.delivered = self.hung = 0  # answered; and left unanswered while hanging

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.hang.is_set():
                    receiver.hung += 1
                    deadline = time.monotonic() + 60
                    while receiver.hang.is_set() and time.monotonic() < deadline:
                        time.sleep(0.05)
                    self.close_connection = True
                    return  # never answered
                receiver.delivered += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.hang.clear()
        self.server.shutdown()


class SmallDisk:
    """A tmpfs of `mib` MiB at `folder`, filled to the last byte by `fill()`."""

    def __init__(self, folder: Path, mib: int = 64):
        self.folder, self.mib = folder, mib
        self.filler = folder / "filler"

    def __enter__(self) -> "SmallDisk":
        self.folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)
        run("mount", "-t", "tmpfs", "-o", f"size={self.mib}m", "tmpfs", str(self.folder))
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)

    def fill(self) -> int:
        written, block = 0, b"\0" * (1 << 20)
        with open(self.filler, "wb", buffering=0) as f:
            for size in (1 << 20, 4096, 1):
                while True:
                    try:
                        written += f.write(block[:size])
                    except OSError:
                        break
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


def flood(port: int, n: int, hold_s: float, headers: dict) -> dict:
    """`n` `/ws` connections opened at once and held `hold_s`: how many were let in,
    refused (HTTP status) or failed."""
    async def one(results):
        try:
            ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws", additional_headers=headers,
                                          open_timeout=20, max_queue=None)
        except websockets.InvalidStatus as exc:
            results[f"refused {exc.response.status_code}"] = results.get(f"refused {exc.response.status_code}", 0) + 1
            return None
        except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as exc:
            results[type(exc).__name__] = results.get(type(exc).__name__, 0) + 1
            return None
        results["admitted"] = results.get("admitted", 0) + 1
        return ws

    async def main():
        results: dict = {}
        sockets = [ws for ws in await asyncio.gather(*(one(results) for _ in range(n))) if ws is not None]
        await asyncio.sleep(hold_s)
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        return results
    return asyncio.run(main())


def garbage_ingest(port: int, sessions: int, seconds: float, headers: dict, frame_limit: int) -> dict:
    """`sessions` `/ingest` clients for `seconds`, as fast as the server reads, each
    reconnecting when closed: one sends full-scale noise (valid audio, far faster than
    real time), the others odd-length frames, frames over the limit and text that is not
    JSON. Counts what was sent, the error replies by reason and the closes by code."""
    rng = np.random.default_rng(0)
    noise = (rng.uniform(-1, 1, 1600) * 32767).astype("<i2").tobytes()
    bad = [b"\x01\x02\x03", b"\x00" * (frame_limit + 2), "{not json", json.dumps({"type": "start"})]

    async def one(i, counts, deadline):
        """One client, reconnecting whenever it is closed, until the deadline."""
        while time.monotonic() < deadline:
            try:
                async with websockets.connect(f"ws://127.0.0.1:{port}/ingest", additional_headers=headers,
                                              max_queue=None, open_timeout=10) as ws:
                    await ws.send(json.dumps({"type": "start", "station": f"chaos-ingest-{i}",
                                              "role": "customer", "sample_rate": 16000}))

                    async def read():
                        try:
                            async for text in ws:
                                reply = json.loads(text)
                                if reply.get("type") == "error":
                                    counts[reply["reason"]] = counts.get(reply["reason"], 0) + 1
                        except websockets.ConnectionClosed as exc:
                            key = f"closed {exc.rcvd.code if exc.rcvd else '?'}"
                            counts[key] = counts.get(key, 0) + 1
                    reader, k = asyncio.create_task(read()), 0
                    while time.monotonic() < deadline and not reader.done():
                        await ws.send(noise if i == 0 else bad[k % len(bad)])
                        counts["sent"] = counts.get("sent", 0) + 1
                        k += 1
                        if k % 64 == 0:
                            await asyncio.sleep(0)  # let the reader count the replies
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
            except websockets.ConnectionClosed:
                pass  # counted by the reader, which saw the close first
            except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as exc:
                counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(0.05)

    async def main():
        counts: dict = {}
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(one(i, counts, deadline) for i in range(sessions)), return_exceptions=True)
        return counts
    return asyncio.run(main())


def churn(path: Path, seconds: float, period_s: float = 0.1) -> int:
    """Rewrite `path` in place every `period_s` for `seconds`, each time with one new
    paraphrase (so each version is embedded anew); the original text is put back after.
    Returns the number of rewrites."""
    original = path.read_text(encoding="utf-8")
    marker = "en = ["
    deadline, n = time.monotonic() + seconds, 0
    try:
        while time.monotonic() < deadline:
            n += 1
            text = original.replace(marker, f'{marker}"Version {n} of how this sounds, said once more.", ', 1)
            with open(path, "w", encoding="utf-8") as f:  # truncate, then write: a reader may see either
                f.write(text[: len(text) // 2])
                f.flush()
                f.write(text[len(text) // 2:])
            time.sleep(period_s)
    finally:
        path.write_text(original, encoding="utf-8")
    return n
