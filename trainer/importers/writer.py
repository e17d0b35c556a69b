"""The shared end of every importer: checks, 16 kHz mono WAVs, the manifest, atomically.

Everything is checked before any audio is written, and everything is written into a
temporary folder beside the output that is renamed into place only when the manifest
loads back cleanly: an interrupted or failed import leaves no half corpus behind.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from emoclap.audio import AudioError, read_mono, write_wav
from trainer.manifest import CUSTOMER_ONLY, ROLES, SCALE, ManifestError, load_manifest


class CorpusError(ManifestError):
    """A corpus that cannot be imported; `problems` names file and row for each."""

    def __init__(self, source: Path, problems: list[str]):
        self.path, self.problems = Path(source), problems
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        ValueError.__init__(self, f"{source}: cannot import, {len(problems)} problem(s):\n{shown}{more}")


@dataclass
class Clip:
    """One utterance as an importer found it; `where` is 'file:row' of its labels."""
    source: Path
    session: str
    speaker: str
    where: str
    role: str = "customer"
    ratings: dict[str, dict[str, int]] = field(default_factory=dict)
    split: str | None = None
    transcript: str | None = None


@dataclass
class ImportReport:
    out: Path
    clips: int
    sessions: int
    speakers: int
    rated: dict[str, int]
    left_out: dict[str, int]

    def __str__(self) -> str:
        lines = [f"{self.out}: {self.clips} utterances, {self.sessions} sessions, {self.speakers} speakers"]
        lines += [f"  {e}: rated on {n} utterance(s)" for e, n in sorted(self.rated.items())]
        lines += [f"  left out: {n} clip(s) {why}" for why, n in sorted(self.left_out.items())]
        return "\n".join(lines)


def check(clips: list[Clip]) -> list[str]:
    """Every problem of a clip list, each naming the label file and row."""
    problems = []
    session_of: dict[str, tuple[str, str]] = {}
    seen: dict[Path, str] = {}
    for c in clips:
        if c.source in seen:
            problems.append(f"{c.where}: {c.source} is already listed at {seen[c.source]}")
        seen.setdefault(c.source, c.where)
        if not c.source.is_file():
            problems.append(f"{c.where}: no such audio file {c.source}")
        if c.role not in ROLES:
            problems.append(f"{c.where}: role {c.role!r} is not one of {', '.join(ROLES)}")
        for text, what in ((c.session, "session"), (c.speaker, "speaker")):
            if not text or not text.strip():
                problems.append(f"{c.where}: empty {what}")
        first = session_of.setdefault(c.speaker, (c.session, c.where))
        if first[0] != c.session:
            problems.append(f"{c.where}: speaker {c.speaker!r} is in session {c.session!r} here but in "
                            f"{first[0]!r} at {first[1]}; leave-one-session-out folds would "
                            "then hear a test speaker in training")
        for annotator, scores in c.ratings.items():
            for emotion, score in scores.items():
                if not (isinstance(score, int) and SCALE[0] <= score <= SCALE[1]):
                    problems.append(f"{c.where}: annotator {annotator!r}, {emotion}: {score!r} is not "
                                    f"an integer {SCALE[0]}..{SCALE[1]}")
                if emotion in CUSTOMER_ONLY and c.role != "customer":
                    problems.append(f"{c.where}: {emotion} rated on a {c.role} line")
    return problems


def _target(clip: Clip, root: Path | None) -> Path:
    """The clip's WAV under audio/, keeping its path below the corpus root (names repeat)."""
    try:
        rel = clip.source.relative_to(root) if root else Path(clip.source.name)
    except ValueError:
        rel = Path(clip.source.name)
    return Path("audio") / rel.with_suffix(".wav")


def write_corpus(clips: list[Clip], out: Path, source: Path, left_out: dict[str, int] | None = None,
                 workers: int | None = None) -> ImportReport:
    """Check, convert and write `clips` as OUT/manifest.jsonl (+ OUT/splits.json); atomic."""
    out, source = Path(out), Path(source)
    left_out = dict(left_out or {})
    unrated = [c for c in clips if not any(c.ratings.values())]
    if unrated:
        left_out["with no rating this mapping can use"] = len(unrated)
    clips = [c for c in clips if any(c.ratings.values())]
    problems = check(clips)
    root = source if source.is_dir() else source.parent
    first: dict[Path, str] = {}
    for c in clips:
        where = first.setdefault(_target(c, root), c.where)
        if where != c.where:  # files outside the corpus folder are kept by name alone
            problems.append(f"{c.where}: {c.source} would be written over the clip of {where}; rename it")
    if not clips and not problems:
        problems.append("no rated clips found")
    if out.exists():
        problems.append(f"output folder {out} exists; remove it or choose another")
    if problems:
        raise CorpusError(source, problems)

    tmp = out.parent / f".{out.name}.importing-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)

        def convert(clip: Clip) -> str | None:
            target = tmp / _target(clip, root)
            try:
                audio = read_mono(clip.source)
            except AudioError as exc:
                return f"{clip.where}: {exc}"
            target.parent.mkdir(parents=True, exist_ok=True)
            write_wav(target, audio)
            return None

        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
            problems = [p for p in pool.map(convert, clips) if p]
        if problems:
            raise CorpusError(source, problems)
        with (tmp / "manifest.jsonl").open("w", encoding="utf-8") as f:
            for c in clips:
                line = {"audio": str(_target(c, root)), "session": c.session, "speaker": c.speaker,
                        "role": c.role, "ratings": {a: s for a, s in c.ratings.items() if s}}
                if c.transcript:
                    line["transcript"] = c.transcript
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        splits = {str(_target(c, root)): c.split for c in clips if c.split}
        if splits:
            (tmp / "splits.json").write_text(json.dumps(splits, indent=0, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
        load_manifest(tmp / "manifest.jsonl")  # what fit will read must load
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    rated: dict[str, int] = {}
    for c in clips:
        for e in {e for s in c.ratings.values() for e in s}:
            rated[e] = rated.get(e, 0) + 1
    return ImportReport(out, len(clips), len({c.session for c in clips}),
                        len({c.speaker for c in clips}), rated, left_out)
