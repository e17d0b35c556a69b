"""JVNV: Japanese emotional speech with non-verbal vocalisations, four speakers.

Layout: jvnv_v1/<speaker>/<emotion>/<style>/<speaker>_<emotion>_<style>_<NN>.wav (the
top folder may be SRC itself). Emotions: anger, disgust, fear, happy, sad, surprise,
acted at one intensity, mapped at 2/3 like RAVDESS's normal intensity. A session is a
speaker.
"""
from __future__ import annotations

from pathlib import Path

from trainer.importers.mapping import category
from trainer.importers.writer import Clip, CorpusError

EMOTIONS = ("anger", "disgust", "fear", "happy", "sad", "surprise")
LEVEL = 2 / 3


def collect(src: Path) -> tuple[list[Clip], dict[str, int]]:
    root = src / "jvnv_v1" if (src / "jvnv_v1").is_dir() else src
    files = sorted(root.glob("*/*/*/*.wav"))
    if not files:
        raise CorpusError(src, [f"{root}: no SPEAKER/EMOTION/STYLE/*.wav files (JVNV layout)"])
    clips, problems = [], []
    for path in files:
        speaker, emotion = path.parts[-4], path.parts[-3]
        if emotion not in EMOTIONS:
            problems.append(f"{path}: emotion folder {emotion!r} is not one of {', '.join(EMOTIONS)}")
            continue
        if not path.stem.startswith(f"{speaker}_{emotion}_"):
            problems.append(f"{path}: name does not start with {speaker}_{emotion}_")
            continue
        clips.append(Clip(source=path, session=speaker, speaker=speaker, where=str(path),
                          ratings={"acted": category(emotion, LEVEL)}))
    if problems:
        raise CorpusError(src, problems)
    return clips, {}
