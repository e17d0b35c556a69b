"""Abstain: utterances too short, too quiet, clipped or noisy are flagged `insufficient`,
scored and sent, but kept out of rolling scores and visits (emoclap.quality)."""
import asyncio
import csv
import io
import json
import math
import sqlite3
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from daemon import cli
from daemon.config import ConfigError, parse_config
from daemon.history import History, export
from emoclap import wire
from emoclap.audio import write_wav
from emoclap.quality import REASONS, SNR_RANGE, Quality, QualityOptions, measure
from emoclap.record import Utterance
from emoclap.scorer import Scorer
from emoclap.segmenter import SegmenterOptions
from emoclap.station import StationStream
from emoclap.visits import Visits
from emoclap.zeroshot import BankVectors
from tests.servicekit import push, receive, service_config, url, with_service
from tests.speech import RATE, say

REPO = Path(__file__).resolve().parent.parent
SENTENCE = "I am looking for a warm winter coat for hiking."


def power(x):
    return float(np.mean(np.square(x, dtype=np.float64)))


def stream_quality(audio, **options):
    """Every utterance a default station cuts from `audio` (fed in 20 ms blocks)."""
    stream = StationStream("s", "customer", SegmenterOptions(), clock=lambda: 0.0,
                           quality=QualityOptions(**options))
    out = []
    for i in range(0, audio.size, 320):
        out += stream.feed(audio[i:i + 320])
    return out + stream.finish()


@pytest.fixture(scope="module")
def sentence(tmp_path_factory):
    clip = say(SENTENCE, tmp_path_factory.mktemp("q")).astype(np.float64)
    return clip * np.sqrt(0.01 / power(clip))  # -20 dBFS


def in_noise(clip, noise, snr_db, lead_s=1.5, tail_s=1.0):
    """`clip` between stretches of noise; the noise runs under the speech too, at `snr_db`."""
    pad = np.zeros(int(lead_s * RATE)), np.zeros(int(tail_s * RATE))
    speech = np.concatenate([pad[0], clip, pad[1]])
    noise = noise[:speech.size] * np.sqrt(power(clip) / 10 ** (snr_db / 10) / power(noise[:speech.size]))
    return (speech + noise).astype(np.float32)


def pink(n, rng):
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[1:] /= np.sqrt(np.arange(1, spectrum.size))
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n)


# ---- the estimator on synthesised speech

@pytest.mark.parametrize("kind", ["white", "pink"])
def test_snr_estimate_tracks_true_snr(sentence, kind):
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(sentence.size + 3 * RATE) if kind == "white" else pink(sentence.size + 3 * RATE, rng)
    # bench/quality_snr.py: white within 0.3 dB from 10 dB up; pink within 0.7 dB from 15 dB
    # up (at 10 dB the VAD takes some pink noise for speech and the estimate reads up to 3 dB low)
    for snr in (10, 20, 30) if kind == "white" else (15, 20, 30):
        [utt] = stream_quality(in_noise(sentence, noise, snr))
        assert utt.quality["snr_db"] == pytest.approx(snr, abs=1.5), (kind, snr, utt.quality)
        assert utt.insufficient is None or snr == 10  # at min_snr_db itself: either side
    found = stream_quality(in_noise(sentence, noise, 0))
    assert found and all(u.insufficient == "noisy" for u in found)


def test_clean_speech_level_duration_and_no_flag(sentence):
    lead = np.zeros(RATE // 2)
    [utt] = stream_quality(np.concatenate([lead, sentence, lead]).astype(np.float32))
    q = utt.quality
    assert q["snr_db"] == SNR_RANGE[1]  # digital silence around it: no noise at all
    assert q["level_dbfs"] == pytest.approx(-20.0, abs=1.5) and q["clipped"] == 0.0  # scaled to -20 dBFS
    # speech from the first to the last voiced frame (30 ms frames; webrtcvad lingers a
    # little after the speech), without the 0.2 s paddings
    assert q["duration_s"] == pytest.approx(sentence.size / RATE, abs=0.2)
    assert utt.duration == pytest.approx(q["duration_s"] + 0.4, abs=0.07)
    assert utt.insufficient is None


def test_gain_moves_the_level_and_too_quiet_flags(sentence):
    lead = np.zeros(RATE // 2)
    levels = {}
    for gain_db in (0, -20, -40):
        clip = np.concatenate([lead, sentence * 10 ** (gain_db / 20), lead])
        pcm = np.round(clip * 32767).astype(np.int16)  # what a sound card delivers
        found = stream_quality(pcm.astype(np.float32) / 32768)
        assert found, gain_db
        levels[gain_db] = found[0].quality["level_dbfs"]
        assert found[0].insufficient == ("too_quiet" if gain_db == -40 else None), found[0].quality
    assert levels[0] - levels[-20] == pytest.approx(20, abs=1.0)


def test_clipping_is_measured_before_any_gain(sentence):
    peak = sentence / np.abs(sentence).max()
    lead = np.zeros(RATE // 2)
    for gain_db, want in ((0, None), (10, "clipped")):
        clip = np.clip(peak * 10 ** (gain_db / 20), -1, 32767 / 32768)
        [utt] = stream_quality(np.concatenate([lead, clip, lead]).astype(np.float32))
        assert utt.insufficient == want, utt.quality
        # bench/quality_snr.py: +10 dB over the peak clips about 5 % of the samples
        assert (utt.quality["clipped"] > 0.02) == (want == "clipped")


def test_short_word_is_too_short(tmp_path):
    word = say("Yes.", tmp_path)
    [utt] = stream_quality(np.concatenate([np.zeros(RATE // 2), word, np.zeros(RATE // 2)]).astype(np.float32))
    assert utt.quality["duration_s"] < 0.5 and utt.insufficient == "too_short"
    [again] = stream_quality(np.concatenate([np.zeros(RATE // 2), word, np.zeros(RATE // 2)]).astype(np.float32),
                             min_duration_s=0.1)
    assert again.insufficient is None and again.quality == utt.quality
    [off] = stream_quality(np.concatenate([np.zeros(RATE // 2), word, np.zeros(RATE // 2)]).astype(np.float32),
                           enabled=False)
    assert off.insufficient is None and off.quality == utt.quality  # measured, never flagged


def test_floor_from_the_padding_when_the_station_knows_nothing(sentence):
    """Noise from the very first sample: the station has heard too little non-speech, so
    the utterance's own padding is used; with no non-speech at all, its quietest frames."""
    noise = np.random.default_rng(2).standard_normal(sentence.size + RATE)
    audio = in_noise(sentence, noise, 20, lead_s=0.25, tail_s=0.5)
    [utt] = stream_quality(audio)
    assert utt.quality["snr_db"] == pytest.approx(20, abs=3.0)
    everything_voiced = measure(audio, np.ones(audio.size // 480, bool))
    assert math.isfinite(everything_voiced.snr_db) and everything_voiced.snr_db < 30


def test_verdict_order_and_thresholds():
    opts = QualityOptions()
    bad = Quality(duration_s=0.1, level_dbfs=-80.0, clipped=0.5, snr_db=-5.0)
    assert opts.verdict(bad) == "too_short"
    assert opts.verdict(Quality(1.0, -80.0, 0.5, -5.0)) == "too_quiet"
    assert opts.verdict(Quality(1.0, -20.0, 0.5, -5.0)) == "clipped"
    assert opts.verdict(Quality(1.0, -20.0, 0.0, -5.0)) == "noisy"
    at_limits = Quality(opts.min_duration_s, opts.min_level_dbfs, opts.max_clipped, opts.min_snr_db)
    assert opts.verdict(at_limits) is None
    assert QualityOptions(enabled=False).verdict(bad) is None
    assert REASONS == ("too_short", "too_quiet", "clipped", "noisy")


# ---- hostile inputs

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hnp.arrays(np.float32, st.integers(0, 3000),
                  elements=st.floats(-8, 8, width=32) | st.sampled_from([0.0, 1.0, -1.0, 0.99])),
       st.none() | st.lists(st.booleans(), max_size=12),
       st.none() | st.lists(st.floats(0, 1e6, width=32), max_size=30),
       st.integers(1, 960))
def test_measure_any_audio_never_raises(audio, voiced, noise, frame):
    q = measure(audio, None if voiced is None else np.array(voiced, bool),
                None if noise is None else np.array(noise, np.float32), frame)
    values = [q.duration_s, q.level_dbfs, q.clipped, q.snr_db]
    assert all(math.isfinite(v) for v in values)
    assert 0 <= q.duration_s <= audio.size / RATE and 0 <= q.clipped <= 1
    assert SNR_RANGE[0] <= q.snr_db <= SNR_RANGE[1] and q.level_dbfs >= -100
    assert QualityOptions().verdict(q) in (None, *REASONS)


@st.composite
def sounds(draw):
    """Silence, full-scale square waves, tones and noise bursts, in any order."""
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        n = draw(st.integers(0, RATE))
        kind = draw(st.sampled_from(["silence", "square", "tone", "noise"]))
        amp = draw(st.sampled_from([1.0, 0.5, 1e-4, 3.0]))
        t = np.arange(n) / RATE
        f = draw(st.sampled_from([110.0, 220.0, 1000.0]))
        parts.append({"silence": np.zeros(n), "square": amp * np.sign(np.sin(2 * np.pi * f * t)),
                      "tone": amp * np.sin(2 * np.pi * f * t),
                      "noise": amp * np.random.default_rng(n).uniform(-1, 1, n)}[kind])
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sounds(), st.integers(1, 4000))
def test_station_on_any_sound_gives_valid_quality(audio, chunk):
    stream = StationStream("s", "customer", SegmenterOptions(), clock=lambda: 0.0)
    utts = []
    for i in range(0, audio.size, chunk):
        utts += stream.feed(audio[i:i + chunk])
    utts += stream.finish()
    for u in utts:
        assert set(u.quality) == {"duration_s", "level_dbfs", "clipped", "snr_db"}
        assert all(math.isfinite(v) for v in u.quality.values()) and u.insufficient in (None, *REASONS)
        back = wire.decode(wire.segment(u)).utterance  # what the next stage gets
        assert (back.quality, back.insufficient) == (u.quality, u.insufficient)


def test_full_scale_square_wave_is_clipped():
    t = np.arange(2 * RATE) / RATE
    square = np.sign(np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    q = measure(square)
    assert q.clipped > 0.99 and q.level_dbfs == pytest.approx(0.0, abs=0.1)
    assert QualityOptions().verdict(q) == "clipped"
    assert measure(np.zeros(0, np.float32)) == Quality(0.0, -100.0, 0.0, SNR_RANGE[0])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["enabled", "min_duration_s", "min_level_dbfs", "max_clipped",
                                        "min_snr_db", "other"]),
                       st.booleans() | st.integers(-1000, 1000) | st.floats() | st.text("ab x", max_size=4)))
def test_quality_section_is_checked_key_by_key(table):
    text = "[quality]\n" + "".join(f"{k} = {json.dumps(v) if not isinstance(v, float) else _toml(v)}\n"
                                   for k, v in table.items())
    try:
        cfg = parse_config(text)
    except ConfigError as exc:
        assert str(exc).startswith("config.toml: quality"), exc
        bad = str(exc).split(":")[1].strip()
        assert bad.split(".")[-1] in table or bad == "quality", exc
        return
    q = cfg.quality
    assert isinstance(q.enabled, bool) and 0 <= q.max_clipped <= 1 and math.isfinite(q.min_snr_db)


def _toml(v: float) -> str:
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)


def test_config_defaults_and_errors_name_the_key():
    assert parse_config("").quality == QualityOptions()
    assert parse_config("[quality]\nmin_snr_db = 12\nenabled = false\n").quality == QualityOptions(
        enabled=False, min_snr_db=12.0)
    for text, message in [("max_clipped = 2", "quality.max_clipped: expected a number from 0 to 1"),
                          ("min_snr_db = nan", "quality.min_snr_db: expected a finite number"),
                          ("min_level_dbfs = 3", "quality.min_level_dbfs: expected a number from -100"),
                          ("enabled = 1", "quality.enabled: expected boolean"),
                          ("min_duration = 1", "quality.min_duration: unknown key")]:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            parse_config(f"[quality]\n{text}\n")


# ---- kept out of rolling scores and visits

def bank():
    neg = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    pos = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    return BankVectors(("pleasant", "purchase_intention"), neg, pos, np.array([10.0, 10.0], np.float32),
                       np.zeros(2, np.float32), (None, ("customer",)))


def test_insufficient_is_scored_and_sent_but_not_rolled():
    scorer = Scorer(bank(), half_life_s=60)
    quality = {"duration_s": 1.2, "level_dbfs": -30.0, "clipped": 0.0, "snr_db": 2.5}
    good = Utterance("s", "customer", 1, 0.0, 1.5, 1000.0, 1001.5, embedding=np.array([1.0, 0, 0], np.float32),
                     quality=dict(quality, snr_db=25.0))
    first = scorer.score(good).event()
    assert first["insufficient"] is None and first["quality"]["snr_db"] == 25.0
    noisy = Utterance("s", "customer", 2, 2.0, 3.5, 1000.0, 1003.5, embedding=np.array([0, 0, 1.0], np.float32),
                      quality=quality, insufficient="noisy")
    event = scorer.score(noisy).event()
    assert event["insufficient"] == "noisy" and event["quality"] == quality
    assert set(event["scores"]) == {"pleasant", "purchase_intention"}
    assert event["scores"] != first["scores"]  # computed for this utterance
    assert event["rolling"] == first["rolling"]  # the rolling state, unchanged
    assert scorer.snapshots()["s"]["customer"]["pleasant"]["count"] == 1
    third = scorer.score(Utterance("s", "customer", 3, 4.0, 5.5, 1000.0, 1005.5,
                                   embedding=np.array([1.0, 0, 0], np.float32))).event()
    assert third["rolling"]["pleasant"]["count"] == 2
    # a station whose first utterance is insufficient has no rolling score yet
    assert Scorer(bank(), 60).score(noisy).event()["rolling"] == {}


def event(t, insufficient=None, role="customer", score=0.5, duration=2.0):
    return {"type": "utterance", "station": "s1", "role": role, "time": t, "duration": duration,
            "scores": {"purchase_intention": score}, "insufficient": insufficient}


def test_visits_leave_insufficient_out_of_count_and_trajectory():
    v = Visits(end_after_s=90)
    assert v.observe(event(1000.0, "too_short")) == (None, [])  # opens nothing
    vid, [opened] = v.observe(event(1010.0, score=0.2))
    _, [upd] = v.observe(event(1020.0, "noisy", score=0.99, duration=4.0))
    assert upd["utterances"] == 1 and upd["purchase_intention"] == opened["purchase_intention"]
    assert upd["talk_share"] == 1.0  # still customer speech
    _, [upd] = v.observe({"type": "speech", "station": "s1", "role": "staff", "time": 1030.0, "duration": 6.0})
    assert upd["talk_share"] == pytest.approx(6 / 12, abs=1e-4)  # 2 + 4 s customer of 12 s speech
    _, [upd] = v.observe(event(1040.0, score=0.6))
    assert upd["utterances"] == 2 and upd["purchase_intention"]["count"] == 2
    assert upd["purchase_intention"]["max"] == 0.6 and upd["talk_share"] == pytest.approx(8 / 14, abs=1e-4)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0, 5.0, 40.0, 95.0]), st.sampled_from(["customer", "staff"]),
                          st.none() | st.sampled_from(REASONS), st.floats(0, 1), st.sampled_from([0.0, 0.4, 3.0])),
                max_size=40))
def test_insufficient_counts_in_visits_as_staff_speech_does_except_talk_share(steps):
    """For any sequence: visits with insufficient customer utterances equal visits where
    those were staff speech, in everything but talk share."""
    flagged, as_staff, t = Visits(end_after_s=90), Visits(end_after_s=90), 0.0
    got, want = [], []
    for gap, role, reason, score, duration in steps:
        t += gap + duration
        e = event(t, reason if role == "customer" else None, role, score, duration)
        got += flagged.observe(e)[1] + flagged.tick(t)
        staff = dict(e, role="staff", insufficient=None) if e["insufficient"] else e
        want += as_staff.observe(staff)[1] + as_staff.tick(t)
    got, want = got + flagged.close_all(), want + as_staff.close_all()
    strip = lambda events: [{k: v for k, v in e.items() if k != "talk_share"} for e in events]  # noqa: E731
    assert strip(got) == strip(want)


# ---- across the wire, the history and the command line

def test_header_round_trip_and_hostile_fields():
    q = {"duration_s": 0.42, "level_dbfs": -31.5, "clipped": 0.0, "snr_db": 23.3}
    u = Utterance("s", "customer", 1, 0.0, 1.0, 1000.0, 1001.0, audio=np.zeros(16, np.float32),
                  quality=q, insufficient="too_short")
    back = wire.decode(wire.segment(u)).utterance
    assert back.quality == q and back.insufficient == "too_short"
    old = wire.decode(wire.segment(Utterance("s", "customer", 1, 0.0, 1.0, 1000.0, 1001.0))).utterance
    assert old.quality is None and old.insufficient is None  # a stage that does not measure
    head = json.loads(wire.segment(u)[0])
    for change, field in [({"insufficient": "loud"}, "'insufficient'"), ({"insufficient": 1}, "'insufficient'"),
                          ({"quality": [1]}, "'quality'"), ({"quality": dict(q, extra=1)}, "'quality'"),
                          ({"quality": dict(q, snr_db="3")}, "'quality.snr_db'"),
                          ({"quality": dict(q, clipped=True)}, "'quality.clipped'"),
                          ({"quality": dict(q, clipped=1.5)}, "'quality.clipped'"),
                          ({"quality": dict(q, duration_s=-1)}, "'quality.duration_s'")]:
        with pytest.raises(wire.WireError, match=field):
            wire.decode([json.dumps(dict(head, **change)).encode(), b""])
    for literal in (b"NaN", b"Infinity", b"1e999"):  # JSON that Python reads as non-finite
        frame = json.dumps(dict(head, quality=dict(q, level_dbfs=0))).encode().replace(b'"level_dbfs": 0',
                                                                                        b'"level_dbfs": ' + literal)
        with pytest.raises(wire.WireError, match="'quality.level_dbfs'"):
            wire.decode([frame, b""])


def test_history_columns_migration_and_csv(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as old:  # the schema before quality was measured
        old.executescript("CREATE TABLE utterances (id INTEGER PRIMARY KEY, time REAL NOT NULL, "
                          "station TEXT NOT NULL, role TEXT NOT NULL, event TEXT NOT NULL, audio BLOB);")
        old.execute("INSERT INTO utterances (time, station, role, event) VALUES (1, 's', 'customer', ?)",
                    (json.dumps({"type": "utterance", "station": "s", "role": "customer", "seq": 1, "start": 0.0,
                                 "end": 1.0, "duration": 1.0, "time": 1.0, "scores": {"pleasant": 0.5}}),))
    h = History(db)
    q = {"duration_s": 0.9, "level_dbfs": -62.0, "clipped": 0.0, "snr_db": 12.0}
    h.write({"type": "utterance", "station": "s", "role": "customer", "seq": 2, "start": 1.0, "end": 2.0,
             "duration": 1.0, "time": 2.0, "scores": {"pleasant": 0.25}, "insufficient": "too_quiet", "quality": q})
    rows = h.db.execute("SELECT insufficient, quality FROM utterances ORDER BY id").fetchall()
    assert rows == [(None, None), ("too_quiet", json.dumps(q, separators=(",", ":")))]
    h.close()
    History(db).close()  # opening again adds nothing twice
    buf = io.StringIO()
    export(History(db).events(), buf, "csv")
    old_row, new_row = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert old_row["insufficient"] == "" and old_row["quality_snr_db"] == ""
    assert new_row["insufficient"] == "too_quiet" and float(new_row["quality_level_dbfs"]) == -62.0
    assert new_row["pleasant"] == "0.2500"


def test_score_cli_flags_the_noisy_utterance_in_csv(tmp_path, tiny_bundle, capsys):
    """One clean sentence, then one buried in white noise (0 dB SNR) that runs to the end."""
    clean = say("Good morning, I would like to see the coats.", tmp_path).astype(np.float64)
    noisy = say("Could you tell me how long the battery lasts?", tmp_path).astype(np.float64)
    gap = np.zeros(RATE)
    noise = np.random.default_rng(3).standard_normal(2 * RATE + noisy.size) * np.sqrt(power(noisy))
    tail = np.concatenate([np.zeros(RATE), noisy, np.zeros(RATE)]) + noise
    path = tmp_path / "two.wav"
    write_wav(path, np.concatenate([gap, clean, gap, tail]).astype(np.float32), RATE)
    (tmp_path / "config.toml").write_text("[quality]\nmin_snr_db = 10\n")
    code = cli.main(["score", str(path), "--bundle", str(tiny_bundle), "--prompts", str(REPO / "prompts"),
                     "--cache", "", "--role", "customer", "--format", "csv",
                     "--config", str(tmp_path / "config.toml")])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    first, rest = rows[0], rows[1:]
    assert first["insufficient"] == "" and float(first["quality_snr_db"]) > 30
    assert float(first["start"]) < 1.0 < float(first["end"]) < 1.0 + clean.size / RATE + 0.5
    assert rest and all(r["insufficient"] == "noisy" and float(r["quality_snr_db"]) < 10 for r in rest)
    assert all(0 <= float(r["purchase_intention"]) <= 1 for r in rows)  # scored all the same


def test_service_sends_counts_and_stores_insufficient(tmp_path, tiny_bundle):
    cfg = service_config(tmp_path, tiny_bundle)
    dim = 16
    rng = np.random.default_rng(0)
    t0 = time.time()
    q = {"duration_s": 1.4, "level_dbfs": -25.0, "clipped": 0.0, "snr_db": 3.0}

    def messages():
        for seq, reason in enumerate([None, "noisy", None], 1):
            v = rng.normal(size=dim).astype(np.float32)
            yield wire.embedding(Utterance("s1", "customer", seq, seq * 2.0, seq * 2.0 + 1.5, t0, time.time(),
                                           embedding=v / np.linalg.norm(v), quality=q, insufficient=reason))

    async def body(svc):
        async with websockets.connect(url(svc, "/ws")) as ws:
            await receive(ws, "hello", 1)
            await asyncio.to_thread(push, svc, messages())
            got = await receive(ws, "utterance", 3)
        port = svc.parts.server.port
        metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
        rows = svc.parts.history.db.execute("SELECT insufficient FROM utterances ORDER BY id").fetchall()
        return got, metrics, rows

    got, metrics, rows = with_service(cfg, body)
    assert [e["insufficient"] for e in got] == [None, "noisy", None]
    assert all(e["quality"] == q and e["scores"] for e in got)
    assert got[1]["rolling"] == got[0]["rolling"]
    assert got[2]["rolling"]["pleasant"]["count"] == 2
    assert 'emoclap_insufficient_total{reason="noisy",station="s1"} 1.0' in metrics
    assert rows == [(None,), ("noisy",), (None,)]


def test_reload_applies_new_thresholds_to_running_ingest_stations(tmp_path, tiny_bundle):
    """An /ingest station opened before a reload cuts its next utterance with the new
    thresholds (each stream swaps its frozen options whole)."""
    from daemon.config import load_config
    from daemon.service import Service

    path = tmp_path / "config.toml"
    path.write_text(f'bundle = "{tiny_bundle}"\nprompts = "{REPO / "prompts"}"\ncache = "c.sqlite3"\n'
                    '[server]\nport = 0\n[history]\npath = "h.sqlite3"\n[quality]\nmin_duration_s = 0.5\n')
    clip = np.concatenate([np.zeros(RATE // 2), say(SENTENCE, tmp_path), np.zeros(RATE)])
    pcm = (np.clip(clip, -1, 1) * 32767).astype("<i2").tobytes()

    async def main():
        svc = Service(load_config(path), ("encode", "serve"), config_path=str(path))
        await svc.start()
        try:
            async with websockets.connect(url(svc, "/ws")) as watcher:
                await receive(watcher, "hello", 1)
                async with websockets.connect(url(svc, "/ingest")) as ing:
                    await ing.send(json.dumps({"type": "start", "station": "kiosk", "role": "customer"}))
                    await receive(ing, "started", 1)
                    path.write_text(path.read_text().replace("min_duration_s = 0.5", "min_duration_s = 30"))
                    await svc.reload("test")
                    stream = svc.parts.server.ingest_sessions["kiosk"].stream
                    for i in range(0, len(pcm), 16000):
                        await ing.send(pcm[i:i + 16000])
                    [event] = await receive(watcher, "utterance", 1)
            return stream.quality, event
        finally:
            await svc.stop()

    quality, event = asyncio.run(main())
    assert quality.min_duration_s == 30.0
    assert event["station"] == "kiosk" and event["insufficient"] == "too_short"
    assert 2.0 < event["quality"]["duration_s"] < 30.0


def test_capture_measures_with_the_configured_thresholds(tmp_path):
    """A replay station's segment messages carry quality and the verdict of `[quality]`."""
    from daemon.sources import build_sources
    from tests.stagekit import Watch, config

    wav = tmp_path / "one.wav"
    write_wav(wav, np.concatenate([np.zeros(RATE // 2), say(SENTENCE, tmp_path), np.zeros(RATE)]), RATE)
    cfg = config(f'[quality]\nmin_duration_s = 30\n[[stations]]\nname = "desk"\nrole = "customer"\n'
                 f'file = "{wav}"\nrealtime = false\n')
    watch = Watch(cfg.stages.utterances)
    [source] = build_sources(cfg)
    source.start()
    try:
        watch.poll(30, until=lambda w: w.segments())
    finally:
        source.stop()
        source.join(10)
        watch.close()
    [msg] = watch.segments()
    assert msg.utterance.insufficient == "too_short" and 2.0 < msg.utterance.quality["duration_s"] < 30
