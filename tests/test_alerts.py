"""Alert rules: the rule table (errors naming the rule), the state machine (hysteresis,
cool-down, minimum utterances, insufficient utterances), reload, and hostile inputs."""
import json
import math
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import ConfigError, parse_config
from daemon.history import History, export
from emoclap.alerts import KEYS, Alerts, Rule, RuleError, parse_rule, parse_rules

BUY = Rule("ready to buy", "purchase_intention", "above", 0.7, 0.6, min_utterances=3, cooldown_s=120)


def utt(t, score, count, station="s1", role="customer", seq=None, emotion="purchase_intention", **extra):
    return {"type": "utterance", "station": station, "role": role, "seq": seq if seq is not None else count,
            "time": t, "duration": 2.0, "scores": {emotion: score},
            "rolling": {emotion: {"score": score, "count": count, "updated": t}}, **extra}


def test_fires_once_rearms_below_the_rearm_line_and_keeps_the_cooldown():
    a = Alerts([BUY])
    assert a.observe(utt(1000.0, 0.9, 1)) == []  # high, but on one utterance
    assert a.observe(utt(1001.0, 0.8, 2)) == []
    [fired] = a.observe(utt(1002.5, 0.75, 3, visit="s1-999000"))
    assert fired == {"type": "alert", "state": "fired", "id": "ready to buy@s1-1002500", "rule": "ready to buy",
                     "station": "s1", "role": "customer", "emotion": "purchase_intention",
                     "direction": "above", "threshold": 0.7, "rearm": 0.6, "value": 0.75, "count": 3,
                     "visit": "s1-999000", "time": 1002.5, "seq": 3}
    assert a.active() == [fired]
    assert a.observe(utt(1003.0, 0.95, 4)) == []  # fired already: once
    assert a.observe(utt(1004.0, 0.61, 5)) == []  # between the lines: still active (hysteresis)
    [cleared] = a.observe(utt(1005.0, 0.59, 6))
    assert cleared == fired | {"state": "cleared", "value": 0.59, "count": 6, "time": 1005.0, "seq": 6}
    assert a.active() == []
    assert a.observe(utt(1006.0, 0.9, 7)) == []  # armed again, but within the cool-down
    assert a.observe(utt(1002.5 + 119.9, 0.9, 8)) == []
    [again] = a.observe(utt(1002.5 + 120.0, 0.9, 9))
    assert again["state"] == "fired" and again["id"] == "ready to buy@s1-1122500"


def test_below_rule_and_default_rearm():
    [rule] = parse_rules([{"name": "unhappy", "emotion": "pleasant", "below": 0.3}])
    assert (rule.direction, rule.threshold, rule.rearm, rule.min_utterances, rule.cooldown_s) == (
        "below", 0.3, 0.35, 1, 60.0)
    a = Alerts([rule])
    [fired] = a.observe(utt(10.0, 0.3, 1, emotion="pleasant"))  # the threshold itself counts
    assert fired["direction"] == "below" and fired["visit"] is None
    assert a.observe(utt(11.0, 0.35, 2, emotion="pleasant")) == []  # must pass the line, not touch it
    assert a.observe(utt(12.0, 0.36, 3, emotion="pleasant"))[0]["state"] == "cleared"
    # above = 0 fires on any score and, its default re-arm line being below 0, never re-arms
    [edge] = parse_rules([{"name": "any", "emotion": "pleasant", "above": 0}])
    assert edge.rearm == -0.05


def test_insufficient_other_emotions_stations_and_roles():
    rule = Rule("r", "pleasant", "above", 0.5, 0.4, cooldown_s=0, stations=("a",))
    a = Alerts([rule])
    assert a.observe(utt(1.0, 0.9, 1, station="a", emotion="pleasant", insufficient="too_quiet")) == []
    assert a.observe(utt(1.0, 0.9, 1, station="b", emotion="pleasant")) == []  # not its station
    assert a.observe(utt(1.0, 0.9, 1, station="a", emotion="aroused")) == []  # not its emotion
    assert a.observe({"type": "speech", "station": "a", "role": "staff", "time": 1.0}) == []
    [x] = a.observe(utt(2.0, 0.9, 2, station="a", emotion="pleasant", insufficient=None))
    # each role of a station has its own state (a shared microphone with staff scored)
    [y] = a.observe(utt(2.0, 0.9, 1, station="a", role="staff", emotion="pleasant"))
    assert x["id"] != y["id"] and {x["role"], y["role"]} == {"customer", "staff"}


def test_visit_end_forget_and_reload():
    other = Rule("low", "pleasant", "below", 0.2, 0.3)
    a = Alerts([BUY, other])
    for i in range(1, 4):
        out = a.observe(utt(100.0 + i, 0.8, i, visit="s1-50000"))
    assert [x["state"] for x in out] == ["fired"]
    assert a.end_visit({"type": "visit", "state": "closed", "visit": "nope", "end": 200.0}) == []
    [cleared] = a.end_visit({"type": "visit", "state": "closed", "visit": "s1-50000", "end": 110.0})
    assert cleared["state"] == "cleared" and cleared["time"] == 110.0 and cleared["value"] == 0.8
    assert a.observe(utt(300.0, 0.8, 4))[0]["state"] == "fired"  # re-armed, cool-down passed
    [gone] = a.forget("s1", 400.0)
    assert gone["state"] == "cleared" and gone["time"] == 400.0 and a.active() == []
    assert a.observe(utt(401.0, 0.8, 3))[0]["state"] == "fired"  # forgotten: no cool-down left
    # reload: an unchanged rule keeps its state, a changed one is cleared and starts afresh
    b = Alerts([BUY, other])
    [f1] = b.observe(utt(10.0, 0.9, 3))
    [f2] = b.observe(utt(10.0, 0.1, 1, station="s2", emotion="pleasant"))
    assert b.replace([BUY, Rule("low", "pleasant", "below", 0.25, 0.3)], 20.0) == [
        f2 | {"state": "cleared", "time": 20.0}]
    assert b.active() == [f1]
    assert b.observe(utt(21.0, 0.9, 4)) == []  # still fired: nothing new
    [f3] = b.observe(utt(22.0, 0.1, 2, station="s2", emotion="pleasant"))
    assert f3["state"] == "fired" and f3["id"] != f2["id"]
    gone = b.replace([], 30.0)  # removed rules: their active alerts cleared
    assert [(c["id"], c["state"], c["time"]) for c in gone] == [(f1["id"], "cleared", 30.0),
                                                               (f3["id"], "cleared", 30.0)]
    assert b.active() == [] and b.observe(utt(31.0, 0.9, 5)) == []


def test_unknown_emotion_is_reported_once_until_it_comes_back():
    a = Alerts([BUY, Rule("calm", "calm", "above", 0.5, 0.4)])
    assert [r.name for r in a.unknown_emotions({"pleasant"})] == ["ready to buy", "calm"]
    assert a.unknown_emotions({"pleasant"}) == []
    assert a.unknown_emotions({"calm", "pleasant"}) == []  # calm came; ready to buy was reported
    assert [r.name for r in a.unknown_emotions({"pleasant", "purchase_intention"})] == ["calm"]  # went again
    assert [r.name for r in a.unknown_emotions(set())] == ["ready to buy"]


@pytest.mark.parametrize("table, message", [
    ({"name": "buying", "emotion": "purchase_intention", "above": 1.5},
     'alerts[0] "buying": \'above\' must be a finite number in [0, 1]'),
    ({"name": "buying", "emotion": "purchase_intention", "above": math.nan},
     'alerts[0] "buying": \'above\' must be a finite number in [0, 1]'),
    ({"name": "buying", "emotion": "purchase_intention", "below": math.inf},
     'alerts[0] "buying": \'below\' must be a finite number in [0, 1]'),
    ({"name": "buying", "emotion": "purchase_intention", "above": True},
     'alerts[0] "buying": \'above\' must be'),
    ({"name": "buying", "emotion": "purchase_intention", "above": 0.5, "below": 0.2},
     'alerts[0] "buying": give exactly one of'),
    ({"name": "buying", "emotion": "purchase_intention"}, 'alerts[0] "buying": give exactly one of'),
    ({"name": "buying", "emotion": "purchase_intention", "above": 0.7, "rearm": 0.7},
     'alerts[0] "buying": \'rearm\' (0.7) must be below \'above\' (0.7)'),
    ({"name": "buying", "emotion": "pleasant", "below": 0.3, "rearm": 0.2},
     'alerts[0] "buying": \'rearm\' (0.2) must be above \'below\' (0.3)'),
    ({"name": "buying", "emotion": "Purchase Intention", "above": 0.7}, 'alerts[0] "buying": \'emotion\''),
    ({"name": "buying", "emotion": "purchase_intention", "above": 0.7, "abov": 1},
     'alerts[0] "buying": unknown key "abov"'),
    ({"name": "buying", "emotion": "purchase_intention", "above": 0.7, "min_utterances": 0},
     'alerts[0] "buying": \'min_utterances\''),
    ({"name": "buying", "emotion": "purchase_intention", "above": 0.7, "min_utterances": 2.0},
     'alerts[0] "buying": \'min_utterances\''),
    ({"name": "buying", "emotion": "purchase_intention", "above": 0.7, "cooldown_s": -1},
     'alerts[0] "buying": \'cooldown_s\''),
    ({"name": "buying", "emotion": "purchase_intention", "above": 0.7, "stations": ["a", "a"]},
     'alerts[0] "buying": \'stations\' lists "a" twice'),
    ({"name": "buying", "emotion": "purchase_intention", "above": 0.7, "stations": "a"},
     'alerts[0] "buying": \'stations\' must be a list'),
    ({"emotion": "purchase_intention", "above": 0.7}, "alerts[0]: 'name' is required"),
    ({"name": "x" * 81, "emotion": "purchase_intention", "above": 0.7}, "alerts[0]: 'name' must be at most 80"),
    ({"name": "bell\x07", "emotion": "purchase_intention", "above": 0.7}, "alerts[0]: 'name' must be"),
    ("not a table", "alerts[0]: expected a table"),
])
def test_bad_rules_are_refused_naming_the_rule(table, message):
    with pytest.raises(RuleError) as err:
        parse_rule(table)
    assert str(err.value).startswith(message), str(err.value)


def test_rule_tables_in_the_configuration():
    good = parse_config("""
[[alerts]]
name = "ready to buy"
emotion = "purchase_intention"
above = 0.7
rearm = 0.6
min_utterances = 3
cooldown_s = 120
stations = ["counter-1"]
[[alerts]]
name = "unhappy"
emotion = "pleasant"
below = 0.3
""")
    assert good.alerts == (Rule("ready to buy", "purchase_intention", "above", 0.7, 0.6, 3, 120.0, ("counter-1",)),
                           Rule("unhappy", "pleasant", "below", 0.3, 0.35))
    assert parse_config("").alerts == () and parse_config("").webhook is None
    for text, message in [
        ('[[alerts]]\nname = "a"\nemotion = "pleasant"\nabove = 0.5\n[[alerts]]\nname = "a"\n'
         'emotion = "pleasant"\nbelow = 0.5', 'config.toml: alerts[1] "a": name already used by alerts[0]'),
        ('[[alerts]]\nname = "a"\nemotion = "pleasant"\nabove = 0.5\n[[alerts]]\nname = "buying"\n'
         'emotion = "pleasant"\nabove = nan', 'config.toml: alerts[1] "buying": \'above\' must be a finite'),
        ("alerts = 3", "config.toml: alerts: expected an array of tables"),
        ("[alerts]\nname = 1", "config.toml: alerts: expected an array of tables"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(text)
        assert str(err.value).startswith(message), str(err.value)


# ---- hostile rule tables

values = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(),
                   st.text(max_size=100), st.lists(st.text(max_size=5) | st.integers(), max_size=4),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
tables = st.dictionaries(st.sampled_from(KEYS + ("abov", "", "name ")), values, max_size=9)
plausible = st.fixed_dictionaries(
    {"name": st.text(min_size=1, max_size=90), "emotion": st.sampled_from(["pleasant", "calm", "Bad name", ""])},
    optional={"above": st.floats() | st.integers(-2, 2), "below": st.floats(-0.5, 1.5),
              "rearm": st.floats() | st.booleans(), "min_utterances": st.integers(-2, 5) | st.floats(0, 5),
              "cooldown_s": st.floats() | st.integers(-5, 10**9),
              "stations": st.lists(st.sampled_from(["a", "b", ""]) | st.integers(), max_size=4) | st.text()})


@settings(max_examples=400, deadline=None)
@given(st.lists(tables | plausible | values, max_size=5) | values)
def test_any_rule_table_parses_or_names_the_rule(tables_in):
    try:
        rules = parse_rules(tables_in)
    except RuleError as exc:
        message = str(exc)
        assert message.startswith("alerts")
        if isinstance(tables_in, list) and message.startswith("alerts["):
            i = int(message[len("alerts["):message.index("]")])
            name = tables_in[i].get("name") if isinstance(tables_in[i], dict) else None
            if isinstance(name, str) and name.isprintable() and 0 < len(name) <= 80:
                assert message.startswith(f"alerts[{i}] {json.dumps(name, ensure_ascii=False)}: ")
        return
    assert len({r.name for r in rules}) == len(rules)
    for r in rules:
        assert 0 <= r.threshold <= 1 and math.isfinite(r.rearm) and r.min_utterances >= 1
        assert (r.rearm < r.threshold) if r.direction == "above" else (r.rearm > r.threshold)
        assert math.isfinite(r.cooldown_s) and r.cooldown_s >= 0
        hash(r)  # frozen: usable as a key, comparable on reload


# ---- random score sequences

rules = st.builds(
    lambda d, t, gap, n, cool: Rule("r", "pleasant", d, t, t - gap if d == "above" else t + gap, n, cool),
    st.sampled_from(["above", "below"]), st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]),
    st.sampled_from([0.01, 0.05, 0.2]), st.integers(1, 4), st.sampled_from([0.0, 5.0, 30.0]))
steps = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([0.0, 1.0, 4.9, 5.0, 12.0, 40.0]),
                           st.integers(0, 20).map(lambda k: k / 20), st.integers(0, 4).map(lambda k: k == 0),
                           st.sampled_from([None, None, "too_short", "noisy", ""])),
                 max_size=60)


@settings(max_examples=250, deadline=None)
@given(rules, steps)
def test_alerts_alternate_respect_cooldown_count_and_insufficient(rule, steps):
    a = Alerts([rule])
    t, counts, seq = 1000.0, {}, 0
    last = {}            # station → last alert event
    fired_at = {}        # station → time of its last fired
    insufficient = set()
    def check(out):
        for e in out:
            s = e["station"]
            prev = last.get(s)
            if e["state"] == "fired":
                assert prev is None or prev["state"] == "cleared"  # alternate, fired first
                assert e["seq"] not in insufficient and e["count"] >= rule.min_utterances
                assert rule.crossed(e["value"])
                if s in fired_at:
                    assert e["time"] - fired_at[s] >= rule.cooldown_s - 1e-3
                fired_at[s] = e["time"]
            else:
                assert prev is not None and prev["state"] == "fired" and e["id"] == prev["id"]
            last[s] = e

    for station, dt, score, close, bad in steps:
        t += dt
        seq += 1
        if close:  # the visit closes: an alert fired in it is cleared
            check(a.end_visit({"type": "visit", "state": "closed", "visit": f"{station}-v", "end": t}))
        if bad:
            insufficient.add(seq)
        else:
            counts[station] = counts.get(station, 0) + 1
        was_active = station in last and last[station]["state"] == "fired"
        out = a.observe(utt(t, score, 99 if bad else counts[station], station=station, seq=seq,
                            emotion="pleasant", visit=f"{station}-v", insufficient=bad))
        check(out)
        # liveness: a sufficient utterance that crosses, on enough utterances, past the
        # cool-down, with nothing active, fires
        if (not bad and not was_active and rule.crossed(score) and counts[station] >= rule.min_utterances
                and (station not in fired_at or t - fired_at[station] >= rule.cooldown_s + 1e-6)):
            assert [e["state"] for e in out] == ["fired"], (station, t, score)
        assert {x["id"] for x in a.active()} == {e["id"] for e in last.values() if e["state"] == "fired"}


@settings(max_examples=200, deadline=None)
@given(st.recursive(values, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["type", "station", "role", "time", "rolling", "seq",
                                                       "visit", "insufficient", "pleasant", "score", "count"]),
                                      inner, max_size=8), max_leaves=25))
def test_hostile_events_are_ignored_never_an_error(event):
    a = Alerts([Rule("r", "pleasant", "above", 0.0, -0.05, cooldown_s=0)])
    for e in (event, {"type": "utterance", "station": "s", "role": "customer", "time": 1.0, "rolling": event},
              {"type": "utterance", "station": "s", "role": "customer", "time": 1.0,
               "rolling": {"pleasant": event}}):
        out = a.observe(e)
        assert isinstance(out, list)
        for alert in out:
            json.dumps(alert, allow_nan=False)  # always storable and sendable
    a.end_visit(event)


# ---- history

def test_alerts_table_added_to_an_older_history(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)  # the schema before alerts existed
    db.executescript("CREATE TABLE utterances (id INTEGER PRIMARY KEY, time REAL NOT NULL, station TEXT NOT NULL,"
                     " role TEXT NOT NULL, event TEXT NOT NULL, audio BLOB);"
                     "INSERT INTO utterances (time, station, role, event) VALUES (1, 's1', 'customer', '{}');")
    db.commit()
    db.close()
    a = Alerts([BUY])
    [fired] = a.observe(utt(1000.0, 0.9, 3, visit="s1-1"))
    [cleared] = a.end_visit({"visit": "s1-1", "end": 1010.0})
    history = History(path)
    history.write_many([], [], [fired])
    history.write_many([], [], [cleared, fired])  # a replayed alert replaces its row
    assert list(history.alerts()) == [fired, cleared]
    assert list(history.alerts(since=1005.0)) == [cleared] and list(history.alerts(station="s2")) == []
    assert len(list(history.events())) == 1  # the old rows are still there

    import io
    out = io.StringIO()
    assert export(history.alerts(), out, "csv", alerts=True) == 2
    header, row, cleared_row, _ = out.getvalue().split("\r\n")
    assert header == "id,state,time,rule,station,role,emotion,direction,threshold,rearm,value,count,visit,seq"
    assert row == ("ready to buy@s1-1000000,fired,1970-01-01T00:16:40.000+00:00,ready to buy,s1,customer,"
                   "purchase_intention,above,0.7,0.6,0.9,3,s1-1,3")
    assert cleared_row.startswith("ready to buy@s1-1000000,cleared,1970-01-01T00:16:50.000+00:00,")
    history.close()
