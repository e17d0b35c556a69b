"""Paraphrase augmentation: an LLM rewrites each class description N ways.

Any OpenAI-compatible chat-completions server works. Every valid answer is cached on
disk under a hash of (model, prompt), so rerunning costs no requests. Paraphrases are
written into the prompt files themselves, after the canonical sentence: the runtime
and the trainer then read the same sentences, and a review is a plain diff.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from emoclap.prompts import MAX_SENTENCE_CHARS, POLES, add_sentences, emotion_name, parse_prompt_file

LANGUAGE_NAMES = {"en": "English", "ja": "Japanese", "de": "German", "fr": "French", "es": "Spanish",
                  "zh": "Chinese", "ko": "Korean", "it": "Italian", "pt": "Portuguese", "nl": "Dutch"}


class ParaphraseError(RuntimeError):
    """The LLM could not deliver; the message says which server, model and why. `accepted`:
    the paraphrases of the pole at hand accepted before it stopped."""

    accepted: list[str] = []


@dataclass(frozen=True)
class PoleOutcome:
    pole: str  # "emotion.pole"
    kept: int
    asked: int

    @property
    def short(self) -> bool:
        return self.kept < self.asked


@dataclass
class ParaphraseOptions:
    model: str = "gpt-4o"
    base_url: str | None = None  # None: the openai client's default (or OPENAI_BASE_URL)
    api_key: str | None = None  # None: EMOCLAP_LLM_API_KEY, then OPENAI_API_KEY
    n: int = 10
    cache_dir: Path = Path("var/paraphrase-cache")
    temperature: float = 1.0
    max_rounds: int = 6  # re-asks for replacements of rejected paraphrases
    max_attempts: int = 6  # per request: network errors, rate limits, malformed answers
    backoff_s: float = 1.0
    timeout_s: float = 120.0
    # Sent as the request's response_format: a local server can then constrain a small
    # model's output to the JSON array asked for (llama-cpp-python takes a JSON schema).
    response_format: dict | None = None
    # A bound on each answer's length (the request's max_tokens): a small model that
    # loses the thread otherwise writes until its context is full.
    max_tokens: int | None = None


def normalise(text: str) -> str:
    """For repeat detection: width/case folded, punctuation and spacing ignored."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return re.sub(r"\s+", " ", text).strip()


def unusable(text: str) -> bool:
    """A sentence a prompt file cannot hold (too long, a NUL) or should not (control characters)."""
    return len(text) > MAX_SENTENCE_CHARS or any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)


def contains_word(text: str, word: str) -> bool:
    t, w = normalise(text), normalise(word)
    if w.isascii():  # whole words only, and inflections ("pleasantly") count too
        return re.search(rf"(?<![a-z]){re.escape(w)}", t) is not None
    # A Japanese adjective inflects its final い (心地よい: 心地よく, 心地よかった, 心地よさ).
    return w in t or (len(w) > 1 and w.endswith("い") and w[:-1] in t)


# One worked example per language, asked and answered before the real request: a small
# model copies the answer's form (a JSON array, the prohibited word left out) far more
# reliably than it follows the instruction alone. Emotionally neutral, so it pulls no pole.
DEMONSTRATIONS = {
    "en": ("The weather is nice today.", "weather",
           ["It is a lovely, sunny day.", "The sky is clear and bright today.", "Today is a beautiful day outside."]),
    "ja": ("今日は天気が良いです。", "天気",
           ["今日は晴れていて気持ちがいいです。", "今日は空がよく晴れています。", "今日は雲ひとつない青空です。"]),
}


def _request_text(sentence: str, n: int, language: str, prohibited: str, avoid: list[str], meaning: str) -> str:
    lang = LANGUAGE_NAMES.get(language, language)
    ask = (f'Paraphrase the following sentence in {n} different ways, in {lang}.\n'
           f'Sentence: "{sentence}"\n'
           f'Each paraphrase must keep the meaning{meaning}. '
           f'Prohibited word: "{prohibited}". No paraphrase may contain it.\n')
    if avoid:
        ask += "Do not repeat any of these sentences:\n" + "\n".join(f"- {s}" for s in avoid) + "\n"
    return ask + f"Answer with a JSON array of {n} strings and nothing else."


def messages_for(description: str, n: int, language: str, prohibited: str, avoid: list[str]) -> list[dict]:
    """The request, after the demonstration in `language` (English when it has none)."""
    demo_language = language if language in DEMONSTRATIONS else "en"
    sentence, word, answer = DEMONSTRATIONS[demo_language]
    return [{"role": "system", "content": "You are an imaginative assistant who writes varied, natural "
                                          "paraphrases of short sentences."},
            {"role": "user", "content": _request_text(sentence, len(answer), demo_language, word, [], "")},
            {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)},
            {"role": "user", "content": _request_text(description, n, language, prohibited, avoid,
                                                      ": a speaker describing how they feel")}]


def parse_answer(content: str | None) -> list[str]:
    """The JSON array of strings in an answer (code fences tolerated); ValueError otherwise."""
    if not content:
        raise ValueError("empty answer")
    text = content.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fenced:
        text = fenced.group(1).strip()
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end < start:
        raise ValueError(f"no JSON array in answer: {content[:80]!r}")
    try:
        items = json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"answer is not valid JSON ({exc}): {content[:80]!r}") from None
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ValueError(f"answer is not a list of strings: {content[:80]!r}")
    return [s.strip() for s in items if s.strip()]


class Paraphraser:
    def __init__(self, options: ParaphraseOptions, sleep=time.sleep):
        import openai

        self.opts = options
        self.sleep = sleep
        self.requests = 0
        self.last_rejections: Counter = Counter()  # reason -> count, of the last paraphrase() call
        key = options.api_key or os.environ.get("EMOCLAP_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise ParaphraseError("no API key: set EMOCLAP_LLM_API_KEY or OPENAI_API_KEY "
                                  "(any non-empty value for a local server)")
        # Retries are ours (Retry-After, malformed answers), so the client's are off.
        self.client = openai.OpenAI(api_key=key, base_url=options.base_url, max_retries=0,
                                    timeout=options.timeout_s)
        self.server = str(self.client.base_url)

    def _cache_path(self, messages: list[dict], repeat: int) -> Path:
        # A sampled model may answer the same prompt differently: each asking is its own entry.
        what = [self.opts.model, messages] + ([repeat] if repeat else [])
        key = hashlib.sha256(json.dumps(what, ensure_ascii=False, sort_keys=True).encode()).hexdigest()
        return Path(self.opts.cache_dir) / f"{key}.json"

    def ask(self, messages: list[dict], repeat: int = 0) -> list[str]:
        """The parsed answer to one prompt: from the cache, or asked with retries. `repeat`: how
        many times the same prompt was asked before (after an answer that gave nothing new)."""
        path = self._cache_path(messages, repeat)
        if path.is_file():
            return parse_answer(json.loads(path.read_text(encoding="utf-8"))["content"])
        content = self._request(messages)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"model": self.opts.model, "messages": messages, "content": content},
                                  ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(path)
        return parse_answer(content)

    def _request(self, messages: list[dict]) -> str:
        import openai

        where = f"{self.server} (model {self.opts.model})"
        last = "no attempt"
        for attempt in range(1, self.opts.max_attempts + 1):
            wait = self.opts.backoff_s * 2 ** (attempt - 1)
            try:
                self.requests += 1
                extra = {"response_format": self.opts.response_format} if self.opts.response_format else {}
                if self.opts.max_tokens:
                    extra["max_tokens"] = self.opts.max_tokens
                reply = self.client.chat.completions.create(model=self.opts.model, messages=messages,
                                                            temperature=self.opts.temperature, **extra)
                content = reply.choices[0].message.content if reply.choices else None
                parse_answer(content)
                return content
            except openai.RateLimitError as exc:
                retry_after = exc.response.headers.get("retry-after")
                try:
                    wait = float(retry_after) if retry_after is not None else wait
                except ValueError:
                    pass
                last = f"rate limited (429), retry after {wait:g} s"
            except (openai.APIConnectionError, openai.APITimeoutError) as exc:
                last = f"cannot reach the server: {exc}"
            except openai.InternalServerError as exc:
                last = f"server error {exc.status_code}: {exc.message}"
            except openai.APIStatusError as exc:
                raise ParaphraseError(f"{where}: request refused ({exc.status_code}): {exc.message}") from None
            except (ValueError, AttributeError, IndexError) as exc:
                last = f"malformed answer: {exc}"
            if attempt < self.opts.max_attempts:
                self.sleep(min(wait, 300.0))
        raise ParaphraseError(f"{where}: gave up after {self.opts.max_attempts} attempts; last: {last}")

    def paraphrase(self, description: str, language: str, prohibited: str, need: int,
                   existing: list[str] = (), judge=None) -> list[str]:
        """Up to `need` new paraphrases free of the prohibited word and of repeats, and accepted
        by `judge` (text -> reason for rejecting it, or None) when given: fewer when
        `max_rounds` rounds did not find them (`last_rejections` says why). A ParaphraseError
        (the server) carries what was accepted before it in `accepted`."""
        seen = {normalise(description), *(normalise(s) for s in existing)}
        # A small model may hand back the worked example's own sentences: those are repeats too.
        demo_sentence, _, demo_answer = DEMONSTRATIONS.get(language, DEMONSTRATIONS["en"])
        seen |= {normalise(s) for s in [demo_sentence, *demo_answer]}
        accepted: list[str] = []
        rejected: list[str] = []
        asked: Counter = Counter()  # prompt -> times asked in this call
        self.last_rejections = reasons = Counter()
        for _ in range(self.opts.max_rounds):
            if len(accepted) >= need:
                break
            avoid = list(existing) + accepted + rejected
            try:
                messages = messages_for(description, need - len(accepted), language, prohibited, avoid)
                key = json.dumps(messages, ensure_ascii=False)
                answer = self.ask(messages, asked[key])
                asked[key] += 1
            except ParaphraseError as exc:
                exc.accepted = accepted
                raise
            if not answer:  # a valid but empty list: not a rejection, but a round that gave nothing
                reasons["empty answer"] += 1
            for s in answer:
                reason = ("too long or control characters" if unusable(s) else
                          "prohibited word" if contains_word(s, prohibited) else
                          "repeat" if normalise(s) in seen or not normalise(s) else
                          judge(s) if judge else None)
                if reason:
                    rejected.append(s)
                    reasons[reason] += 1
                elif len(accepted) < need:
                    accepted.append(s)
                    seen.add(normalise(s))
        return accepted


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def augment_file(path: Path, para: Paraphraser, language: str, n: int, gate=None) -> list[PoleOutcome]:
    """Give each pole of one prompt file n paraphrases in `language`, writing the file after
    each pole, so what was accepted stays even when a pole ends short or the server fails.
    A `gate` (trainer.paraphrase_gate.Gate) judges each paraphrase and keeps the tally."""
    text = path.read_text(encoding="utf-8")
    name = emotion_name(path)
    emotion = parse_prompt_file(text, name, str(path))
    outcomes = []
    for pole in POLES:
        sents = getattr(emotion, pole).sentences.get(language)
        if not sents:
            raise ParaphraseError(f"{path}: [{pole}] has no {language!r} sentence to paraphrase")
        need = n - (len(sents) - 1)
        if need <= 0:
            continue
        judge = None
        if gate is not None:
            other = getattr(emotion, POLES[1 - POLES.index(pole)]).sentences.get(language) or sents[:1]
            judge = gate.judge(sents[0], other[0])
        new: list[str] = []
        try:
            new = para.paraphrase(sents[0], language, emotion.key_word_for(language), need, sents[1:], judge)
        except ParaphraseError as exc:
            new = list(exc.accepted)
            raise
        finally:
            if new:
                text = add_sentences(text, pole, language, new, str(path))
                _write(path, text)
            if gate is not None:
                gate.record(f"{name}.{pole}", para.last_rejections, len(new), need)
        outcomes.append(PoleOutcome(f"{name}.{pole}", len(new), need))
    return outcomes

