"""The /ingest protocol without sockets: sessions against hostile input, pacing."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from emoclap.ingest import IngestLimits, IngestSession


class Stream:
    def __init__(self):
        self.samples = 0

    def feed(self, pcm):
        self.samples += pcm.size
        return []

    def finish(self):
        return []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=80), st.binary(max_size=400),
                          st.fixed_dictionaries({"type": st.just("start")},
                                                optional={"station": st.text(max_size=70),
                                                          "role": st.text(max_size=10),
                                                          "sample_rate": st.integers() | st.floats()
                                                          | st.booleans()}).map(json.dumps)),
                max_size=12))
def test_ingest_session_answers_every_message(messages):
    """Whatever a client sends, each message gets replies that are valid protocol
    messages, and only whole 16-bit frames after a valid start reach the stream."""
    stream = Stream()
    session = IngestSession(IngestLimits(max_frame_bytes=256), lambda *a: stream, clock=lambda: 0.0)
    fed = 0
    for message in messages:
        if isinstance(message, str):
            replies = session.on_text(message)
        else:
            replies, utterances = session.on_binary(message)
            assert utterances == []
            if not replies:
                fed += len(message) // 2
                assert session.stream is not None and 0 < len(message) <= 256 and len(message) % 2 == 0
        for reply in replies:
            assert reply["type"] in ("started", "error")
            json.dumps(reply, allow_nan=False)
    assert stream.samples == fed


def test_deeply_nested_json_is_a_bad_json_error():
    session = IngestSession(IngestLimits(), lambda *a: Stream(), clock=lambda: 0.0)
    (reply,) = session.on_text("[" * 60000)
    assert reply["reason"] == "bad_json" and "nested too deeply" in reply["message"]


def test_pacing_limit_refuses_frames_ahead_of_real_time():
    now = [0.0]
    stream = Stream()
    session = IngestSession(IngestLimits(max_frame_bytes=32000, max_rate=1.0, burst_s=1.0),
                            lambda *a: stream, clock=lambda: now[0])
    assert session.on_text(json.dumps({"type": "start", "station": "k"}))[0]["type"] == "started"
    second = b"\x00\x00" * 16000
    assert session.on_binary(second) == ([], [])  # within the burst
    assert session.on_binary(second)[0][0]["reason"] == "rate_limited"
    now[0] = 1.0
    assert session.on_binary(second) == ([], [])  # a second later there is room again
    assert stream.samples == 32000


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3, allow_nan=False), st.booleans()), max_size=80),
       st.integers(1, 10))
def test_a_session_is_abusive_once_it_errs_too_often(steps, max_errors):
    """`abusive` is true exactly when more than `max_errors` refusals fall in the last
    10 s; good frames never count against a client."""
    now = [0.0]
    session = IngestSession(IngestLimits(max_rate=1000.0, burst_s=1000.0, max_errors=max_errors),
                            lambda *a: Stream(), clock=lambda: now[0])
    session.on_text(json.dumps({"type": "start", "station": "kiosk", "role": "customer"}))
    errors = []
    for wait, bad in steps:
        now[0] += wait
        if bad:
            session.on_binary(b"\x00")  # odd length: refused
            errors.append(now[0])
        else:
            assert session.on_binary(b"\x00\x00")[0] == []
        recent = [t for t in errors if t > now[0] - 10.0]
        if bad:  # the window is brought up to date by each refusal
            assert session.abusive == (len(recent) > max_errors)
