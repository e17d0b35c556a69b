"""The /ws protocol without sockets: client sessions, messages, the send queue."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from emoclap import scorestream
from emoclap.alerts import Alerts, Rule
from emoclap.prompts import parse_prompt_file
from emoclap.record import Scored, Utterance
from emoclap.scorestream import ClientQueue, ScoreSession
from emoclap.visits import Visits

PLEASANT = parse_prompt_file("""label = "Pleasant – unpleasant"
[negative]
label = "Unpleasant"
en = ["I feel uneasy."]
[positive]
label = "Pleasant"
en = ["I feel good."]
""", "pleasant")


def test_subscribe_filters_and_answers():
    session = ScoreSession()
    assert session.wants("a") and session.wants("b")
    assert session.on_text('{"type": "subscribe", "stations": ["a"]}') == {"type": "subscribed",
                                                                           "stations": ["a"]}
    assert session.wants("a") and not session.wants("b") and session.wants(None)
    assert session.on_text('{"type": "subscribe", "stations": null}')["stations"] is None
    assert session.wants("b")


def test_bad_messages_get_an_error_and_keep_the_subscription():
    session = ScoreSession()
    session.on_text('{"type": "subscribe", "stations": ["a"]}')
    for bad in ("not json", "[]", '{"type": "hello"}', '{"type": "subscribe", "stations": "a"}',
                '{"type": "subscribe", "stations": [1]}', b"\x00binary", "[" * 100_000):
        reply = session.on_text(bad)
        assert reply["type"] == "error" and reply["reason"] == "bad_message"
    assert session.stations == {"a"}


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(), lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary(), json_values.map(json.dumps),
                 st.dictionaries(st.sampled_from(["type", "stations"]), json_values).map(json.dumps)))
def test_any_client_message_gets_one_valid_reply(message):
    session = ScoreSession()
    reply = session.on_text(message)
    assert reply["type"] in ("subscribed", "error")
    json.loads(scorestream.dumps(reply))  # always sendable
    if reply["type"] == "subscribed":
        assert session.stations is None or all(isinstance(s, str) for s in session.stations)


def test_messages_round_trip_as_json():
    hello = scorestream.hello([PLEASANT], [{"name": "desk", "role": "customer", "source": "replay",
                                            "state": "online"}])
    assert hello["version"] == scorestream.PROTOCOL_VERSION
    assert hello["emotions"] == [{"name": "pleasant", "label": "Pleasant – unpleasant",
                                  "negative": "Unpleasant", "positive": "Pleasant", "roles": None}]
    assert hello["alerts"] == [] and hello["visits"] == []
    # a client that connects mid-visit and mid-alert gets them in `hello`
    visits = Visits(end_after_s=90)
    _, [opened] = visits.observe({"type": "utterance", "station": "desk", "role": "customer", "time": 1004.0,
                                  "duration": 2.0, "scores": {"purchase_intention": 0.8}})
    alerts = Alerts([Rule("buy", "purchase_intention", "above", 0.7, 0.6)])
    [fired] = alerts.observe({"type": "utterance", "station": "desk", "role": "customer", "seq": 7,
                              "time": 1004.0, "visit": opened["visit"],
                              "rolling": {"purchase_intention": {"score": 0.8, "count": 1, "updated": 1004.0}}})
    busy = scorestream.hello([PLEASANT], [], alerts=alerts.active(), visits=visits.current())
    assert busy["alerts"] == [fired] and busy["visits"] == [opened]
    assert json.loads(scorestream.dumps(busy)) == busy
    utt = Utterance("desk", "customer", 7, 1.23456, 3.5, 1000.0, 1004.0)
    event = Scored(utt, {"pleasant": 0.123456},
                   {"pleasant": {"score": 0.123456, "count": 1, "updated": 1003.5}}).event()
    assert event == {"type": "utterance", "station": "desk", "role": "customer", "seq": 7,
                     "start": 1.235, "end": 3.5, "duration": 2.265, "time": 1003.5,
                     "scores": {"pleasant": 0.1235}, "parts": {},
                     "rolling": {"pleasant": {"score": 0.1235, "count": 1, "updated": 1003.5}},
                     "insufficient": None, "quality": None}
    snap = {"desk": {"customer": {"pleasant": {"score": 0.5, "count": 2, "updated": 1.0}}},
            "door": {"staff": {}}}
    states = {"desk": "online", "door": "ended"}
    everything = scorestream.rolling(5.0, snap, states)
    assert set(everything["stations"]) == {"desk", "door"} and everything["states"] == states
    only = scorestream.rolling(5.0, snap, states, {"door"})
    assert set(only["stations"]) == {"door"} and only["states"] == {"door": "ended"}
    for message in (hello, event, everything, scorestream.prompts([PLEASANT])):
        assert json.loads(scorestream.dumps(message)) == message


def test_client_queue_sheds_stale_snapshots_before_events():
    q = ClientQueue(limit=3)
    assert q.put("rolling", "r1") and q.put("utterance", "u1") and q.put("rolling", "r2")
    assert [item[:2] for item in q.items] == [("utterance", "u1"), ("rolling", "r2")]  # r1 replaced by r2
    assert q.put("utterance", "u2")
    assert q.put("utterance", "u3")  # full: the stale snapshot goes, events stay
    assert [t for _, t, _ in q.items] == ["u1", "u2", "u3"] and q.shed == 2
    assert not q.put("utterance", "u4") and q.full  # only events left: too slow
    assert not q.put("rolling", "r3")


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.lists(st.tuples(st.sampled_from(["rolling", "utterance", "get"]),
                                             st.integers(0, 10**6)), max_size=60))
def test_client_queue_never_loses_an_event_silently(limit, ops):
    """Events come out in order until the queue declares the client too slow; the queue
    never holds more than its limit, nor more than one snapshot."""
    q, sent, got = ClientQueue(limit), [], []
    for kind, n in ops:
        if kind == "get":
            item = q.get()
            if item and item[0] == "utterance":
                got.append(item[1])
            continue
        accepted = q.put(kind, f"{kind}{n}")
        if kind == "utterance" and accepted:
            sent.append(f"utterance{n}")
        assert len(q) <= limit and sum(k == "rolling" for k, _, _ in q.items) <= 1
        if not accepted:
            assert q.full
            break
    while (item := q.get()) is not None:
        if item[0] == "utterance":
            got.append(item[1])
    assert got == sent
