"""Stage messages (ZeroMQ frames) against hostile input, socket-free."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emoclap import wire
from emoclap.record import Utterance


def utterance(**kw):
    fields = dict(station="s", role="customer", seq=3, start=1.0, end=2.5, t0=1000.0, emitted=1003.0)
    fields.update(kw)
    return Utterance(**fields)


def test_segment_and_embedding_round_trip():
    audio = np.linspace(-1, 1, 480, dtype=np.float32)
    msg = wire.decode(wire.segment(utterance(audio=audio)))
    assert msg.kind == "segment" and (msg.utterance.station, msg.utterance.seq) == ("s", 3)
    np.testing.assert_array_equal(msg.utterance.audio, audio)
    emb = (np.ones(8) / np.sqrt(8)).astype(np.float32)
    for with_audio in (False, True):
        got = wire.decode(wire.embedding(utterance(audio=audio, embedding=emb, encoded=1004.0),
                                         with_audio)).utterance
        np.testing.assert_array_equal(got.embedding, emb)
        assert got.encoded == 1004.0 and got.time == 1002.5
        if with_audio:
            np.testing.assert_array_equal(got.audio, audio)
        else:
            assert got.audio is None
    status = wire.decode(wire.status({"states": {"s": "online"}}))
    assert status.kind == "status" and status.get("states") == {"s": "online"}


def test_refusals_name_the_problem():
    good = wire.segment(utterance(audio=np.zeros(16, np.float32)))
    head = json.loads(good[0])
    for bad, why in [([good[0]], "expected 2 frames"), ([b"{", b""], "bad header"),
                     ([b'{"v": 9, "kind": "segment"}', b""], "unsupported header version"),
                     ([b'{"v": 1, "kind": "noise"}', b""], "unknown kind"),
                     ([good[0], b"\x00\x00\x00"], "whole float32"),
                     ([json.dumps(dict(head, role="custmer")).encode(), b""], "role"),
                     ([json.dumps(dict(head, end=0.5)).encode(), b""], "before 'start'"),
                     ([json.dumps(dict(head, seq="3")).encode(), b""], "'seq'"),
                     ([good[0].replace(b'"t0":1000.0', b'"t0":1e999'), b""], "'t0'"),
                     ([good[0], np.array([np.nan], "<f4").tobytes()], "non-finite"),
                     ([json.dumps(dict(head, kind="embedding", dim=99)).encode(), good[1]], "'dim'"),
                     ([b'{"v": 1, "kind": "status"}', b"\x00" * 4], "no payload"),
                     ([b'{"v": 1, "kind": "status", "states": {"s": "asleep"}}', b""], "'states'"),
                     ([b'{"v": 1, "kind": "status", "dropped": [["s", "x", -1]]}', b""], "'dropped'"),
                     ([b'{"v": 1, "kind": "status", "gauges": {"q": "1"}}', b""], "'gauges'"),
                     ([b'{"v": 1, "kind": "status", "segmented": {"s": -2}}', b""], "'segmented'"),
                     ([b'{"v": 1, "kind": "status", "segmented": {"s": 1.5}}', b""], "'segmented'"),
                     ([b'{"v": 1, "kind": "status", "boast": 1}', b""], "unknown field")]:
        with pytest.raises(wire.WireError, match=why):
            wire.decode(bad)


SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
# quality: the four keys (sometimes one more or fewer) with any values; insufficient: any reason-like text
QUALITY = st.dictionaries(st.sampled_from(["duration_s", "level_dbfs", "clipped", "snr_db", "x"]), SCALARS,
                          min_size=3, max_size=5)
REASON = st.sampled_from(["too_short", "too_quiet", "clipped", "noisy", "", "Noisy"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=3),
       st.dictionaries(st.sampled_from(["v", "kind", "station", "role", "seq", "start", "end", "t0",
                                        "emitted", "dim", "text_dim", "transcript", "quality",
                                        "insufficient"]),
                       SCALARS | QUALITY | REASON),
       st.binary(max_size=64))
def test_any_frames_decode_or_raise_wire_error(frames, header, payload):
    for candidate in (frames, [json.dumps(header).encode(), payload],
                      [json.dumps(dict(header, v=1)).encode(), payload]):
        try:
            msg = wire.decode(candidate)
        except wire.WireError:
            continue
        assert msg.kind in wire.KINDS
        if msg.utterance is not None:
            u = msg.utterance
            assert u.end >= u.start and np.isfinite([u.start, u.end, u.t0]).all()
            assert u.insufficient in (None, "too_short", "too_quiet", "clipped", "noisy")
            assert u.quality is None or np.isfinite(list(u.quality.values())).all()


@settings(max_examples=300, deadline=None)
@given(SCALARS | QUALITY | st.lists(SCALARS, max_size=2), SCALARS | REASON)
def test_hostile_quality_fields_are_refused_by_name(quality, insufficient):
    head = json.loads(wire.segment(utterance(audio=np.zeros(4, np.float32)))[0])
    head.update(quality=quality, insufficient=insufficient)
    try:
        u = wire.decode([json.dumps(head).encode(), b""]).utterance  # NaN and Infinity included
    except wire.WireError as exc:
        assert "field 'quality" in str(exc) or "field 'insufficient'" in str(exc), exc
        return
    assert u.insufficient in (None, "too_short", "too_quiet", "clipped", "noisy")
    assert u.quality is None or (set(u.quality) == {"duration_s", "level_dbfs", "clipped", "snr_db"}
                                 and np.isfinite(list(u.quality.values())).all())


def test_the_text_path_travels_with_the_embedding_and_the_transcript_only_when_asked():
    audio = np.linspace(-1, 1, 480, dtype=np.float32)
    emb, text = np.full(8, 1 / np.sqrt(8), np.float32), np.full(4, 0.5, np.float32)
    utt = utterance(audio=audio, embedding=emb, text_embedding=text, transcript="I'll take it.")
    for with_audio in (False, True):
        for with_transcript in (False, True):
            got = wire.decode(wire.embedding(utt, with_audio, with_transcript)).utterance
            np.testing.assert_array_equal(got.embedding, emb)
            np.testing.assert_array_equal(got.text_embedding, text)
            assert got.transcript == ("I'll take it." if with_transcript else None)
            assert (got.audio is not None) == with_audio
    plain = wire.decode(wire.embedding(utterance(embedding=emb))).utterance
    assert plain.text_embedding is None and plain.transcript is None


@settings(max_examples=200, deadline=None)
@given(st.integers(-3, 40) | st.booleans() | st.none() | st.text(max_size=3),
       st.none() | st.text(max_size=20) | st.integers() | st.lists(st.text(max_size=2), max_size=2))
def test_hostile_text_path_fields_are_refused_by_name(text_dim, transcript):
    good = wire.embedding(utterance(embedding=np.full(8, 0.1, np.float32), text_embedding=np.full(4, 0.2, np.float32)))
    head = json.loads(good[0])
    head["text_dim"], head["transcript"] = text_dim, transcript
    try:
        u = wire.decode([json.dumps(head).encode(), good[1]]).utterance
    except wire.WireError as exc:
        assert "text_dim" in str(exc) or "transcript" in str(exc)
        return
    assert u.embedding.size + (0 if u.text_embedding is None else u.text_embedding.size) <= 12
    assert u.transcript is None or isinstance(u.transcript, str)


COUNTS = st.dictionaries(st.text(max_size=4), SCALARS | st.integers(-3, 2**54), max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["states", "dropped", "overflows", "segmented", "gauges", "batches"]),
                       COUNTS | st.lists(st.lists(SCALARS | st.integers(-3, 5), max_size=3), max_size=3) | SCALARS))
def test_hostile_status_messages_decode_or_raise_and_never_break_the_metrics(header):
    """A status message from any edge: refused by name, or every count it carries is a
    whole number the metrics can add (the accounting never goes backwards)."""
    from daemon.metrics import Metrics

    try:
        msg = wire.decode([json.dumps(dict(header, v=1, kind="status")).encode(), b""])
    except wire.WireError:
        return
    metrics = Metrics()
    metrics.record_status(msg.header)
    assert metrics.accounting()["segmented"] == sum(header.get("segmented", {}).values())
    assert all(n >= 0 for n in metrics.accounting()["dropped"].values())


def test_stage_spans_travel_with_the_utterance():
    spans = {"to_encoder": 0.002, "queue": 0.021, "encode": 0.05, "decode": 0.2}
    got = wire.decode(wire.embedding(utterance(embedding=np.ones(4, np.float32) / 2, encoded=1004.0,
                                               spans=spans))).utterance
    assert got.spans == pytest.approx(spans)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["encode", "queue", "nope", ""]) | st.text(max_size=4),
                       SCALARS | st.floats(allow_nan=True) | st.lists(SCALARS, max_size=2), max_size=4)
       | SCALARS | st.lists(SCALARS, max_size=2))
def test_hostile_stage_spans_are_refused_by_name(spans):
    head = json.loads(wire.segment(utterance(audio=np.zeros(4, np.float32)))[0])
    head["spans"] = spans
    try:
        u = wire.decode([json.dumps(head).encode(), b""]).utterance  # NaN and Infinity included
    except wire.WireError as exc:
        assert "field 'spans'" in str(exc), exc
        return
    from emoclap.latency import MAX_SPAN_S, STAGES
    assert set(u.spans) <= set(STAGES) and all(0 <= v <= MAX_SPAN_S for v in u.spans.values())


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["segment", "speech", "embedding", "status", "eos"]),
       st.lists(st.floats(-1, 1, width=32), max_size=50), st.integers(1, 10_000))
def test_a_message_handed_over_in_process_frames_to_what_a_socket_would_carry(kind, samples, seq):
    audio = np.array(samples, np.float32)
    utt = utterance(seq=seq, audio=audio, embedding=np.ones(4, np.float32) / 2)
    msg = wire.Message(kind, {"states": {"s": "online"}} if kind == "status" else {},
                       None if kind in ("status", "eos") else utt)
    back = wire.decode(wire.encode(msg, with_audio=True))
    assert back.kind == kind
    if kind == "status":
        assert back.header == msg.header
    elif kind != "eos":
        assert (back.utterance.station, back.utterance.seq, back.utterance.time) == ("s", seq, utt.time)
        if kind == "segment":
            np.testing.assert_array_equal(back.utterance.audio, audio)
        if kind == "speech":
            assert back.utterance.audio is None


def test_an_unknown_kind_is_not_framed():
    with pytest.raises(wire.WireError, match="unknown kind"):
        wire.encode(wire.Message("gossip"))


def a_piece(**kw):
    from emoclap.record import Piece

    fields = dict(station="s", role="customer", t0=1000.0, start=1.23456, index=2, offset=32000,
                  audio=np.linspace(-0.5, 0.5, 16000, dtype=np.float32))
    fields.update(kw)
    return Piece(**fields)


def test_a_piece_round_trips_and_names_its_utterance():
    p = a_piece()
    got = wire.decode(wire.piece(p)).piece
    assert (got.station, got.role, got.t0, got.index, got.offset) == ("s", "customer", 1000.0, 2, 32000)
    np.testing.assert_array_equal(got.audio, p.audio)
    # The key its utterance carries through the fleet: start as the utterance header rounds it.
    utt = wire.decode(wire.segment(utterance(start=1.23456, end=3.0, t0=1000.0, audio=np.zeros(8, np.float32))))
    from emoclap.record import piece_key
    assert got.utterance_key == piece_key(utt.utterance.station, utt.utterance.t0, utt.utterance.start)


PIECE_FIELDS = st.dictionaries(
    st.sampled_from(["station", "role", "t0", "start", "index", "offset", "extra"]),
    st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
              st.text(max_size=8), st.sampled_from(["customer", "staff", "auto"])), max_size=7)


@settings(max_examples=300, deadline=None)
@given(fields=PIECE_FIELDS, samples=st.integers(0, 40), bad=st.sampled_from([None, "nan", "inf"]))
def test_hostile_pieces_are_refused_by_name_or_valid(fields, samples, bad):
    payload = np.zeros(samples, np.float32)
    if bad and samples:
        payload[0] = float(bad)
    head = json.dumps(dict(fields, v=wire.VERSION, kind="piece"), allow_nan=True).encode()
    try:
        msg = wire.decode([head, payload.tobytes()])
    except wire.WireError as exc:
        assert str(exc).startswith("piece:") or "header" in str(exc)
        return
    p = msg.piece
    assert p.station and p.role in ("customer", "staff", "auto") and 0 <= p.index and 0 <= p.offset
    assert 0 < p.audio.size and np.isfinite(p.audio).all() and np.isfinite([p.t0, p.start]).all()


@settings(max_examples=100, deadline=None)
@given(pieces=st.one_of(st.none(), st.lists(st.one_of(st.integers(-3, 5000), st.booleans(), st.floats()), max_size=3),
                        st.text(max_size=3)))
def test_an_utterances_piece_count_is_checked(pieces):
    head = json.loads(wire.embedding(utterance(embedding=np.ones(4, np.float32) / 2))[0])
    if pieces is not None:
        head["pieces"] = pieces
    frames = [json.dumps(head).encode(), (np.ones(4, np.float32) / 2).tobytes()]
    try:
        got = wire.decode(frames).utterance
    except wire.WireError as exc:
        assert "pieces" in str(exc)
        return
    assert got.pieces is None or (0 <= got.pieces[0] <= got.pieces[1] <= 4096)
