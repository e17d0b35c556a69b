"""A store's own annotated recordings: one CSV row per (clip, annotator).

Columns: path (audio, relative to the CSV's folder or absolute), session, speaker, role
(customer or staff), annotator, then one column per emotion rated (pleasant, aroused,
dominant, credible, interested, positive, purchase_intention; integers 1..7, an empty
cell is unrated), optionally split and transcript. Rows of one clip must agree on
session, speaker, role, split and transcript.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from trainer.importers.mapping import EMOTIONS
from trainer.importers.writer import Clip, CorpusError
from trainer.manifest import SCALE

REQUIRED = ("path", "session", "speaker", "role", "annotator")
OPTIONAL = ("split", "transcript")


def _score(cell: str) -> int:
    text = cell.strip()
    if not text.lstrip("+-").isdigit():
        raise ValueError(f"{cell!r} is not an integer {SCALE[0]}..{SCALE[1]}")
    value = int(text)
    if not SCALE[0] <= value <= SCALE[1]:
        raise ValueError(f"{value} is outside {SCALE[0]}..{SCALE[1]}")
    return value


def _rows(reader, name: str, problems: list[str]):
    """(row number, cells) until the end or the first row csv cannot read (reported)."""
    number = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.append(f"{name}:{number + 1}: not CSV: {exc}")
            return
        number += 1
        yield number, cells


def parse(text: str, name: str, base: Path) -> list[Clip]:
    """Clips of a generic CSV's text; CorpusError naming `name:row` for every bad row."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        raise CorpusError(Path(name), [f"{name}:1: not a CSV header: {exc}"]) from None
    problems = []
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in (*REQUIRED, *OPTIONAL, *EMOTIONS)]
    doubled = sorted({c for c in header if header.count(c) > 1})
    if missing or unknown or doubled or not set(header) & set(EMOTIONS):
        problems.append(f"{name}:1: header needs {', '.join(REQUIRED)} and at least one of "
                        f"{', '.join(EMOTIONS)} (missing: {missing}, unknown: {unknown}, "
                        f"repeated: {doubled})")
        raise CorpusError(Path(name), problems)
    clips: dict[str, Clip] = {}
    for number, cells in _rows(reader, name, problems):
        where = f"{name}:{number}"
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            problems.append(f"{where}: {len(cells)} cells, the header has {len(header)}")
            continue
        row = dict(zip(header, (c.strip() for c in cells)))
        blank = [c for c in REQUIRED if not row[c]]
        if blank:
            problems.append(f"{where}: empty {', '.join(blank)}")
            continue
        scores, bad = {}, []
        for emotion in (c for c in header if c in EMOTIONS and row[c]):
            try:
                scores[emotion] = _score(row[emotion])
            except ValueError as exc:
                bad.append(f"{emotion}: {exc}")
        if bad:
            problems.append(f"{where}: {'; '.join(bad)}")
            continue
        if "purchase_intention" in scores and row["role"] != "customer":
            problems.append(f"{where}: purchase_intention is rated on customer lines only")
            continue
        path = Path(row["path"])
        clip = clips.get(row["path"])
        new = Clip(source=path if path.is_absolute() else base / path, session=row["session"],
                   speaker=row["speaker"], where=where, role=row["role"],
                   split=row.get("split") or None, transcript=row.get("transcript") or None)
        if clip is None:
            clip = clips[row["path"]] = new
        else:
            differ = [f for f in ("session", "speaker", "role", "split", "transcript")
                      if getattr(clip, f) != getattr(new, f)]
            if differ:
                problems.append(f"{where}: {', '.join(differ)} differ(s) from {clip.where} "
                                f"for the same path {row['path']!r}")
                continue
        if row["annotator"] in clip.ratings:
            problems.append(f"{where}: annotator {row['annotator']!r} already rated "
                            f"{row['path']!r}")
            continue
        clip.ratings[row["annotator"]] = scores
    if problems:
        raise CorpusError(Path(name), problems)
    return list(clips.values())


def collect(src: Path) -> tuple[list[Clip], dict[str, int]]:
    if not src.is_file():
        raise CorpusError(src, [f"{src}: no such CSV file"])
    try:
        text = src.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(src, [f"{src}: cannot read: {exc}"]) from None
    return parse(text, str(src), src.parent), {}
