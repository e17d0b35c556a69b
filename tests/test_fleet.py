"""The encode fleet on one box: a gateway (serve stage, this process) and `emoclapd
encode` workers as processes over ipc://. Workers join and leave at run time, work
spreads, a kill -9 mid-stream loses nothing (every accepted utterance published once
or counted dropped with a reason), a silent fleet is `degraded`, and an endpoint in use
is refused instead of taken over."""
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import zmq

from daemon.links import LinkError, Sender, bind, context
from daemon.service import open_encoder
from emoclap.record import Utterance
from tests.servicekit import REPO, http_url, service_config, with_service

HEARTBEAT_S = 0.25


def segments(n: int, station: str = "desk", seed: int = 0, seconds=(0.4, 1.2)):
    """Customer utterances with noise for audio, as a capture agent cuts them."""
    rng = np.random.default_rng(seed)
    t0 = time.time()
    out, at = [], 0.0
    for seq in range(1, n + 1):
        length = rng.uniform(*seconds)
        audio = (rng.standard_normal(int(length * 16000)) * 0.1).astype(np.float32)
        out.append(Utterance(station, "customer", seq, at, at + length, t0, time.time(), audio=audio))
        at += length + 0.3
    return out


def fleet_config(tmp_path, bundle, **stages):
    cfg = service_config(tmp_path, bundle)
    st = cfg.stages
    st.utterances, st.workers = f"ipc://{tmp_path}/u.sock", f"ipc://{tmp_path}/w.sock"
    st.heartbeat_interval_s = HEARTBEAT_S
    for key, value in stages.items():
        setattr(st, key, value)
    return cfg


def worker_config(tmp_path, cfg) -> str:
    """The configuration an `emoclapd encode` process reads: the bundle and the fleet."""
    path = tmp_path / "worker.toml"
    st = cfg.stages
    path.write_text(f'''bundle = "{cfg.bundle}"
[encoder]
max_batch = 4
max_wait_ms = 60
threads = 1
[stages]
workers = "{st.workers}"
heartbeat_interval_s = {st.heartbeat_interval_s}
heartbeat_liveness = {st.heartbeat_liveness}
''')
    return str(path)


def start_worker(config: str, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "daemon.cli", "encode", "--config", config],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


async def until(predicate, timeout: float, what: str, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout:g} s) waiting for {what}")
        await asyncio.sleep(step)


def peers(broker) -> dict[int, dict]:
    """The workers the broker hears, by process id."""
    return {w["pid"]: w for w in broker.snapshot()["workers"]}


def feed(cfg, utterances, rate: float | None = None) -> threading.Thread:
    """An edge: PUSH the segments to the gateway (at `rate` per second), as capture does."""
    def run():
        sender = Sender(cfg.stages.utterances, cfg.stages.hwm, block=True)
        started = time.monotonic()
        for i, utt in enumerate(utterances):
            if rate:
                time.sleep(max(0.0, started + i / rate - time.monotonic()))
            sender.send_utterances([utt])
        sender.close()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_capture_agent_that_goes_silent_is_degraded_until_it_reports_again(tmp_path, tiny_bundle):
    """An edge reports its stations every status interval; one killed or hung leaves its
    stations `online` in the table, so /healthz says their agent went quiet."""
    cfg = fleet_config(tmp_path, tiny_bundle, status_interval_s=0.1)
    problem = "station till-3: no word from its capture agent"

    async def body(svc):
        server = svc.parts.server
        edge = Sender(cfg.stages.utterances, 100, status_interval_s=0.1)
        edge.set_state("till-3", "online")

        async def reporting(seconds):  # what a running capture loop does
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                edge.tick()
                await asyncio.sleep(0.05)
        try:
            await reporting(1.5)
            alive = server.health()
            await until(lambda: any(p.startswith(problem) for p in server.health()["problems"]), 5,
                        "the silent agent in /healthz", step=0.1)
            silent = server.health()
            await reporting(0.5)
            back = server.health()
        finally:
            edge.abandon()
        return alive, silent, back

    alive, silent, back = with_service(cfg, body, stages=("serve",))
    assert not [p for p in alive["problems"] if p.startswith(problem)], alive["problems"]
    assert silent["status"] == "degraded"
    assert not [p for p in back["problems"] if p.startswith(problem)], back["problems"]


def test_no_worker_is_degraded_and_work_past_the_queue_is_counted(tmp_path, tiny_bundle):
    cfg = fleet_config(tmp_path, tiny_bundle, broker_queue=4)

    async def body(svc):
        broker, floor, metrics = svc.parts.broker, svc.parts.floor, svc.parts.server.metrics
        await asyncio.to_thread(feed(cfg, segments(10)).join, 10)
        await until(lambda: broker.snapshot()["accepted"] == 10, 10, "10 segments at the broker")
        waiting = svc.parts.server.health()
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(http_url(svc, "/metrics"), timeout=10)
                                       .read().decode())
        from emoclap.bundle import load_bundle
        worker, batcher = open_encoder(cfg, load_bundle(cfg.bundle))
        worker.start()  # a worker joins at run time and takes what waited
        try:
            await until(lambda: floor.published == 4, 20, "the 4 queued utterances published")
            await until(lambda: broker.snapshot()["backlog"] == 0, 5, "an empty backlog")
            served = svc.parts.server.health()
            after = await asyncio.to_thread(lambda: urllib.request.urlopen(http_url(svc, "/metrics"), timeout=10)
                                            .read().decode())
        finally:
            worker.drain()
            await asyncio.to_thread(worker.join, 10)
            batcher.close()
        return waiting, text, served, metrics.drop_counts(), after

    waiting, text, served, drops, after = with_service(cfg, body, stages=("serve",))
    assert waiting["status"] == "degraded"
    assert "no encode worker alive (4 utterance(s) waiting)" in waiting["problems"]
    assert waiting["dropped"] == {"no_worker": 6}
    assert waiting["fleet"]["backlog"] == 4 and waiting["fleet"]["queue"] == 4
    assert "emoclap_broker_queue_depth 4.0" in text and "emoclap_workers_alive 0.0" in text
    assert 'emoclap_dropped_utterances_total{reason="no_worker",station="desk"} 6.0' in text
    assert served["status"] == "ok", served["problems"]
    (w,) = served["fleet"]["workers"]
    assert w["answered"] == 4 and w["pid"] == os.getpid() and w["credit"] == 2 * cfg.encoder.max_batch
    assert drops == {"no_worker": 6} and served["utterances"] == 4
    # Where their time went: the wait for a worker is the broker's, before the encoder's queue.
    count = lambda stage: float(re.search(rf'^emoclap_stage_seconds_count{{stage="{stage}"}} (\S+)$', after, re.M)[1])
    total = lambda stage: float(re.search(rf'^emoclap_stage_seconds_sum{{stage="{stage}"}} (\S+)$', after, re.M)[1])
    assert all(count(s) == 4 for s in ("to_encoder", "queue", "encode", "to_serve", "score", "store", "publish"))
    assert total("to_encoder") > total("queue")


def holding(broker, pid: int) -> set:
    """What the broker gave the worker of process `pid` and has not had back (call it
    holding `broker.lock`)."""
    return set(next(p for p in broker.dispatcher.workers.values() if p.info["pid"] == pid).inflight)


async def finished(broker, keys: set, what: str) -> float:
    def done():
        with broker.lock:
            return all(k in broker.dispatcher.done for k in keys)
    await until(done, 30, what)
    return time.monotonic()


def test_a_rogue_peer_cannot_publish_or_stop_the_broker(tmp_path, tiny_bundle):
    """Junk, forged answers and a worker that never answers: counted, never published,
    and the honest worker's results all are."""
    cfg = fleet_config(tmp_path, tiny_bundle)
    work = segments(12)
    forged = segments(3, seed=9)  # keys nobody was asked for
    for utt in forged:
        utt.embedding = np.ones(16, np.float32) / 4

    async def body(svc):
        from emoclap import fleet, wire
        from emoclap.bundle import load_bundle

        broker, floor, metrics = svc.parts.broker, svc.parts.floor, svc.parts.server.metrics
        rogue = context().socket(zmq.DEALER)
        rogue.connect(cfg.stages.workers)
        junk = [[b"hello"], [fleet.PROTOCOL, b"READY", b'{"credit": -1}'], [fleet.PROTOCOL, b"WORK", b"x", b""],
                [fleet.PROTOCOL, b"RESULT", b"{", b"\x00"], [fleet.PROTOCOL, b"READY", b"[" * 70000]]
        for frames in junk:
            rogue.send_multipart(frames)
        rogue.send_multipart(fleet.heartbeat())  # not READY: told to reconnect
        reply = fleet.decode(rogue.recv_multipart(), "worker") if rogue.poll(5000) else None
        rogue.send_multipart(fleet.ready(0, "rogue", "rogue", 1))  # joins, takes no work
        for utt in forged:
            rogue.send_multipart(fleet.result(wire.embedding(utt)))
            rogue.send_multipart(fleet.drop(fleet.key_of(utt), "too_short"))
        worker, batcher = open_encoder(cfg, load_bundle(cfg.bundle))
        worker.start()
        try:
            await asyncio.to_thread(feed(cfg, work).join, 10)
            await until(lambda: floor.published == len(work) and broker.snapshot()["duplicates"] == 6,
                        20, "the honest results and the forged ones counted")
            health = svc.parts.server.health()
        finally:
            worker.drain()
            await asyncio.to_thread(worker.join, 10)
            batcher.close()
            rogue.close(linger=0)
        return reply, health, metrics.render().decode(), list(svc.parts.history.events())

    reply, health, text, history = with_service(cfg, body, stages=("serve",))
    assert reply is not None and reply.name == "RECONNECT"
    assert sorted(e["seq"] for e in history) == [u.seq for u in work]  # nothing forged published
    assert health["utterances"] == len(work) and health["dropped"] == {}
    assert "emoclap_worker_bad_messages_total 5.0" in text
    assert "emoclap_duplicate_results_total 6.0" in text
    assert health["fleet"]["alive"] == 2 and health["status"] == "ok"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_workers_join_and_leave_and_a_kill_9_loses_nothing(tmp_path, tiny_bundle):
    """a and b share the work; a is killed (-9) holding some, c joins; b hangs (SIGSTOP)
    holding some, is declared dead by heartbeat, comes back and rejoins, then leaves
    (SIGTERM). Every utterance is published once; none is dropped."""
    cfg = fleet_config(tmp_path, tiny_bundle, hwm=1000)
    config = worker_config(tmp_path, cfg)
    n, rate = 300, 50.0
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in "abc"}
    procs: dict[str, subprocess.Popen] = {}
    t: dict[str, float] = {}

    async def body(svc):
        broker, floor = svc.parts.broker, svc.parts.floor
        procs["a"], procs["b"] = start_worker(config, logs["a"]), start_worker(config, logs["b"])
        pid = {k: p.pid for k, p in procs.items()}
        await until(lambda: {pid["a"], pid["b"]} <= set(peers(broker)), 60, "workers a and b")
        feeder = feed(cfg, segments(n), rate)
        # Work spreads: both answer; then a dies by kill -9 holding work.
        await until(lambda: all(peers(broker)[pid[k]]["answered"] > 2 for k in "ab")
                    and peers(broker)[pid["a"]]["inflight"] > 0, 30, "work on both workers")
        with broker.lock:
            held_a = holding(broker, pid["a"])
            procs["a"].send_signal(signal.SIGKILL)
        t["kill"] = time.monotonic()
        procs["c"] = start_worker(config, logs["c"])  # another joins, mid-stream
        pid["c"] = procs["c"].pid
        await until(lambda: pid["a"] not in peers(broker), 10, "a gone from the fleet")
        t["lost_problems"] = svc.parts.server.health()["problems"]  # before c is up (it loads a model)
        t["killed_recovered"] = await finished(broker, held_a, "a's utterances finished by the others")
        await until(lambda: pid["c"] in peers(broker) and peers(broker)[pid["c"]]["answered"] > 0
                    and peers(broker)[pid["b"]]["inflight"] > 0, 60, "worker c at work, b holding work")
        # b hangs: its connection stays up, only the heartbeats stop.
        with broker.lock:
            held_b = holding(broker, pid["b"])
            procs["b"].send_signal(signal.SIGSTOP)
        t["stop"] = time.monotonic()
        problems = lambda: svc.parts.server.health()["problems"]  # noqa: E731
        await until(lambda: any(p.startswith(f"encode worker {name(pid['b'])}: silent for") for p in problems()),
                    5, "the hung worker in /healthz")
        t["hung_recovered"] = await finished(broker, held_b, "b's utterances finished by c")
        # Declared dead by heartbeat: no more work for it (its utterances may have gone to c
        # sooner, past their deadline, on a busy machine).
        await until(lambda: pid["b"] not in peers(broker), 10, "b declared dead")
        procs["b"].send_signal(signal.SIGCONT)  # back: its late answers are discarded, it rejoins
        await until(lambda: pid["b"] in peers(broker), 30, "b back in the fleet")
        procs["b"].send_signal(signal.SIGTERM)  # b leaves: drains, then says BYE
        t["b_exit"] = await asyncio.to_thread(procs["b"].wait, 30)
        await asyncio.to_thread(feeder.join, 30)
        await until(lambda: broker.snapshot()["accepted"] == n and broker.snapshot()["backlog"] == 0,
                    60, "every utterance accounted for")
        return (broker.snapshot(), floor.published, svc.parts.server.metrics.drop_counts(),
                list(svc.parts.history.events()), held_a | held_b, svc.parts.server.health())

    try:
        snap, published, drops, history, held, health = with_service(cfg, body, stages=("serve",))
    finally:
        for p in procs.values():
            p.kill()
            p.wait(10)
        for f in logs.values():
            f.close()
    out = {k: (tmp_path / f"{k}.log").read_text() for k in "abc"}
    killed, hung = t["killed_recovered"] - t["kill"], t["hung_recovered"] - t["stop"]
    timeout = cfg.stages.heartbeat_interval_s * cfg.stages.heartbeat_liveness
    print(f"\nrecovery: kill -9 {killed:.2f} s (the connection drops), hung worker {hung:.2f} s "
          f"(heartbeat {HEARTBEAT_S} s x {cfg.stages.heartbeat_liveness}); requeued {snap['requeued']}, "
          f"duplicate results discarded {snap['duplicates']}")
    assert held, "the faults hit no work in flight"
    assert snap["accepted"] == n and published + sum(drops.values()) == n, (published, drops)
    assert drops == {}, drops  # two faults, three attempts: nothing had to be dropped
    keys = [(h["station"], h["seq"]) for h in history]
    assert len(keys) == len(set(keys)) == n, sorted(set(keys) - {("desk", i) for i in range(1, n + 1)})  # once each
    assert snap["requeued"] >= len(held)
    # The hung one is found by its missing heartbeats: at most one interval before the
    # timeout (its last one came up to an interval before the stop), never at once.
    assert killed < timeout + 10 and timeout - HEARTBEAT_S <= hung < timeout + 10
    assert t["b_exit"] == 0, out["b"]
    assert [w["pid"] for w in snap["workers"]] == [procs["c"].pid]  # b said BYE; a is dead
    assert "Traceback" not in out["b"] + out["c"], out
    # A worker joined after each loss. Scores are late by the daemon's clock: this edge
    # stamped every utterance when it built the burst, seconds before sending the last.
    assert [p for p in health["problems"] if not p.startswith("scores late: ")] == [], health["problems"]
    assert [p for p in t["lost_problems"] if p.startswith(f"encode worker {name(procs['a'].pid)} lost ")
            and "none has joined since" in p], t["lost_problems"]


def name(pid: int) -> str:
    """How an `emoclapd encode` process on this host calls itself."""
    return f"{socket.gethostname()}:{pid}"


def test_an_endpoint_in_use_is_refused_not_taken_over(tmp_path):
    path = f"{tmp_path}/w.sock"
    first = context().socket(zmq.ROUTER)
    bind(first, f"ipc://{path}", "stages.workers")
    second = context().socket(zmq.ROUTER)
    try:
        with pytest.raises(LinkError, match=r"stages.workers: ipc://.*w.sock is in use: something listens"):
            bind(second, f"ipc://{path}", "stages.workers")
        other = subprocess.run(
            [sys.executable, "-c", "import zmq\nfrom daemon.links import bind, context\n"
             f"bind(context().socket(zmq.ROUTER), 'ipc://{path}', 'stages.workers')"],
            cwd=REPO, capture_output=True, text=True, timeout=60)
        assert other.returncode != 0
        assert f"stages.workers: ipc://{path} is in use by another process (it holds {path}.lock)" \
            in other.stderr
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(LinkError, match=rf"stages.workers: cannot bind tcp://127.0.0.1:{port}: "
                                                r"Address already in use"):
                bind(second, f"tcp://127.0.0.1:{port}", "stages.workers")
    finally:
        first.close()
        second.close()
    # A dead endpoint's file (kill -9 leaves it behind) is taken over: nobody listens on it.
    third = context().socket(zmq.ROUTER)
    bind(third, f"ipc://{path}", "stages.workers")
    third.close()


def test_a_worker_outlives_its_gateway_and_joins_the_next(tmp_path, tiny_bundle):
    """Paranoid Pirate's other half: the broker goes away (a gateway restart), the worker
    notices and joins the new one by itself."""
    from emoclap.bundle import load_bundle

    cfg = fleet_config(tmp_path, tiny_bundle)
    worker, batcher = open_encoder(cfg, load_bundle(cfg.bundle))
    worker.start()

    def gateway(first_seq: int):
        async def body(svc):
            await until(lambda: len(svc.parts.broker.snapshot()["workers"]) == 1, 20, "the worker to join")
            batch = segments(5, station=f"desk{first_seq}")
            await asyncio.to_thread(feed(cfg, batch).join, 10)
            await until(lambda: svc.parts.floor.published == 5, 20, "5 utterances published")
            return svc.parts.broker.snapshot()["workers"][0]["id"]
        return with_service(cfg, body, stages=("serve",))

    try:
        first = gateway(1)
        started = time.monotonic()
        second = gateway(2)  # the same endpoints, a new broker that knows nobody
        rejoined = time.monotonic() - started
    finally:
        worker.drain()
        worker.join(10)
        batcher.close()
    assert first != second and worker.connects >= 2
    print(f"\nthe worker joined the restarted gateway and its work was published {rejoined:.2f} s after it started")


def test_a_stage_alone_refuses_inproc_links(tmp_path, caplog):
    from daemon.service import run_service

    config = tmp_path / "c.toml"
    config.write_text('[[stations]]\nname = "s"\nfile = "x.wav"\n')
    assert run_service(str(config), ("encode",)) == 2
    assert run_service(str(config), ("capture",)) == 2
    text = caplog.text
    assert "stages.workers: inproc://emoclap-workers only links stages in one process; " \
           "`emoclapd encode` needs the gateway's ipc:// or tcp:// endpoint" in text
    assert "stages.utterances: inproc://emoclap-utterances only links stages in one process" in text


class SlowEncoder:
    """The worker's encoder, `seconds` slower per call: a CPU that something else is
    using (a prompt re-embed, another process)."""

    def __init__(self, encoder, seconds: float):
        self.encoder, self.seconds = encoder, seconds

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode(self, audios, **options):
        time.sleep(self.seconds)
        return self.encoder.encode(audios, **options)


def test_a_stop_waits_for_a_slow_worker_that_is_still_answering(tmp_path, tiny_bundle):
    """SIGTERM with a backlog that takes longer than the drain timeout to encode: as long
    as the worker keeps answering, nothing accepted is dropped."""
    from emoclap.bundle import load_bundle
    from daemon.service import Service

    cfg = fleet_config(tmp_path, tiny_bundle)
    cfg.encoder.max_batch = 1
    worker, batcher = open_encoder(cfg, load_bundle(cfg.bundle))
    batcher.encoder = SlowEncoder(batcher.encoder, 0.3)
    n, bank_stopped_at_drain = 8, []

    async def main():
        svc = Service(cfg, ("serve",), drain_timeout_s=1.0)
        await svc.start()
        broker = svc.parts.broker
        drain = broker.drain
        broker.drain = lambda t: (bank_stopped_at_drain.append(svc.parts.bank._stop.is_set()), drain(t))
        worker.start()
        try:
            await until(lambda: len(broker.snapshot()["workers"]) == 1, 20, "the worker to join")
            await asyncio.to_thread(feed(cfg, segments(n)).join, 10)
            await until(lambda: broker.snapshot()["accepted"] == n, 10, f"{n} segments at the broker")
            assert svc.parts.floor.published < n // 2  # most still to encode: 2.4 s of work
        finally:
            started = time.monotonic()
            stopping = asyncio.create_task(svc.stop())
            await until(lambda: broker.drain_event.is_set(), 10, "the drain")
            health = svc.parts.server.health()
            await stopping
        return (svc.parts.floor.published, svc.parts.server.metrics.drop_counts(), time.monotonic() - started,
                health)

    try:
        published, drops, took, health = asyncio.run(main())
    finally:
        worker.drain()
        worker.join(10)
        batcher.close()
    assert (published, drops) == (n, {}), (published, drops)
    assert took > 1.0  # longer than the drain timeout: it waited on the answers
    assert bank_stopped_at_drain == [True]  # prompt re-embedding stopped before the drain began
    assert health["status"] == "degraded"  # a load balancer sees it going
    assert [p for p in health["problems"] if p.startswith("stopping: draining (")], health["problems"]


def test_scores_published_late_make_health_degraded_while_they_are(tmp_path, tiny_bundle):
    """A live monitor whose scores come late is not healthy: /healthz says so while the
    last minute's p99 is over `server.late_after_s`, and names the figure."""
    from emoclap.bundle import load_bundle

    cfg = fleet_config(tmp_path, tiny_bundle)
    cfg.encoder.max_batch, cfg.server.late_after_s = 1, 0.4
    worker, batcher = open_encoder(cfg, load_bundle(cfg.bundle))
    batcher.encoder = SlowEncoder(batcher.encoder, 0.25)

    async def body(svc):
        worker.start()
        floor = svc.parts.floor
        await until(lambda: len(svc.parts.broker.snapshot()["workers"]) == 1, 20, "the worker to join")
        await asyncio.to_thread(feed(cfg, segments(1)).join, 10)
        await until(lambda: floor.published == 1, 10, "one on time")
        on_time = svc.parts.server.health()
        await asyncio.to_thread(feed(cfg, segments(4, station="till-2")).join, 10)  # a queue: 1 s for the last
        await until(lambda: floor.published == 5, 20, "four more, late")
        return on_time, svc.parts.server.health()

    try:
        on_time, late = with_service(cfg, body, stages=("serve",))
    finally:
        worker.drain()
        worker.join(10)
        batcher.close()
    assert on_time["status"] == "ok", on_time["problems"]
    problem = [p for p in late["problems"] if p.startswith("scores late: p99 ")]
    assert problem and "over the last 60 s (5 utterances; server.late_after_s 0.4)" in problem[0], late["problems"]


def test_a_slow_link_to_a_worker_is_named_by_its_round_trip(tmp_path, tiny_bundle):
    """A worker on a slow or lossy network still answers, only late: /healthz names it by
    the heartbeats' measured round trip, and a worker on a good link is not named."""
    from emoclap.bundle import load_bundle

    cfg = fleet_config(tmp_path, tiny_bundle)
    cfg.stages.slow_link_ms = 100.0
    worker, batcher = open_encoder(cfg, load_bundle(cfg.bundle))
    send = worker._send
    delay = {"s": 0.0}

    def slow_send(frames):  # what it sends leaves `delay` later, as over a slow link
        if frames[1] == b"HEARTBEAT" and delay["s"]:
            time.sleep(delay["s"])
        send(frames)
    worker._send = slow_send

    async def body(svc):
        worker.start()
        broker = svc.parts.broker
        await until(lambda: len(broker.snapshot()["workers"]) == 1, 20, "the worker to join")
        await until(lambda: "rtt_ms" in broker.snapshot()["workers"][0], 10, "a measured round trip")
        await asyncio.sleep(2.5)
        fast = svc.parts.server.health()["problems"], broker.snapshot()["workers"][0]["rtt_ms"]
        delay["s"] = 0.2
        await until(lambda: any("link round trip" in p for p in svc.parts.server.health()["problems"]), 15,
                    "the slow link in /healthz")
        return fast, svc.parts.server.health()["problems"]

    try:
        (fast_problems, fast_rtt), slow_problems = with_service(cfg, body, stages=("serve",))
    finally:
        worker.drain()
        worker.join(10)
        batcher.close()
    assert fast_rtt < 50 and not [p for p in fast_problems if "link round trip" in p], (fast_rtt, fast_problems)
    named = [p for p in slow_problems if "link round trip" in p]
    assert named and named[0].startswith(f"encode worker {name(os.getpid())}: link round trip 2")
    assert named[0].endswith("ms (median of the last 8 heartbeats; stages.slow_link_ms 100)")
