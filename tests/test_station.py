"""A station's stream (resampling + segmenter + numbering), socket-free."""
import numpy as np
import soxr

from emoclap.segmenter import SegmenterOptions
from emoclap.station import StationStream
from tests.speech import dialogue


def test_streams_keep_stations_apart(tmp_path):
    """Two stations fed alternately in small chunks: each one's utterances are its own."""
    a, a_spans = dialogue([0.5, "Good morning.", 2.5, "How much is it?", 1.0], tmp_path)
    b, b_spans = dialogue([2.0, "I think I will take it.", 2.0], tmp_path)
    n = max(a.size, b.size)
    a, b = np.pad(a, (0, n - a.size)), np.pad(b, (0, n - b.size))
    streams = {name: StationStream(name, "auto", SegmenterOptions(), clock=lambda: 100.0) for name in "ab"}
    got = {"a": [], "b": []}
    for i in range(0, n, 480):
        got["a"] += streams["a"].feed(a[i:i + 480])
        got["b"] += streams["b"].feed(b[i:i + 480])
    for name, stream in streams.items():
        got[name] += stream.finish()
    for name, spans in (("a", a_spans), ("b", b_spans)):
        assert [u.seq for u in got[name]] == list(range(1, len(spans) + 1))
        assert len(got[name]) == len(spans), (name, got[name], spans)
        for utt, (on, off) in zip(got[name], spans):
            assert utt.station == name and utt.t0 == 100.0
            assert utt.start <= on + 0.1 and off - 0.3 <= utt.end <= off + 0.7
            assert utt.audio.size == round(utt.duration * 16000)


def test_resampled_input_finds_the_same_utterances(tmp_path):
    audio, spans = dialogue([0.5, "Could I see that jacket, please?", 1.0, "How much is it?", 0.8], tmp_path)
    low = soxr.resample(audio, 16000, 8000).astype(np.float32)
    pcm = (low * 32767).astype("<i2")
    stream = StationStream("s", "customer", SegmenterOptions(), input_rate=8000)
    utts = []
    for i in range(0, pcm.size, 800):  # 100 ms int16 frames, as /ingest sends them
        utts += stream.feed(pcm[i:i + 800])
    utts += stream.finish()
    assert len(utts) == len(spans)
    for utt, (on, off) in zip(utts, spans):
        assert abs(utt.start + 0.2 - on) < 0.15 and abs(utt.end - 0.2 - off) < 0.2


def test_restart_keeps_numbering_and_reports_short_spans(tmp_path):
    click = np.zeros(16000, np.float32)
    speech, _ = dialogue([0.3, "Yes.", 0.5], tmp_path)
    stream = StationStream("s", "staff", SegmenterOptions(min_utterance_s=2.0))
    assert stream.feed(speech) + stream.restart() == []  # too short: dropped, counted
    assert stream.feed(click) == [] and stream.take_too_short() == 1 and stream.take_too_short() == 0
