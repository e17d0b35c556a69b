"""Speaking one scripted line with espeak-ng and shaping it with sox.

Vocal controls (about unit scale, see affect.CONTROLS) map to: espeak-ng pitch, speed
and word gap, SSML pitch range and sentence breaks; sox pitch bend over the last
syllables (final contour), overdrive (harshness), tremolo (tremor), treble (brightness);
gain (loudness). Output: float32 mono at 16 kHz. The Japanese engines (voice_ja) map
the same controls onto their own and share `shape`, so a control means the same in
every voice.
"""
from __future__ import annotations

import io
import re
import shutil
import subprocess
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf

from emoclap.audio import SAMPLE_RATE
from trainer.synth.script import VOICE_LANGUAGE, Speaker

_SENTENCE_END = re.compile(r"(?<=[.?!。？！])\s*")


class VoiceError(RuntimeError):
    pass


def check_tools(tools: tuple[str, ...] = ("espeak-ng", "sox")) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise VoiceError(f"{' and '.join(missing)} not found: install with "
                         f"`apt-get install {' '.join(missing)}` (./bootstrap does)")


def _run(cmd: list[str], data: bytes | None = None) -> bytes:
    done = subprocess.run(cmd, input=data, capture_output=True)
    if done.returncode != 0 or not done.stdout:
        raise VoiceError(f"{cmd[0]} failed ({done.returncode}): "
                         f"{done.stderr.decode(errors='replace').strip()[:300]}")
    return done.stdout


def _ssml(text: str, pitch_range: float, pause_ms: int) -> str:
    sentences = [s for s in _SENTENCE_END.split(text) if s]
    joined = f'<break time="{pause_ms}ms"/>'.join(escape(s) for s in sentences)
    return f'<speak><prosody range="{pitch_range:+.0f}%">{joined}</prosody></speak>'


def _clip(value: float, low: float, high: float) -> float:
    return float(min(max(value, low), high))


def rate_factor(c: dict[str, float]) -> float:
    """Speaking rate relative to the speaker's own."""
    return _clip(1 + 0.16 * c["rate"], 0.55, 1.7)


def pause_ms(c: dict[str, float]) -> int:
    """Silence between sentences."""
    return round(_clip(250 + 250 * c["pauses"], 0, 900))


def shape(raw: bytes, controls: dict[str, float], noise: np.random.Generator, text: str,
          before: tuple[str, ...] = ()) -> np.ndarray:
    """The sox half of the mapping on a WAV file `raw`: sox effects `before` (what an
    engine lacks), final contour, harshness, tremor, brightness, 16 kHz, loudness, and
    the recording noise floor (the only use of `noise`)."""
    c = controls
    info = sf.info(io.BytesIO(raw))
    duration = info.frames / info.samplerate
    effects = list(before)
    cents = round(_clip(380 * c["final_contour"], -800, 800))
    if cents:  # sox refuses a bend of 0 cents
        # Over-sampling 4 instead of 16: 4x cheaper, no audible difference on espeak voices.
        effects += ["bend", "-o", "4", f"{max(0.0, duration - 0.55):.3f},{cents},0.45"]
    overdrive = _clip(5 * (c["harshness"] + 0.6), 0, 14)
    if overdrive > 0.5:
        effects += ["overdrive", f"{overdrive:.1f}", "20"]
    tremolo = _clip(22 * (c["tremor"] + 0.5), 0, 70)
    if tremolo > 1:
        effects += ["tremolo", "6.5", f"{tremolo:.0f}"]
    effects += ["treble", f"{_clip(8 * c['brightness'], -15, 15):.1f}", "2500"]
    effects += ["rate", "-h", str(SAMPLE_RATE)]
    # -D: no dither, so the same inputs give the same bytes.
    shaped = _run(["sox", "-D", "-t", "wav", "-", "-t", "wav", "-e", "float", "-b", "32",
                   "-c", "1", "-", *effects], raw)
    audio, rate = sf.read(io.BytesIO(shaped), dtype="float32")
    if rate != SAMPLE_RATE or audio.size == 0:
        raise VoiceError(f"sox returned {audio.size} samples at {rate} Hz for {text!r}")
    peak = float(np.abs(audio).max()) or 1.0
    level = _clip(0.45 * 10 ** (4.0 * c["loudness"] / 20), 0.05, 0.95)
    audio = audio * (level / peak)
    audio += noise.normal(0.0, 10 ** (-55 / 20), audio.size).astype(np.float32)
    return audio.astype(np.float32)


class Espeak:
    """espeak-ng: English, and Japanese from a kana reading (it cannot read kanji)."""

    name = "espeak"
    attribution = ""

    def __init__(self, language: str, reading=None):
        check_tools()
        self.language = language
        self.reading = reading or (lambda text: text)

    def speak(self, text: str, speaker: Speaker, controls: dict[str, float],
              noise: np.random.Generator) -> np.ndarray:
        """Render `text` in `speaker`'s voice shaped by `controls`; deterministic given its
        inputs and the state of `noise`."""
        c = controls
        espeak = ["espeak-ng", "-m", "--stdout",
                  "-v", (speaker.accent or VOICE_LANGUAGE[self.language]) + speaker.voice,
                  "-p", str(round(_clip(speaker.pitch + 10 * c["pitch_level"], 0, 99))),
                  "-s", str(round(_clip(speaker.rate * (1 + 0.16 * c["rate"]), 80, 280))),
                  "-g", str(round(_clip(3 + 6 * c["pauses"], 0, 15))),
                  _ssml(self.reading(text), _clip(70 * c["pitch_range"], -85, 180), pause_ms(c))]
        return shape(_run(espeak), c, noise, text)
