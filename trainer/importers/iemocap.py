"""IEMOCAP: five dyadic sessions, per-evaluator valence/activation/dominance on 1..5.

Layout: SessionN/dialog/EmoEvaluation/<dialog>.txt, where each turn's block starts
with "[start - end]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[v, a, d]" and holds one line
per dimensional evaluator, "A-E3:<TAB>val 3; act 2; dom  2;<TAB>(...)" (A-F1/A-M1:
the actor's own rating). Audio: SessionN/sentences/wav/<dialog>/<turn>.wav;
transcripts, when present: SessionN/dialog/transcriptions/<dialog>.txt.
"""
from __future__ import annotations

import re
from pathlib import Path

from trainer.importers.mapping import dimensions
from trainer.importers.writer import Clip, CorpusError

_TURN = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(Ses\d+[FM]_\S+)\s")
_EVALUATOR = re.compile(r"^A-([A-Z]\d+)\s*:\s*(.*)$")
_VALUE = re.compile(r"\b(val|act|dom)\s*([^;]*);")
_TRANSCRIPT = re.compile(r"^(Ses\d+[FM]_\S+)\s+\[[^\]]*\]:\s*(.*)$")


def _transcripts(session_dir: Path) -> dict[str, str]:
    out = {}
    for path in sorted((session_dir / "dialog" / "transcriptions").glob("*.txt")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            m = _TRANSCRIPT.match(line.strip())
            if m and m.group(2).strip():
                out[m.group(1)] = m.group(2).strip()
    return out


def _scores(text: str, where: str, problems: list[str]) -> dict[str, int]:
    found = {k: v.strip() for k, v in _VALUE.findall(text)}
    values = {}
    for key in ("val", "act", "dom"):
        if not found.get(key):
            continue  # an evaluator who skipped a dimension leaves it unrated
        try:
            values[key] = float(found[key])
            if not 1 <= values[key] <= 5:
                raise ValueError
        except ValueError:
            problems.append(f"{where}: {key} {found[key]!r} is not a rating 1..5")
            values.pop(key, None)
    return dimensions(values.get("val"), values.get("act"), values.get("dom"), 1, 5)


def collect(src: Path) -> tuple[list[Clip], dict[str, int]]:
    sessions = sorted(p for p in src.glob("Session[0-9]*") if p.is_dir())
    if not sessions:
        raise CorpusError(src, [f"{src}: no Session1..Session5 folders (IEMOCAP layout)"])
    clips, problems = [], []
    for session_dir in sessions:
        evaluations = sorted((session_dir / "dialog" / "EmoEvaluation").glob("*.txt"))
        if not evaluations:
            problems.append(f"{session_dir}/dialog/EmoEvaluation: no evaluation files")
        texts = _transcripts(session_dir)
        for path in evaluations:
            clip = None
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace")
                                          .splitlines(), start=1):
                where = f"{path}:{number}"
                turn = _TURN.match(line)
                if turn:
                    name = turn.group(1)
                    dialog = name.rsplit("_", 1)[0]
                    # The turn's last part starts with the speaker's letter (F000, M012).
                    speaker = name[:5] + name.rsplit("_", 1)[1][0]
                    clip = Clip(source=session_dir / "sentences" / "wav" / dialog / f"{name}.wav",
                                session=session_dir.name, speaker=speaker, where=where,
                                transcript=texts.get(name))
                    clips.append(clip)
                    continue
                evaluator = _EVALUATOR.match(line.strip())
                if evaluator and clip is not None:
                    scores = _scores(evaluator.group(2), where, problems)
                    if scores:
                        clip.ratings[evaluator.group(1)] = scores
    if problems:
        raise CorpusError(src, problems)
    return clips, {}
