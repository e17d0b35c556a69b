"""Which speech engine speaks a language: espeak-ng (trainer.synth.voice) for every
language, or a Japanese engine (trainer.synth.voice_ja), chosen here, above both."""
from __future__ import annotations

from trainer.synth import voice_ja
from trainer.synth.voice import Espeak

ENGINES = ("espeak", "openjtalk", "kokoro")


def default_engine(language: str) -> str:
    if language != "ja":
        return "espeak"
    return voice_ja.best_installed()


def open_engine(language: str, tts: str | None = None):
    """The engine that speaks `language`: `tts` (one of ENGINES), or the default for the
    language (English: espeak; Japanese: the best Japanese engine installed)."""
    tts = tts or default_engine(language)
    if tts not in ENGINES:
        raise ValueError(f"unknown tts {tts!r}: use one of {', '.join(ENGINES)}")
    if tts == "espeak" and language != "ja":
        return Espeak(language)
    if language != "ja":
        raise ValueError(f"tts {tts!r} speaks Japanese only; use espeak for {language!r}")
    return voice_ja.open_engine(tts)
