"""The encode fleet's protocol and the broker's bookkeeping, without sockets: hostile
frames are refused with a reason, never a crash; random joins, heartbeats, deaths,
departures, timeouts and (late, repeated, forged) answers never publish an utterance
twice, never give work to a dead worker, and every accepted utterance ends published
or dropped with a reason."""
import json
import math
import tomllib

import numpy as np
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from daemon.config import ConfigError, parse_config
from emoclap import fleet, wire
from emoclap.dispatcher import Dispatcher, Options
from emoclap.record import Utterance


def utterance(seq=1, station="desk", audio=0.2):
    rng = np.random.default_rng(seq)
    return Utterance(station, "customer", seq, 1.0, 2.5, 1795300000.25, 1795300002.0,
                     audio=(rng.standard_normal(int(audio * 16000)) * 0.1).astype(np.float32))


# ---- messages
def test_every_command_round_trips():
    utt = utterance()
    cmd = fleet.decode(fleet.ready(16, "box:12", "box", 12), "broker")
    assert (cmd.name, cmd.fields) == ("READY", {"credit": 16, "name": "box:12", "host": "box", "pid": 12})
    cmd = fleet.decode(fleet.heartbeat(3, [(4, 0.25)]), "broker")
    assert cmd.fields == {"pending": 3, "batches": [[4, 0.25]]}
    assert fleet.decode(fleet.heartbeat(), "broker").fields == {}
    cmd = fleet.decode(fleet.heartbeat(0, None, "encoder: Triton at h:1 unreachable for 3 s"), "broker")
    assert cmd.fields["problem"] == "encoder: Triton at h:1 unreachable for 3 s"
    cmd = fleet.decode(fleet.heartbeat(1, None, None, (812.25, 0.125)), "broker")
    assert (cmd.fields["pong"], cmd.fields["held"]) == (812.25, 0.125)
    cmd = fleet.decode(fleet.heartbeat(0, None, None, None, {"refused": 3, "expired": 0}), "broker")
    assert cmd.fields["pieces"] == {"refused": 3}  # zero counts are left out
    assert fleet.decode(fleet.heartbeat(pieces={"refused": 0, "expired": 0}), "broker").fields == {}
    assert fleet.decode(fleet.broker_heartbeat(812.25), "worker").fields == {"ping": 812.25}
    work = fleet.decode(fleet.work(wire.segment(utt)), "worker")
    assert work.name == "WORK" and fleet.key_of(work.message.utterance) == fleet.key_of(utt)
    assert np.array_equal(work.message.utterance.audio, utt.audio)
    utt.embedding = np.ones(4, np.float32) / 2
    res = fleet.decode(fleet.result(wire.embedding(utt)), "broker")
    assert res.name == "RESULT" and fleet.key_of(res.message.utterance) == fleet.key_of(utt)
    assert res.frames == wire.embedding(utt)  # passed on to the publisher as they came
    drop = fleet.decode(fleet.drop(fleet.key_of(utt), "too_short"), "broker")
    assert (drop.fields["station"], drop.fields["t0"], drop.fields["seq"]) == fleet.key_of(utt)
    assert [fleet.decode(f, to).name for f, to in ((fleet.bye(), "broker"), (fleet.reconnect(), "worker"),
                                                    (fleet.broker_heartbeat(), "worker"))] == \
        ["BYE", "RECONNECT", "HEARTBEAT"]


def refused(frames, to, why):
    try:
        fleet.decode(frames, to)
    except wire.WireError as exc:
        assert why in str(exc), str(exc)
    else:
        raise AssertionError(f"accepted {frames!r}")


def test_bad_messages_name_the_rule():
    utt = utterance()
    p = fleet.PROTOCOL
    refused([b"MDPW01", b"READY", b"{}"], "broker", "not a EMOCLAP-FLEET/3 message")
    refused([p, b"WORK", *wire.segment(utt)], "broker", "unknown command b'WORK' for a broker")
    refused([p, b"READY"], "broker", "READY: missing its body")
    refused([p, b"READY", b'{"credit": -1}'], "broker", "field 'credit' is malformed")
    refused([p, b"READY", b'{"credit": 5000}'], "broker", "field 'credit' is malformed")
    refused([p, b"READY", b'{"credit": true}'], "broker", "field 'credit' is malformed")
    refused([p, b"READY", b'{"name": "x"}'], "broker", "field 'credit' is missing")
    refused([p, b"READY", b'{"credit": 1, "evil": 1}'], "broker", "unknown field 'evil'")
    refused([p, b"READY", b"[" * 100000], "broker", "body over")
    refused([p, b"READY", b"[" * 60000], "broker", "bad body")
    refused([p, b"DROP", json.dumps({"station": "s", "t0": 1.0, "seq": 1, "reason": "bored"}).encode()],
            "broker", "field 'reason' is malformed")
    refused([p, b"DROP", b'{"station": "s", "t0": NaN, "seq": 1, "reason": "too_short"}'], "broker",
            "field 't0' is malformed")
    refused([p, b"HEARTBEAT", b'{"batches": [[1, -2]]}'], "broker", "field 'batches' is malformed")
    refused([p, b"HEARTBEAT", b'{"problem": 7}'], "broker", "field 'problem' is malformed")
    refused([p, b"HEARTBEAT", b'{"problem": ""}'], "broker", "field 'problem' is malformed")
    refused([p, b"HEARTBEAT", b'{"held": -1}'], "broker", "field 'held' is malformed")
    refused([p, b"HEARTBEAT", b'{"ping": "now"}'], "worker", "field 'ping' is malformed")
    refused([p, b"HEARTBEAT", b'{"pieces": {"lost": 1}}'], "broker", "field 'pieces' is malformed")
    refused([p, b"HEARTBEAT", b'{"pieces": {"refused": -1}}'], "broker", "field 'pieces' is malformed")
    refused([p, b"HEARTBEAT", b'{"pieces": [1]}'], "broker", "field 'pieces' is malformed")
    refused([p, b"BYE", b"{}"], "broker", "BYE: has no body")
    refused([p, b"RESULT", *wire.segment(utt)], "broker", "RESULT: carries a segment message")
    refused([p, b"RESULT", *wire.status({})], "broker", "RESULT: carries a status message")
    refused([p, b"RESULT", b"{}"], "broker", "expected 2 frames")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=4), max_leaves=12)
# Bodies with the fields the protocol knows (and one it does not), any values.
FIELDS = st.dictionaries(st.sampled_from(["pending", "batches", "problem", "ping", "pong", "held", "credit",
                                          "station", "seq", "pieces", "x"]),
                         JSON | st.dictionaries(st.sampled_from([*fleet.PIECE_OUTCOMES, "x"]),
                                                st.integers(-2, 2**32) | JSON, max_size=3), max_size=4)


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(st.binary(max_size=40), max_size=5), to=st.sampled_from(["broker", "worker"]))
def test_random_frames_never_crash(frames, to):
    try:
        fleet.decode(frames, to)
    except wire.WireError:
        pass


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(list(fleet.TO_BROKER + fleet.TO_WORKER) + [b"", b"ready", b"\xff"]),
       body=st.lists(JSON | FIELDS, max_size=3), to=st.sampled_from(["broker", "worker"]))
def test_hostile_bodies_are_refused_or_valid(name, body, to):
    frames = [fleet.PROTOCOL, name, *(json.dumps(b).encode() for b in body)]
    try:
        cmd = fleet.decode(frames, to)
    except wire.WireError:
        return
    for key, value in cmd.fields.items():  # what passed holds to the rules
        assert fleet.BODY_RULES[name][key](value)
    if cmd.name == "READY":
        assert 0 <= cmd.fields["credit"] <= fleet.MAX_CREDIT


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, 300), flip=st.integers(0, 255), which=st.sampled_from(["header", "payload"]))
def test_mangled_results_are_refused_or_valid(cut, flip, which):
    utt = utterance(audio=0.01)
    utt.embedding = np.ones(4, np.float32) / 2
    frames = fleet.result(wire.embedding(utt))
    i = 2 if which == "header" else 3
    data = bytearray(frames[i])
    if data:
        data[cut % len(data)] ^= flip
    frames[i] = bytes(data[: len(data) - cut % 3])
    try:
        cmd = fleet.decode(frames, "broker")
    except wire.WireError:
        return
    assert cmd.message.kind in ("embedding", "speech") and np.isfinite(cmd.message.utterance.embedding).all()


# ---- the broker's bookkeeping
def test_work_goes_to_the_free_worker_and_a_dead_one_gets_none():
    d = Dispatcher(Options(heartbeat_interval_s=0.5, liveness=3, queue_limit=100))
    d.join(b"a", 2, {}, 0.0)
    d.join(b"b", 2, {}, 0.0)
    for seq in range(1, 7):
        assert d.submit(("s", 0.0, seq), None, 0.0) is None
    given = [(w, r.key[2]) for w, r in d.assign(0.0)]
    assert given == [(b"a", 1), (b"b", 2), (b"a", 3), (b"b", 4)] and len(d.queue) == 2  # turns; credit
    assert d.finish(b"a", ("s", 0.0, 1), 0.1) == "ok"
    assert [(w, r.key[2]) for w, r in d.assign(0.1)] == [(b"a", 5)]  # the one with free credit
    d.heard(b"b", 1.0)
    dead, drops = d.expire(1.7)  # a: last heard at 0.1, more than 1.5 s ago
    assert dead == [b"a"] and drops == [] and d.requeued == 2
    assert [w for w, _ in d.assign(1.7)] == []  # b is full; a is dead
    assert d.finish(b"a", ("s", 0.0, 3), 1.8) == "stale"  # a late answer from the dead
    assert d.finish(b"b", ("s", 0.0, 2), 1.8) == "ok"
    assert [(w, r.key[2]) for w, r in d.assign(1.8)] == [(b"b", 3)]  # a's, oldest first, before 6


def test_attempts_are_bounded_and_queue_overflow_without_workers_is_counted():
    d = Dispatcher(Options(max_attempts=2, queue_limit=2))
    assert [d.submit(("s", 0.0, i), None, 0.0) for i in (1, 2, 3)] == [None, None, "no_worker"]
    for t in (0.0, 10.0):
        d.join(b"w%d" % t, 5, {}, t)
        assert len(d.assign(t)) == 2
        d.expire(t + 5)
    assert d.dropped == {"no_worker": 1, "worker_lost": 2} and d.pending() == 0
    d.join(b"x", 1, {}, 20.0)
    assert d.submit(("s", 0.0, 1), None, 20.0) == "duplicate"  # finished keys are remembered
    assert d.accepted == 4 == d.finished + sum(d.dropped.values()) + d.pending()


def test_a_stuck_worker_times_out_and_the_slower_answer_is_a_duplicate():
    d = Dispatcher(Options(request_timeout_s=2.0))
    d.join(b"a", 1, {}, 0.0)
    d.submit(("s", 0.0, 1), None, 0.0)
    d.assign(0.0)
    for t in (0.5, 1.0, 1.5, 2.0):
        d.heard(b"a", t)  # alive, but the answer does not come
    d.join(b"b", 1, {}, 2.0)
    d.expire(2.1)
    assert [w for w, _ in d.assign(2.1)] == [b"b"]
    assert d.finish(b"b", ("s", 0.0, 1), 2.2) == "ok"
    assert d.finish(b"a", ("s", 0.0, 1), 2.3) == "duplicate" and d.duplicates == 1
    assert d.workers[b"a"].free == 1  # its answer gave its credit back


def test_a_slow_worker_that_answers_keeps_its_work():
    d = Dispatcher(Options(request_timeout_s=2.0))
    d.join(b"a", 4, {}, 0.0)
    for seq in range(1, 5):
        d.submit(("s", 0.0, seq), None, 0.0)
    d.assign(0.0)
    for seq, t in ((1, 1.5), (2, 3.0), (3, 4.5)):  # each past the others' deadline, but progress
        d.heard(b"a", t)
        assert d.expire(t) == ([], []) and d.requeued == 0
        assert d.finish(b"a", ("s", 0.0, seq), t) == "ok"
    d.heard(b"a", 6.5)  # alive, and nothing answered for 2.1 s: stuck
    assert d.expire(6.6) == ([], []) and d.requeued == 1 and d.workers[b"a"].free == 3
    assert d.assign(6.6) == []  # not back to the worker it is stuck in
    d.join(b"b", 1, {}, 6.7)
    assert [(w, r.key[2]) for w, r in d.assign(6.7)] == [(b"b", 4)]


WORKERS = [b"w0", b"w1", b"w2", b"w3"]


class FleetMachine(RuleBasedStateMachine):
    """Random lives of workers against one dispatcher; the test plays honest, late,
    repeated and forged answers."""

    def __init__(self):
        super().__init__()
        self.d = Dispatcher(Options(heartbeat_interval_s=0.5, liveness=3, max_attempts=3,
                                    request_timeout_s=4.0, queue_limit=6, remember=10000))
        self.now, self.seq = 0.0, 0
        self.queued: set = set()  # accepted and not dropped at the door
        self.ended: dict = {}  # key -> "published" or the drop reason
        self.given: dict = {w: [] for w in WORKERS}  # everything ever given to a worker

    def _end(self, key, how):
        assert key not in self.ended, f"{key} ended twice: {self.ended[key]} then {how}"
        self.ended[key] = how

    @rule(station=st.sampled_from(["a", "b"]))
    def submit(self, station):
        self.seq += 1
        key = (station, 100.0, self.seq)
        reason = self.d.submit(key, None, self.now)
        if reason is None:
            self.queued.add(key)
        else:
            assert reason in ("queue_full", "no_worker")

    @rule(station=st.sampled_from(["a", "b"]))
    def piece(self, station):  # its utterances then prefer the worker that holds its pieces
        holder = self.d.piece_holder(station)
        assert (holder is None) == (not any(p.credit for p in self.d.workers.values()))
        assert holder is None or self.d.workers[holder].credit > 0

    @rule()
    def resubmit(self):  # a key seen before never becomes a second request
        assume(self.queued)
        key = sorted(self.queued)[0]
        assert self.d.submit(key, None, self.now) == "duplicate"

    @rule(w=st.sampled_from(WORKERS), credit=st.integers(0, 4))
    def ready(self, w, credit):
        self.d.join(w, credit, {}, self.now)

    @rule(w=st.sampled_from(WORKERS))
    def heartbeat(self, w):
        self.d.heard(w, self.now)

    @rule(dt=st.floats(0.0, 3.0))
    def time_passes(self, dt):
        self.now += dt
        alive_before = set(self.d.workers)
        dead, drops = self.d.expire(self.now)
        assert set(dead) <= alive_before and not set(dead) & set(self.d.workers)
        for key, reason in drops:
            assert reason == "worker_lost"
            self._end(key, reason)

    @rule()
    def assign(self):
        for w, req in self.d.assign(self.now):
            peer = self.d.workers[w]  # a dead worker gets no work
            assert self.now - peer.heard <= self.d.timeout_s or peer.heard == self.now
            assert len(peer.inflight) <= peer.credit
            self.given[w].append(req.key)

    @rule(w=st.sampled_from(WORKERS), pick=st.integers(0, 10**6), drop=st.booleans())
    def answer(self, w, pick, drop):
        keys = self.given[w] or sorted(self.queued) or [("a", 100.0, 1)]
        key = keys[pick % len(keys)]  # honest, late, repeated or forged
        outcome = self.d.finish(w, key, self.now, "too_short" if drop else None)
        if outcome == "ok":
            assert key in self.given[w]
            self._end(key, "too_short" if drop else "published")
        else:
            assert outcome in ("duplicate", "stale")

    @rule(w=st.sampled_from(WORKERS))
    def bye(self, w):
        for key, reason in self.d.leave(w, self.now):
            self._end(key, reason)

    @invariant()
    def accounted(self):
        d = self.d
        assert d.accepted == d.finished + sum(d.dropped.values()) + d.pending()
        assert set(d.requests) == self.queued - set(self.ended)
        assert len(d.queue) == len(set(d.queue))

    def teardown(self):
        # Every worker falls silent; a fresh one then finishes what is left.
        self.now += 100.0
        for key, reason in self.d.expire(self.now)[1]:
            self._end(key, reason)
        self.d.join(b"last", 1000, {}, self.now)
        for _ in range(5):
            for w, req in self.d.assign(self.now):
                assert w == b"last"
                assert self.d.finish(w, req.key, self.now) == "ok"
                self._end(req.key, "published")
        assert self.d.pending() == 0
        assert set(self.ended) == self.queued  # each exactly once (see _end)


FleetMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=40, deadline=None,
                                          suppress_health_check=[HealthCheck.filter_too_much])
test_fleet_state_machine = FleetMachine.TestCase


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 30), limit=st.integers(1, 8))
def test_give_up_accounts_for_everything(n, limit):
    d = Dispatcher(Options(queue_limit=limit))
    d.join(b"w", 2, {}, 0.0)
    for seq in range(n):
        d.submit(("s", 0.0, seq), None, 0.0)
    d.assign(0.0)
    left = d.pending()
    drops = d.give_up()
    assert len(drops) == left and d.pending() == 0
    assert {r for _, r in drops} <= {"no_worker", "worker_lost"}
    assert d.accepted == n == d.finished + sum(d.dropped.values())


# ---- the [stages] settings of the fleet
STAGE_KEYS = ["workers", "heartbeat_interval_s", "heartbeat_liveness", "max_attempts", "request_timeout_s",
              "broker_queue"]
SCALARS = (st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=True) | st.booleans()
           | st.text(max_size=20) | st.sampled_from(["tcp://10.0.0.1:5555", "ipc://w.sock", "inproc://w",
                                                     "udp://x", ""]))


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    return json.dumps(v, ensure_ascii=False)


@settings(max_examples=150, deadline=None)
@given(values=st.dictionaries(st.sampled_from(STAGE_KEYS), SCALARS | st.lists(SCALARS, max_size=2),
                              min_size=1, max_size=3))
def test_hostile_fleet_settings_name_the_key(values):
    text = "[stages]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # not TOML at all: the reader's own error (tests/test_config.py)
    try:
        cfg = parse_config(text, "fleet.toml")
    except ConfigError as exc:
        message = str(exc)
        assert any(message.startswith(f"fleet.toml: stages.{k}") for k in values), message
        return
    st_ = cfg.stages
    assert st_.workers.startswith(("inproc://", "ipc://", "tcp://"))
    assert 0 < st_.heartbeat_interval_s <= 60 and math.isfinite(st_.request_timeout_s) and st_.request_timeout_s > 0
    assert 1 <= st_.heartbeat_liveness <= 100 and 1 <= st_.max_attempts <= 100 and 1 <= st_.broker_queue


def test_fleet_settings_errors_read_well():
    for text, why in (('[stages]\nworkers = "udp://x"', "stages.workers: expected an inproc://"),
                      ("[stages]\nheartbeat_liveness = 0", "stages.heartbeat_liveness: must be greater than 0"),
                      ("[stages]\nheartbeat_interval_s = 61", "stages.heartbeat_interval_s: at most 60"),
                      ("[stages]\nmax_attempts = 1.5", "stages.max_attempts: expected integer"),
                      ("[stages]\nbroker_queue = true", "stages.broker_queue: expected integer")):
        try:
            parse_config(text, "c.toml")
        except ConfigError as exc:
            assert why in str(exc), str(exc)
        else:
            raise AssertionError(text)
