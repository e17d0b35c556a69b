"""The model bundle: a folder the trainer writes and the daemon verifies before use."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from emoclap.transcript import DecodingSpec, parse_spec

FORMAT = "emoclap-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_FILES = {
    "audio_encoder": "audio_encoder.onnx",
    "text_encoder": "text_encoder.onnx",
    "tokenizer": "tokenizer.json",
}
# What each tokenizer kind needs in the `tokenizer` section besides `file` (dotted path →
# JSON type). A section without `kind` is "fast": every bundle was, before kinds existed.
TOKENIZER_KINDS: dict[str, dict[str, Any]] = {
    "fast": {},
    "mecab-sentencepiece": {
        "do_lower_case": bool, "never_split": list, "added_tokens": list,
        "cls_id": int, "sep_id": int, "pad_id": int,
        "mecab.dictionary": (str, type(None)), "mecab.option": str, "mecab.normalize_text": bool,
        "sentencepiece.remove_space": bool, "sentencepiece.keep_accents": bool,
        "sentencepiece.do_lower_case": bool,
    },
}
# The optional transcriber (the text path): Whisper's decoder graphs and tokenizer.
TRANSCRIBER_FILES = ("cross", "step", "tokenizer")
ADDED_TOKEN_FIELDS = {"content": str, "id": int, "lstrip": bool, "rstrip": bool, "single_word": bool}


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the folder and what is wrong."""


@dataclass(frozen=True)
class Transcriber:
    """The bundle's transcriber: graphs that read each utterance's words from the audio
    tower's frames (`shares_audio_pass`), and how to decode them."""
    cross: Path
    step: Path
    tokenizer: Path
    language: str
    spec: DecodingSpec
    precision: str = "fp32"  # "int8": the graphs' matrix products quantised (faster, a few words differ)


# The audio encoder's matrix products: fp32; "int8", dynamically quantised (one activation
# scale per call, so the daemon runs it one utterance at a time); "int8-weights", 8-bit
# weights with activations quantised row by row (batch-independent).
AUDIO_PRECISIONS = ("fp32", "int8", "int8-weights")


@dataclass(frozen=True)
class Bundle:
    folder: Path
    manifest: dict[str, Any]
    sample_rate: int
    embedding_dim: int
    logit_scale: float
    languages: tuple[str, ...]
    audio_encoder: Path
    text_encoder: Path
    tokenizer: Path
    min_samples: int
    max_tokens: int
    precision: str
    # Identifies the exact weights: keys the prompt-embedding cache.
    hash: str
    description: str = ""
    tokenizer_kind: str = "fast"
    transcriber: Transcriber | None = None
    # Encoded in pieces (emoclap.pieces): `audio_encoder` is then the piece graph and
    # `audio_head` maps the merged statistics to the embedding.
    piece_samples: int = 0
    audio_head: Path | None = None
    head_reads_std: bool = False

    @property
    def single_row_only(self) -> bool:
        """Dynamic int8 scales activations over the whole batch, so batch mates would move
        each other's embeddings: its audio encoder runs one utterance per call."""
        return self.precision == "int8"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_names(fields: dict[str, Any]) -> dict[str, str]:
    names = {}
    for key, default in DEFAULT_FILES.items():
        section = fields.get(key) or {}
        names[key] = section.get("file", default) if isinstance(section, dict) else default
    return names


def write_manifest(folder: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Write `folder/manifest.json` from `fields`, adding format, version, time and hashes.

    The three model files must already be in `folder`; returns the manifest written.
    """
    folder = Path(folder)
    manifest: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                                "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    manifest.update({k: v for k, v in fields.items() if k not in ("format", "format_version", "files")})
    manifest.setdefault("description", "")
    for key, default in DEFAULT_FILES.items():
        section = dict(manifest.get(key) or {})
        section.setdefault("file", default)
        manifest[key] = section
    manifest["tokenizer"].setdefault("kind", "fast")
    check_tokenizer_section(manifest["tokenizer"], f"{folder}: cannot write manifest")
    files = {}
    extra = [manifest["transcriber"][k] for k in TRANSCRIBER_FILES] if manifest.get("transcriber") else []
    if manifest.get("audio_head"):
        extra.append(manifest["audio_head"]["file"])
    for name in [*_file_names(manifest).values(), *extra]:
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{folder}: cannot write manifest: {name} is missing")
        files[name] = sha256_file(path)
    manifest["files"] = files
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    return manifest


def _require(manifest: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in manifest:
        raise BundleError(f"{where}: field '{key}' is missing")
    value = manifest[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BundleError(f"{where}: field '{key}' has the wrong type ({type(value).__name__})")
    return value


def _has_type(value: Any, expected: Any) -> bool:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    # JSON true is not an integer, nor 1 a boolean.
    return any(value is None if k is type(None) else
               isinstance(value, k) and (k is bool or not isinstance(value, bool)) for k in kinds)


def check_tokenizer_section(section: dict, where: str) -> str:
    """The section's tokenizer kind, after checking every setting that kind needs."""
    kind = section.get("kind", "fast")
    if kind not in TOKENIZER_KINDS:
        raise BundleError(f"{where}: field 'tokenizer.kind' is {kind!r}; this emoclap reads "
                          f"{', '.join(TOKENIZER_KINDS)}")
    missing = object()
    fields = [(f"tokenizer.{k}", k.split("."), section, t) for k, t in TOKENIZER_KINDS[kind].items()]
    if "added_tokens" in TOKENIZER_KINDS[kind]:
        tokens = section.get("added_tokens") if isinstance(section.get("added_tokens"), list) else []
        fields += [(f"tokenizer.added_tokens[{i}].{k}", [k], token, t)
                   for i, token in enumerate(tokens) for k, t in ADDED_TOKEN_FIELDS.items()]
        words = section.get("never_split") if isinstance(section.get("never_split"), list) else []
        fields += [(f"tokenizer.never_split[{i}]", [], word, str) for i, word in enumerate(words)]
    for name, path, node, expected in fields:
        for part in path:
            node = node.get(part, missing) if isinstance(node, dict) else missing
        if node is missing:
            raise BundleError(f"{where}: field '{name}' is missing")
        if not _has_type(node, expected):
            raise BundleError(f"{where}: field '{name}' has the wrong type ({type(node).__name__})")
    return kind


def load_bundle(folder: str | Path, expected_sample_rate: int = 16_000) -> Bundle:
    """Read and verify a bundle; raises `BundleError` naming the field or file at fault."""
    folder = Path(folder)
    where = f"{folder / MANIFEST}"
    if not folder.is_dir():
        raise BundleError(f"{folder}: bundle folder does not exist")
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{where}: manifest is missing (not a model bundle?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{where}: not valid JSON: {exc}") from None
    except RecursionError:
        raise BundleError(f"{where}: not valid JSON: nested too deeply") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: manifest must be a JSON object")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{where}: field 'format' is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = _require(manifest, "format_version", int, where)
    if version != FORMAT_VERSION:
        raise BundleError(f"{where}: field 'format_version' is {version}; this emoclapd reads "
                          f"version {FORMAT_VERSION}")
    rate = _require(manifest, "sample_rate", int, where)
    if rate != expected_sample_rate:
        raise BundleError(f"{where}: field 'sample_rate' is {rate}, expected {expected_sample_rate}")
    dim = _require(manifest, "embedding_dim", int, where)
    if dim <= 0:
        raise BundleError(f"{where}: field 'embedding_dim' must be positive, got {dim}")
    scale = float(_require(manifest, "logit_scale", (int, float), where))
    if not 0 < scale < 1e4:
        raise BundleError(f"{where}: field 'logit_scale' must be a positive number, got {scale}")
    languages = _require(manifest, "languages", list, where)
    if not languages or not all(isinstance(x, str) and x for x in languages):
        raise BundleError(f"{where}: field 'languages' must be a non-empty list of language codes")
    sections = {key: _require(manifest, key, dict, where) for key in DEFAULT_FILES}
    hashes = _require(manifest, "files", dict, where)
    paths = {}
    for key, section in sections.items():
        name = section.get("file")
        if not isinstance(name, str) or not name:
            raise BundleError(f"{where}: field '{key}.file' is missing")
        if name not in hashes:
            raise BundleError(f"{where}: field 'files' has no sha256 for {name}")
        paths[key] = folder / name
    tokenizer_kind = check_tokenizer_section(sections["tokenizer"], where)
    for name, expected in hashes.items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{folder}: file {name} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(f"{folder}: file {name} does not match the manifest's sha256 "
                              f"(corrupt or replaced; expected {str(expected)[:12]}…, got {actual[:12]}…)")
    min_samples = sections["audio_encoder"].get("min_samples", 400)
    max_tokens = sections["text_encoder"].get("max_tokens", 64)
    for field, value in (("audio_encoder.min_samples", min_samples), ("text_encoder.max_tokens", max_tokens)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise BundleError(f"{where}: field '{field}' must be a positive integer, got {value!r}")
    precision = sections["audio_encoder"].get("precision", "fp32")
    if precision not in AUDIO_PRECISIONS:
        raise BundleError(f"{where}: field 'audio_encoder.precision' must be one of "
                          f"{', '.join(AUDIO_PRECISIONS)}, got {precision!r}")
    transcriber = _transcriber(manifest.get("transcriber"), folder, hashes, where)
    piece_samples, head, reads_std = _pieces(sections["audio_encoder"], manifest.get("audio_head"), folder,
                                             hashes, where)
    bundle_hash = hashlib.sha256(json.dumps(sorted(hashes.items())).encode()).hexdigest()
    return Bundle(folder=folder, manifest=manifest, sample_rate=rate, embedding_dim=dim,
                  logit_scale=scale, languages=tuple(languages),
                  audio_encoder=paths["audio_encoder"], text_encoder=paths["text_encoder"],
                  tokenizer=paths["tokenizer"], min_samples=min_samples, max_tokens=max_tokens,
                  precision=precision,
                  hash=bundle_hash, description=str(manifest.get("description", "")),
                  tokenizer_kind=tokenizer_kind, transcriber=transcriber,
                  piece_samples=piece_samples, audio_head=head, head_reads_std=reads_std)


HEAD_STATISTICS = ("mean", "mean+std")


def _pieces(audio: dict, head: Any, folder: Path, hashes: dict, where: str) -> tuple[int, Path | None, bool]:
    """A piece-encoded bundle's `audio_encoder.piece_samples` and `audio_head` section, or (0, None, False)."""
    samples = audio.get("piece_samples")
    if samples is None and head is None:
        return 0, None, False
    if samples is None or head is None:
        raise BundleError(f"{where}: fields 'audio_encoder.piece_samples' and 'audio_head' go together")
    if not isinstance(samples, int) or isinstance(samples, bool) or not 0 < samples <= 30 * 16_000:
        raise BundleError(f"{where}: field 'audio_encoder.piece_samples' must be a positive number of "
                          f"samples up to 30 s, got {samples!r}")
    if not isinstance(head, dict):
        raise BundleError(f"{where}: field 'audio_head' must be an object")
    name = head.get("file")
    if not isinstance(name, str) or not name:
        raise BundleError(f"{where}: field 'audio_head.file' is missing")
    if name not in hashes:
        raise BundleError(f"{where}: field 'files' has no sha256 for {name}")
    reads = head.get("statistics")
    if reads not in HEAD_STATISTICS:
        raise BundleError(f"{where}: field 'audio_head.statistics' must be one of {', '.join(HEAD_STATISTICS)}, "
                          f"got {reads!r}")
    return samples, folder / name, reads == "mean+std"


def _transcriber(section: Any, folder: Path, hashes: dict, where: str) -> Transcriber | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        raise BundleError(f"{where}: field 'transcriber' must be an object")
    paths = {}
    for key in TRANSCRIBER_FILES:
        name = section.get(key)
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise BundleError(f"{where}: field 'transcriber.{key}' must be a file name in the bundle")
        if name not in hashes:
            raise BundleError(f"{where}: field 'files' has no sha256 for {name}")
        paths[key] = folder / name
    language = section.get("language")
    if not isinstance(language, str) or not language:
        raise BundleError(f"{where}: field 'transcriber.language' must be a language code")
    if section.get("shares_audio_pass") is not True:
        raise BundleError(f"{where}: field 'transcriber.shares_audio_pass' must be true "
                          "(this emoclapd reads words from the audio encoder's own frames)")
    precision = section.get("precision", "fp32")
    if precision not in ("fp32", "int8"):
        raise BundleError(f"{where}: field 'transcriber.precision' must be \"fp32\" or \"int8\", got {precision!r}")
    try:
        spec = parse_spec(section, where)
    except ValueError as exc:
        raise BundleError(str(exc)) from None
    return Transcriber(language=language, spec=spec, precision=precision, **paths)
