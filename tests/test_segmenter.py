import numpy as np
import pytest

from emoclap.segmenter import Segmenter, SegmenterOptions
from tests.speech import RATE, dialogue, say


@pytest.fixture(scope="module")
def conversation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    return dialogue([0.7, "Hello, I am looking for a warm winter jacket.", 1.2,
                     "How much is this one?", 0.9,
                     "That sounds good, I think I will take it.", 1.0], folder)


def segment_all(audio, options=None, chunk=None, station="s1"):
    seg = Segmenter(station, options)
    out = []
    step = chunk or audio.size
    for i in range(0, audio.size, step):
        out += seg.push(audio[i:i + step])
    return out + seg.flush(), seg


def test_onsets_and_offsets_match_known_timing(conversation):
    audio, spans = conversation
    opts = SegmenterOptions()
    segments, _ = segment_all(audio, opts)
    assert len(segments) == len(spans)
    pre, post = opts.pre_padding_ms / 1000, opts.post_padding_ms / 1000
    errors = []
    for segment, (onset, offset) in zip(segments, spans):
        on_err = segment.start + pre - onset
        off_err = segment.end - post - offset
        errors.append((on_err, off_err))
        assert segment.station == "s1"
        assert segment.audio.dtype == np.float32
        assert segment.audio.size == pytest.approx((segment.end - segment.start) * RATE, abs=1)
        start = int(round(segment.start * RATE))
        np.testing.assert_array_equal(segment.audio, audio[start:start + segment.audio.size])
    print("\nsegmenter onset/offset error (ms): " +
          ", ".join(f"{a * 1000:+.0f}/{b * 1000:+.0f}" for a, b in errors))
    assert max(abs(e) for pair in errors for e in pair) < 0.150, errors


def test_chunk_size_and_int16_do_not_change_the_result(conversation):
    audio, _ = conversation
    whole, _ = segment_all(audio)
    for chunk in (1, 161, 480, 4000):
        if chunk == 1:
            chunked, _ = segment_all(audio[: RATE * 2], chunk=7)
            reference, _ = segment_all(audio[: RATE * 2])
            assert [(s.start, s.end) for s in chunked] == [(s.start, s.end) for s in reference]
            continue
        chunked, _ = segment_all(audio, chunk=chunk)
        assert [(s.start, s.end) for s in chunked] == [(s.start, s.end) for s in whole]
    pcm = (audio * 32767).astype(np.int16)
    as_int, _ = segment_all(pcm)
    assert [(s.start, s.end) for s in as_int] == [(s.start, s.end) for s in whole]


def test_stations_keep_separate_state(conversation):
    audio, _ = conversation
    alone, _ = segment_all(audio, station="a")
    a, b = Segmenter("a"), Segmenter("b")
    got_a, got_b = [], []
    quiet = np.zeros_like(audio)
    for i in range(0, audio.size, 800):
        got_a += a.push(audio[i:i + 800])
        got_b += b.push(quiet[i:i + 800])
    got_a += a.flush()
    got_b += b.flush()
    assert got_b == []
    assert [(s.start, s.end) for s in got_a] == [(s.start, s.end) for s in alone]


def test_overlong_speech_is_cut(tmp_path):
    audio, _ = dialogue([0.5, "This is a rather long sentence that keeps going on and on, "
                         "without any pause at all, well beyond the longest utterance allowed.",
                         0.5], tmp_path)
    opts = SegmenterOptions(max_utterance_s=2.0, min_utterance_s=0.1)
    segments, seg = segment_all(audio, opts)
    assert seg.cut_long >= 2
    assert all(s.duration <= 2.0 + 1e-6 for s in segments)
    speech = sum(s.duration for s in segments)
    assert speech > 0.8 * (audio.size / RATE - 1.0)


def test_short_blips_are_dropped_and_counted(tmp_path):
    blip = say("a", tmp_path)[: int(0.2 * RATE)]
    audio = np.concatenate([np.zeros(RATE, np.float32), blip, np.zeros(RATE, np.float32)])
    segments, seg = segment_all(audio, SegmenterOptions(min_utterance_s=0.5))
    assert segments == [] and seg.dropped_short == 1


def test_flush_emits_the_utterance_in_progress(tmp_path):
    audio, spans = dialogue([0.5, "Could you show me the blue one?"], tmp_path)
    seg = Segmenter("s")
    assert seg.push(audio) == []
    tail = seg.flush()
    assert len(tail) == 1 and tail[0].end == pytest.approx(audio.size / RATE, abs=0.03)
    assert seg.flush() == []


def test_silence_gives_nothing_and_options_are_checked():
    segments, _ = segment_all(np.zeros(RATE * 3, np.float32))
    assert segments == []
    for bad in ({"frame_ms": 25}, {"aggressiveness": 4}, {"sample_rate": 44100},
                {"min_utterance_s": 5, "max_utterance_s": 2}, {"hangover_ms": -1}):
        with pytest.raises(ValueError):
            SegmenterOptions(**bad)


def test_pieces_cut_while_speaking_are_the_utterances_own_samples(tmp_path):
    """Every piece cut before an utterance ends lies inside it, sample for sample, however
    the audio arrives, and by the end only its last piece (or two) is left uncut."""
    from emoclap import pieces
    from emoclap.station import StationStream

    audio, _ = dialogue([0.6, "I will take it, can I pay by card? That one over there looks very nice indeed.",
                         1.2, "No, thank you.", 1.0, "Could you wrap it as a present for my sister please?", 1.0],
                        tmp_path)
    size = 8000
    seen = None
    for block in (160, 1600, 4801):
        stream = StationStream("s1", "customer", SegmenterOptions(), piece_samples=size)
        cut, utts = [], []
        for i in range(0, audio.size, block):
            utts += stream.feed(audio[i:i + block])
            cut += stream.take_pieces()
        utts += stream.finish()
        cut += stream.take_pieces()
        assert len(utts) == 3
        keys = {(u.station, u.t0, round(u.start, 4)): u for u in utts}
        for p in cut:
            u = keys[p.utterance_key]  # no piece of an utterance that never came
            np.testing.assert_array_equal(p.audio, u.audio[p.offset:p.offset + size])
            assert p.offset == p.index * size and p.audio.size == size
        for u in utts:
            own = sorted(p.index for p in cut if p.utterance_key == (u.station, u.t0, round(u.start, 4)))
            whole = sum(1 for s, e in pieces.bounds(u.audio.size, size) if e - s == size)
            assert own == list(range(len(own))) and whole - 1 <= len(own) <= whole
        got = [(p.index, p.offset, p.start, p.audio.tobytes()) for p in cut]
        assert seen is None or got == seen  # block size changes nothing
        seen = got
    assert len(seen) >= 4


def test_no_pieces_unless_asked(tmp_path):
    from emoclap.station import StationStream

    audio, _ = dialogue([0.5, "I will take it, can I pay by card? That one looks very nice.", 1.0], tmp_path)
    stream = StationStream("s1", "customer", SegmenterOptions())
    utts = stream.feed(audio) + stream.finish()
    assert stream.take_pieces() == [] and len(utts) == 1
