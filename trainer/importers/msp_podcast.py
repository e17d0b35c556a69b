"""MSP-Podcast: per-annotator arousal/valence/dominance on 1..7, speaker-independent splits.

Layout: Labels/labels_detailed.csv (FileName, then one field per annotation,
"WORKER00014325; Neutral; Neutral; A:4.000000; V:4.000000; D:4.000000;"),
Labels/labels_consensus.csv (FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID,
Gender, Split_Set), audio in Audios/, transcripts (optional) in Transcripts/<stem>.txt.
The corpus has no recording sessions and mixes many podcasts, so a session is a speaker;
clips of an unknown speaker each get a speaker (and session) of their own.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from trainer.importers.mapping import dimensions
from trainer.importers.writer import Clip, CorpusError

_RATING = re.compile(r"^([AVD])\s*:\s*(\S+)$")


def _annotation(text: str, where: str, problems: list[str]) -> tuple[str, dict[str, int]] | None:
    parts = [p.strip() for p in text.split(";") if p.strip()]
    if not parts:
        problems.append(f"{where}: empty annotation")
        return None
    avd = {}
    for part in parts[1:]:
        m = _RATING.match(part)
        if m:
            try:
                avd[m.group(1)] = float(m.group(2))
            except ValueError:
                problems.append(f"{where}: {part!r} is not a number")
    try:
        return parts[0], dimensions(avd.get("V"), avd.get("A"), avd.get("D"), 1, 7)
    except ValueError as exc:
        problems.append(f"{where}: annotator {parts[0]}: {exc}")
        return None


def collect(src: Path) -> tuple[list[Clip], dict[str, int]]:
    labels = src / "Labels"
    detailed, consensus = labels / "labels_detailed.csv", labels / "labels_consensus.csv"
    missing = [str(p) for p in (detailed, consensus) if not p.is_file()]
    if missing:
        raise CorpusError(src, [f"{p}: no such file (MSP-Podcast layout)" for p in missing])
    problems: list[str] = []
    meta: dict[str, dict] = {}
    with consensus.open(newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.DictReader(f), start=2):
            if not row.get("FileName"):
                problems.append(f"{consensus}:{number}: no FileName")
                continue
            meta[row["FileName"]] = row
    clips: dict[str, Clip] = {}
    with detailed.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader, None)
        for number, row in enumerate(reader, start=2):
            where = f"{detailed}:{number}"
            if not row or not row[0].strip():
                continue
            name = row[0].strip()
            info = meta.get(name)
            if info is None:
                problems.append(f"{where}: {name} is not in {consensus.name}")
                continue
            if name not in clips:
                spk = (info.get("SpkrID") or "").strip()
                speaker = f"spk{spk}" if spk and spk.lower() != "unknown" else f"unknown-{Path(name).stem}"
                transcript = src / "Transcripts" / f"{Path(name).stem}.txt"
                clips[name] = Clip(source=src / "Audios" / name, session=speaker, speaker=speaker,
                                   where=where, split=(info.get("Split_Set") or None),
                                   transcript=(transcript.read_text(encoding="utf-8").strip() or None)
                                   if transcript.is_file() else None)
            for field in row[1:]:
                got = _annotation(field, where, problems)
                if got and got[1]:
                    clips[name].ratings[got[0]] = got[1]
    if problems:
        raise CorpusError(src, problems)
    return list(clips.values()), {}
