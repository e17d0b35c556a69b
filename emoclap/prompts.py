"""Prompt files: one bipolar emotion per `prompts/NAME.toml`: parsing, and adding sentences
to a file's text (pure: text in, text out; no watching)."""
from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

from emoclap.knobs import KNOB_DEFAULTS, KNOB_LIMITS, KNOBS, knob_problem, knob_text

# ISO 639-1: a key in a pole table must be one of these, so a typo ("eng", "sentences")
# is caught instead of silently contributing nothing.
ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv
cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr
ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw
ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv
ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr
ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi
yo za zh zu""".split())

TOP_KEYS = {"label", "key_word", "roles", "negative", "positive", *KNOB_LIMITS}
POLES = ("negative", "positive")
ROLES = ("customer", "staff")  # the people an emotion may be limited to
# Limits that keep one file from holding the daemon's text encoder for minutes.
MAX_FILE_BYTES = 256 * 1024
MAX_SENTENCES = 2000  # per file, both poles and all languages together
MAX_SENTENCE_CHARS = 500
MAX_LABEL_CHARS = 200
MAX_FILES = 256  # prompt files read from one folder
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")


class PromptError(ValueError):
    """A prompt file that cannot be used; `str()` reads `file:line: message`."""

    def __init__(self, message: str, source: str, line: int | None = None):
        self.message, self.source, self.line = message, source, line
        super().__init__(f"{source}:{line}: {message}" if line else f"{source}: {message}")


@dataclass(frozen=True)
class Pole:
    label: str
    sentences: dict[str, list[str]]  # language -> sentences, the first canonical

    def texts(self, languages: Iterable[str] | None = None) -> list[str]:
        """Sentences of the given languages (all when None), in file order."""
        keep = None if languages is None else set(languages)
        return [s for lang, ss in self.sentences.items() if keep is None or lang in keep for s in ss]


@dataclass(frozen=True)
class Emotion:
    name: str
    label: str
    key_word: str
    roles: tuple[str, ...] | None  # None: every role
    temperature: float | None      # the audio path's; None: the bundle's logit scale
    bias: float
    negative: Pole
    positive: Pole
    source: str = ""
    text_temperature: float | None = None  # the text path's; None: the bundle's logit scale
    text_bias: float = 0.0
    audio_weight: float = 1.0      # the fused score's weight on the audio path's logit...
    text_weight: float = 1.0       # ...and on the text path's
    # `key_word` is the word for every language without its own entry here: the plain
    # string, else the table's `en` entry, else the emotion's name.
    key_words: dict[str, str] = field(default_factory=dict)

    def applies_to(self, role: str | None) -> bool:
        return self.roles is None or role is None or role in self.roles

    def key_word_for(self, language: str) -> str:
        """The word paraphrases in `language` must not contain."""
        return self.key_words.get(language, self.key_word)


def emotion_name(path: str | Path) -> str:
    """The machine name of a prompt file: its stem, lower-cased, '-' read as '_'."""
    return Path(path).stem.lower().replace("-", "_")


def _line_of(text: str, key: str, table: str | None = None) -> int | None:
    """Line (1-based) where `key` is set inside `[table]` (top level when None)."""
    current = None
    key_re = re.compile(rf"^\s*(\"{re.escape(key)}\"|'{re.escape(key)}'|{re.escape(key)})\s*=")
    header_re = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
    for number, line in enumerate(text.splitlines(), 1):
        header = header_re.match(line)
        if header:
            current = header.group(1).strip("\"'")
            if key == f"[{current}]":
                return number
            continue
        if current == table and key_re.match(line):
            return number
    return None


def parse_prompt_file(text: str, name: str, source: str = "<prompt>",
                      languages: Iterable[str] | None = None) -> Emotion:
    """Parse one prompt file's text; `languages`, when given, are those the model reads:
    sentences in other languages are ignored, and a pole with none of them is an error."""
    def fail(message: str, key: str | None = None, table: str | None = None):
        line = _line_of(text, key, table) if key else None
        if line is None and table:
            line = _line_of(text, f"[{table}]")
        raise PromptError(message, source, line)

    if not NAME_RE.match(name) or len(name) > 64:
        fail(f"emotion name {name!r} (from the file name) must be 1-64 lower-case letters, digits and '_'")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        fail(f"file is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        line = int(match.group(1)) if match else max(1, len(text.splitlines()))
        raise PromptError(f"invalid TOML: {exc}", source, line) from None
    except RecursionError:  # tomllib recurses once per nesting level
        raise PromptError("invalid TOML: nested too deeply", source) from None
    for key in data:
        if key not in TOP_KEYS:
            raise PromptError(f"unknown key {key!r} (expected one of: {', '.join(sorted(TOP_KEYS))})",
                              source, _line_of(text, key) or _line_of(text, f"[{key}]"))

    def string(key: str, default: str | None = None, table: str | None = None) -> str:
        value = (data.get(table, {}) if table else data).get(key, default)
        if value is None:
            fail(f"'{key}' is missing" + (f" in [{table}]" if table else ""), key, table)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_LABEL_CHARS:
            fail(f"'{key}' must be a non-empty string of at most {MAX_LABEL_CHARS} characters", key, table)
        return value.strip()

    def number(key: str) -> float | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            fail(f"'{key}' must be a finite number", key)
        return float(value)

    label = string("label")
    key_words: dict[str, str] = {}
    if isinstance(data.get("key_word"), dict):
        key_words = _key_words(data["key_word"], text, source)
        key_word = key_words.get("en", name)
    else:
        if not isinstance(data.get("key_word", ""), str):
            fail("'key_word' must be a word (a string) or a table of ISO 639-1 language codes to words, "
                 "e.g. {en = \"pleasant\", ja = \"心地よい\"}", "key_word")
        key_word = string("key_word", name)
    roles = data.get("roles")
    if roles is not None:
        if not isinstance(roles, list) or not roles or not all(r in ROLES for r in roles):
            fail(f"'roles' must be a non-empty list of roles from {', '.join(ROLES)}", "roles")
        roles = tuple(dict.fromkeys(roles))
    knobs = {}
    for key in KNOB_LIMITS:
        value = number(key)
        problem = knob_problem(key, value) if value is not None else None
        if problem:
            fail(f"'{key}' {problem}", key)
        knobs[key] = KNOB_DEFAULTS.get(key) if value is None else value
    keep = None if languages is None else set(languages)
    poles, count = {}, 0
    for pole in POLES:
        table = data.get(pole)
        if table is None:
            fail(f"the [{pole}] pole is missing")
        if not isinstance(table, dict):
            fail(f"'{pole}' must be a table [{pole}]", pole)
        sentences: dict[str, list[str]] = {}
        for key, value in table.items():
            if key == "label":
                continue
            if key not in ISO_639_1:
                fail(f"unknown language {key!r} in [{pole}] (ISO 639-1 codes such as 'en', 'ja')",
                     key, pole)
            if (not isinstance(value, list) or not value
                    or not all(isinstance(s, str) and s.strip() for s in value)):
                fail(f"'{key}' in [{pole}] must be a non-empty list of sentences", key, pole)
            if any(len(s) > MAX_SENTENCE_CHARS or "\x00" in s for s in value):
                fail(f"'{key}' in [{pole}]: a sentence is longer than {MAX_SENTENCE_CHARS} characters "
                     "or contains a NUL", key, pole)
            sentences[key] = [s.strip() for s in value]
            count += len(value)
            if count > MAX_SENTENCES:
                fail(f"more than {MAX_SENTENCES} sentences in one file", key, pole)
        if not sentences:
            fail(f"[{pole}] has no sentences", table=pole)
        if keep is not None and not any(lang in keep for lang in sentences):
            fail(f"[{pole}] has no sentences in the model's languages ({', '.join(sorted(keep))}); "
                 f"it has {', '.join(sentences)}", table=pole)
        poles[pole] = Pole(label=string("label", table=pole), sentences=sentences)
    return Emotion(name=name, label=label, key_word=key_word, roles=roles, negative=poles["negative"],
                   positive=poles["positive"], source=source, key_words=key_words, **knobs)



def _key_words(table: dict, text: str, source: str) -> dict[str, str]:
    """`key_word = {en = "pleasant", ja = "心地よい"}`: one prohibited word per language."""
    def fail(message: str, code: str | None = None):
        # Inline (`key_word = {...}`), or a `[key_word]` table with one line per code.
        line = ((_line_of(text, code, "key_word") if code else None) or _line_of(text, "key_word")
                or _line_of(text, "[key_word]"))
        raise PromptError(message, source, line)

    if not table:
        fail("'key_word' is an empty table; give a word per ISO 639-1 language code, "
             "e.g. {en = \"pleasant\", ja = \"心地よい\"}")
    words = {}
    for code, word in table.items():
        if code not in ISO_639_1:
            fail(f"unknown language {code!r} in 'key_word' (ISO 639-1 codes such as 'en', 'ja')", code)
        if not isinstance(word, str) or not word.strip() or len(word) > MAX_LABEL_CHARS:
            fail(f"'key_word' for {code!r} must be a non-empty string of at most {MAX_LABEL_CHARS} "
                 "characters", code)
        words[code] = word.strip()
    return words


def prompt_files(folder: str | Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.toml") if p.is_file())


def parse_prompt_paths(paths: Iterable[Path], languages: Iterable[str] | None = None
                       ) -> tuple[dict[str, Emotion], dict[str, PromptError]]:
    """Parse every file; returns (emotions by name, errors by file path). A name that two
    files share (e.g. `a-b.toml` and `a_b.toml`) is an error for the later file."""
    languages = None if languages is None else tuple(languages)
    emotions: dict[str, Emotion] = {}
    errors: dict[str, PromptError] = {}
    for number, path in enumerate(paths):
        name = emotion_name(path)
        try:
            if number >= MAX_FILES:
                raise PromptError(f"not read: more than {MAX_FILES} prompt files in the folder", str(path))
            if Path(path).stat().st_size > MAX_FILE_BYTES:  # before reading it into memory
                raise PromptError(f"file is larger than {MAX_FILE_BYTES // 1024} KiB", str(path))
            text = Path(path).read_text(encoding="utf-8")
            if name in emotions:
                raise PromptError(f"duplicate emotion name {name!r} (also {emotions[name].source})",
                                  str(path))
            emotions[name] = parse_prompt_file(text, name, str(path), languages)
        except PromptError as exc:
            errors[str(path)] = exc
        except (OSError, UnicodeDecodeError) as exc:
            errors[str(path)] = PromptError(f"cannot read: {exc}", str(path))
    return emotions, errors


def load_prompt_dir(folder: str | Path, languages: Iterable[str] | None = None) -> dict[str, Emotion]:
    """Every `*.toml` directly in `folder`; raises the first `PromptError` (all are listed)."""
    emotions, errors = parse_prompt_paths(prompt_files(folder), languages)
    if errors:
        first = next(iter(errors.values()))
        if len(errors) > 1:
            raise PromptError("; ".join(str(e) for e in errors.values()), first.source, None)
        raise first
    return emotions


def _array_end(text: str, start: int) -> int:
    """Index just past the TOML array that opens at text[start] == '['."""
    depth, i, quote = 0, start, None
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            i = text.index("\n", i) if "\n" in text[i:] else len(text)
            continue
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unterminated array")


def add_sentences(text: str, pole: str, language: str, sentences: list[str],
                  source: str = "<prompt>") -> str:
    """A prompt file's text with `sentences` appended to `[pole] language = [...]` (the
    list is created when the language is new), after the canonical sentence and any
    paraphrases already there. Comments and every other line stay byte for byte, so a
    review of the change is a plain diff. Raises PromptError for a text that is not a
    prompt file, or a rewrite that would not read back as these sentences."""
    if pole not in POLES:
        raise ValueError(f"pole must be one of {POLES}, not {pole!r}")
    # The name only has to be valid: a file's name does not change what it says.
    before = getattr(parse_prompt_file(text, "prompt", source), pole).sentences.get(language, [])
    wanted = before + [s.strip() for s in sentences]
    if wanted == before:
        return text
    header = re.search(rf"^\s*\[\s*{pole}\s*\]\s*(#.*)?$", text, re.M)
    if header is None:  # parsed, yet no plain header: a dotted or inline table
        raise PromptError(f"[{pole}] is not written as a table header; cannot add sentences", source)
    next_header = re.search(r"^\s*\[", text[header.end():], re.M)
    end = header.end() + next_header.start() if next_header else len(text)
    key = re.search(rf"^[ \t]*{re.escape(language)}[ \t]*=[ \t]*\[", text[header.end():end], re.M)
    quoted = [json.dumps(s, ensure_ascii=False) for s in wanted]
    array = "[\n" + "".join(f"    {q},\n" for q in quoted) + "]" if len(quoted) > 1 else f"[{quoted[0]}]"
    if key is None:
        insert_at = header.end() + len(text[header.end():end].rstrip())
        new = text[:insert_at] + f"\n{language} = {array}" + text[insert_at:]
    else:
        open_at = header.end() + key.end() - 1
        new = text[:open_at] + array + text[_array_end(text, open_at):]
    if getattr(parse_prompt_file(new, "prompt", source), pole).sentences.get(language) != wanted:
        raise PromptError(f"adding sentences to [{pole}] {language} did not read back as written", source)
    return new


_KEY = r"""(?:"[^"\n]*"|'[^'\n]*'|[A-Za-z0-9_-]+)"""
_STATEMENT_RE = re.compile(rf"[ \t]*({_KEY}(?:[ \t]*\.[ \t]*{_KEY})*)[ \t]*=[ \t]*")


def _top_level(text: str, source: str) -> tuple[dict[str, tuple[int, int]], int]:
    """({knob: (start, end) of its value}, index of the end of the last top-level line)."""
    found: dict[str, tuple[int, int]] = {}
    pos, last = 0, 0
    while pos < len(text):
        eol = text.find("\n", pos)
        eol = len(text) if eol < 0 else eol
        stripped = text[pos:eol].strip()
        if not stripped or stripped.startswith("#"):
            pos = eol + 1
            continue
        if stripped.startswith("["):  # the first table: top level ends here
            break
        match = _STATEMENT_RE.match(text, pos)
        if match is None:
            raise PromptError("cannot tell where the top-level keys end; set the knobs by hand",
                              source, text.count("\n", 0, pos) + 1)
        key, start = match.group(1).strip("\"'"), match.end()
        if text.startswith(("'''", '"""'), start):
            end = text.index(text[start:start + 3], start + 3) + 3
        elif text.startswith("[", start):
            end = _array_end(text, start)
        else:
            end = start + len(re.match(r"[^\s#]*", text[start:eol]).group(0))
        if key in KNOBS:
            found[key] = (start, end)
        line_end = text.find("\n", end)
        last = len(text) if line_end < 0 else line_end
        pos = last + 1
    return found, last


def set_knobs(text: str, temperature: float | None = None, bias: float | None = None,
              source: str = "<prompt>", **more: float) -> str:
    """A prompt file's text with the knobs given set (rounded by `knob_text`): `temperature`
    and `bias` (the audio path's), and any of `text_temperature`, `text_bias`,
    `audio_weight`, `text_weight`. An existing line's value is replaced, its comment kept;
    a missing one is added after the last top-level key. Every other line stays byte for
    byte, so the change reads as a small diff. Raises ValueError for a value outside the
    file's limits, PromptError for a text that is not a prompt file or a rewrite that would
    not read back."""
    given = {k: v for k, v in {"temperature": temperature, "bias": bias, **more}.items() if v is not None}
    for key, value in given.items():
        if key not in KNOB_LIMITS:
            raise ValueError(f"{key!r} is not a knob ({', '.join(KNOBS)})")
        problem = knob_problem(key, float(value))
        if problem:
            raise ValueError(f"{key} {problem}, not {value!r}")
    before = parse_prompt_file(text, "prompt", source)
    values = {k: knob_text(v) for k, v in given.items()}
    try:
        found, last = _top_level(text, source)
    except ValueError as exc:  # PromptError included: a value that does not end where TOML says
        raise exc if isinstance(exc, PromptError) else PromptError(
            f"cannot find the top-level keys: {exc}; set the knobs by hand", source) from None
    newline = "\r\n" if "\r\n" in text else "\n"
    edits = [(start, end, values[k]) for k, (start, end) in found.items() if k in values]
    added = "".join(f"{newline}{k} = {values[k]}" for k in KNOBS if k in values and k not in found)
    if added:
        at = last - 1 if last > 0 and text[last - 1] == "\r" and newline == "\r\n" else last
        edits.append((at, at, added))
    new = text
    for start, end, value in sorted(edits, reverse=True):
        new = new[:start] + value + new[end:]
    wanted = {k: float(v) for k, v in values.items()}
    after = parse_prompt_file(new, "prompt", source)
    if {k: getattr(after, k) for k in wanted} != wanted or \
            replace(after, **{k: getattr(before, k) for k in wanted}) != before:
        raise PromptError("setting the knobs did not read back as written", source)
    return new
