"""The JSONL manifest that describes a training corpus, one utterance per line.

Every line is checked; all problems of a file are reported together (line number and
field) before anything is used, so a bad corpus is fixed in one pass and nothing is
dropped silently.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

ROLES = ("customer", "staff")
SCALE = (1, 7)
# Annotated on customer speech only (see the method); a staff line rating it is an error.
CUSTOMER_ONLY = frozenset({"purchase_intention"})
_FIELDS = {"audio", "session", "speaker", "role", "ratings", "dialogue", "start", "end",
           "transcript"}


class ManifestError(ValueError):
    """A manifest with bad lines; `problems` holds one message per problem."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{path}: {len(problems)} bad line(s):\n{shown}{more}")


@dataclass(frozen=True)
class Utterance:
    audio: Path
    session: str
    speaker: str
    role: str
    ratings: dict[str, dict[str, int]]  # annotator -> emotion -> score on the 1..7 scale
    dialogue: str | None = None
    start: float | None = None
    end: float | None = None
    transcript: str | None = None
    line: int = 0

    @property
    def emotions(self) -> frozenset[str]:
        """Emotions at least one annotator rated."""
        return frozenset(e for scores in self.ratings.values() for e in scores)

    def to_json(self, relative_to: Path | None = None) -> dict:
        audio = self.audio
        if relative_to is not None:
            try:
                audio = audio.relative_to(relative_to)
            except ValueError:
                pass
        line = {"audio": str(audio), "session": self.session, "speaker": self.speaker,
                "role": self.role, "ratings": self.ratings}
        if self.dialogue is not None:
            line.update(dialogue=self.dialogue, start=self.start, end=self.end)
        if self.transcript is not None:
            line["transcript"] = self.transcript
        return line


def _text(obj: dict, key: str, errors: list[str], optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if not optional:
            errors.append(f"field '{key}': missing")
        return None
    if not isinstance(value, str) or not value.strip():
        errors.append(f"field '{key}': expected a non-empty string, got {value!r}")
        return None
    return value


def _time(obj: dict, key: str, errors: list[str]) -> float | None:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        errors.append(f"field '{key}': expected a time in seconds >= 0, got {value!r}")
        return None
    return float(value)


def _ratings(obj: dict, role: str | None, errors: list[str]) -> dict[str, dict[str, int]]:
    raw = obj.get("ratings")
    if not isinstance(raw, dict) or not raw:
        errors.append("field 'ratings': expected an object annotator -> {emotion: score}, "
                      f"got {raw!r}")
        return {}
    ratings: dict[str, dict[str, int]] = {}
    for annotator, scores in raw.items():
        where = f"ratings.{annotator}"
        if not isinstance(scores, dict) or not scores:
            errors.append(f"field '{where}': expected an object emotion -> score, got {scores!r}")
            continue
        ratings[annotator] = {}
        for emotion, score in scores.items():
            if isinstance(score, bool) or not isinstance(score, (int, float)) \
                    or not SCALE[0] <= score <= SCALE[1] or score != int(score):
                errors.append(f"field '{where}.{emotion}': expected an integer {SCALE[0]}..{SCALE[1]}, "
                              f"got {score!r}")
                continue
            if emotion in CUSTOMER_ONLY and role == "staff":
                errors.append(f"field '{where}.{emotion}': rated on a staff line; "
                              "it is annotated on customer lines only")
                continue
            ratings[annotator][emotion] = int(score)
    return ratings


def parse_line(text: str, base: Path, number: int) -> tuple[Utterance | None, list[str]]:
    """One manifest line -> (utterance, []) or (None, problems)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [f"line {number}: not valid JSON: {exc.msg} (column {exc.colno})"]
    except RecursionError:
        return None, [f"line {number}: not valid JSON: nested too deeply"]
    if not isinstance(obj, dict):
        return None, [f"line {number}: expected a JSON object, got {type(obj).__name__}"]
    errors: list[str] = []
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        errors.append(f"unknown field(s) {', '.join(map(repr, unknown))}")
    audio = _text(obj, "audio", errors)
    session = _text(obj, "session", errors)
    speaker = _text(obj, "speaker", errors)
    role = _text(obj, "role", errors)
    if role is not None and role not in ROLES:
        errors.append(f"field 'role': expected one of {', '.join(ROLES)}, got {role!r}")
        role = None
    ratings = _ratings(obj, role, errors)
    transcript = _text(obj, "transcript", errors, optional=True)
    dialogue = start = end = None
    timing = [k for k in ("dialogue", "start", "end") if k in obj]
    if timing and len(timing) < 3:
        missing = sorted({"dialogue", "start", "end"} - set(timing))
        errors.append(f"field(s) {', '.join(missing)}: 'dialogue', 'start' and 'end' "
                      "come together")
    elif timing:
        dialogue = _text(obj, "dialogue", errors)
        start, end = _time(obj, "start", errors), _time(obj, "end", errors)
        if start is not None and end is not None and end <= start:
            errors.append(f"field 'end': {end} is not after start {start}")
    path = None
    if audio is not None:
        path = Path(audio) if Path(audio).is_absolute() else base / audio
        if not path.is_file():
            errors.append(f"field 'audio': no such file {path}")
    if errors:
        return None, [f"line {number}: {e}" for e in errors]
    return Utterance(audio=path, session=session, speaker=speaker, role=role, ratings=ratings,
                     dialogue=dialogue, start=start, end=end, transcript=transcript,
                     line=number), []


def load_manifest(path: str | Path) -> list[Utterance]:
    """All utterances of a manifest; raises ManifestError listing every bad line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(path, [f"cannot read: {exc}"]) from None
    utterances, problems = [], []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        utterance, errors = parse_line(text, path.parent, number)
        problems.extend(errors)
        if utterance is not None:
            utterances.append(utterance)
    if not utterances and not problems:
        problems.append("no utterances")
    if problems:
        raise ManifestError(path, problems)
    return utterances


def write_manifest(path: str | Path, utterances: list[Utterance]) -> None:
    """Write utterances as JSONL, audio paths relative to the manifest's folder."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as out:
        for u in utterances:
            out.write(json.dumps(u.to_json(relative_to=path.parent), ensure_ascii=False) + "\n")
