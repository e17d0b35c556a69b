"""RAVDESS: 24 actors; the acted emotion and intensity are in the file name.

Actor_01/03-01-05-02-01-01-01.wav: modality (03 audio-only), vocal channel (01 speech,
02 song), emotion (01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful,
07 disgust, 08 surprised), intensity (01 normal, 02 strong), statement, repetition,
actor. The acted category is the one "annotator" (`acted`); normal intensity is 2/3,
strong is full. Song clips are left out (sung, not spoken). A session is an actor.
"""
from __future__ import annotations

from pathlib import Path

from trainer.importers.mapping import category
from trainer.importers.writer import Clip, CorpusError

EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
            "06": "fearful", "07": "disgust", "08": "surprised"}
INTENSITY = {"01": 2 / 3, "02": 1.0}
STATEMENTS = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}


def collect(src: Path) -> tuple[list[Clip], dict[str, int]]:
    files = sorted(src.glob("Actor_*/*.wav"))
    if not files:
        raise CorpusError(src, [f"{src}: no Actor_NN/*.wav files (RAVDESS layout)"])
    clips, problems, song = [], [], 0
    for path in files:
        codes = path.stem.split("-")
        if len(codes) != 7 or codes[0] != "03" or codes[2] not in EMOTIONS \
                or codes[3] not in INTENSITY or codes[1] not in ("01", "02"):
            problems.append(f"{path}: name is not an audio-only RAVDESS code "
                            "03-CC-EE-II-SS-RR-AA")
            continue
        if f"Actor_{codes[6]}" != path.parent.name:
            problems.append(f"{path}: actor {codes[6]} in the name, folder {path.parent.name}")
            continue
        if codes[1] == "02":
            song += 1
            continue
        actor = f"actor{codes[6]}"
        clips.append(Clip(source=path, session=actor, speaker=actor, where=str(path),
                          ratings={"acted": category(EMOTIONS[codes[2]], INTENSITY[codes[3]])},
                          transcript=STATEMENTS.get(codes[4])))
    if problems:
        raise CorpusError(src, problems)
    return clips, ({"sung (vocal channel 02)": song} if song else {})
