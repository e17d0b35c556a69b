"""CREMA-D: 91 actors, crowd raters choosing an emotion and its intensity per clip.

Layout: AudioWAV/<actor>_<sentence>_<EMO>_<LV>.wav and finishedResponses.csv (one row
per rater and clip: localid, queryType, clipName, respEmo (A D F H N S), respLevel
0..100, ...). Only voice-only ratings (queryType 1) are used: the audio is what the model
hears. processedResults/tabulatedVotes.csv holds vote counts only, no rater, so it is
not read. No sessions: a session is an actor.
"""
from __future__ import annotations

import csv
from pathlib import Path

from trainer.importers.mapping import category
from trainer.importers.writer import Clip, CorpusError

SENTENCES = {"IEO": "It's eleven o'clock.", "TIE": "That is exactly what happened.",
             "IOM": "I'm on my way to the meeting.", "IWW": "I wonder what this is about.",
             "TAI": "The airplane is almost full.", "MTI": "Maybe tomorrow it will be cold.",
             "IWL": "I would like a new alarm clock.", "ITH": "I think I have a doctor's appointment.",
             "DFA": "Don't forget a jacket.", "ITS": "I think I've seen this before.",
             "TSI": "The surface is slick.", "WSI": "We'll stop in a couple of minutes."}
VOICE_ONLY = "1"


def collect(src: Path) -> tuple[list[Clip], dict[str, int]]:
    responses = src / "finishedResponses.csv"
    if not responses.is_file():
        raise CorpusError(src, [f"{responses}: no such file (CREMA-D layout)"])
    problems: list[str] = []
    clips: dict[str, Clip] = {}
    other_modality = 0
    with responses.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"localid", "queryType", "clipName", "respEmo", "respLevel"}
        if not need <= set(reader.fieldnames or ()):
            raise CorpusError(src, [f"{responses}:1: missing column(s) "
                                    f"{', '.join(sorted(need - set(reader.fieldnames or ())))}"])
        for number, row in enumerate(reader, start=2):
            where = f"{responses}:{number}"
            if (row["queryType"] or "").strip() != VOICE_ONLY:
                other_modality += 1
                continue
            name = (row["clipName"] or "").strip()
            parts = name.split("_")
            if len(parts) != 4 or not parts[0].isdigit():
                problems.append(f"{where}: clipName {name!r} is not ACTOR_SENTENCE_EMOTION_LEVEL")
                continue
            try:
                level = float(row["respLevel"])
                if not 0 <= level <= 100:
                    raise ValueError(f"respLevel {level:g} is outside 0..100")
                scores = category(row["respEmo"] or "", level / 100)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            clip = clips.setdefault(name, Clip(
                source=src / "AudioWAV" / f"{name}.wav", session=parts[0], speaker=parts[0],
                where=where, transcript=SENTENCES.get(parts[1])))
            clip.ratings[f"rater{row['localid'].strip()}"] = scores
    if problems:
        raise CorpusError(src, problems)
    left = {"rating rows of face or audio-visual presentation (not used)": other_modality} \
        if other_modality else {}
    return list(clips.values()), left
