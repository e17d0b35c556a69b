"""The text tokenizer a bundle specifies: sentences → token ids and attention masks for
the text encoder, exactly as the trainer tokenised them.

Two kinds (the manifest's `tokenizer.kind`): `fast`, a tokenizer.json read with the
`tokenizers` library, and `mecab-sentencepiece`, the BERT-Japanese scheme (MeCab words,
then SentencePiece pieces per word) of LINE DistilBERT and its kin, which has no
tokenizer.json. The second reproduces transformers' BertJapaneseTokenizer step by step
without transformers; it needs fugashi, unidic-lite and sentencepiece (`emoclap[ja]`).
"""
from __future__ import annotations

import importlib
import os
import re
import unicodedata
from pathlib import Path

import numpy as np

from emoclap.bundle import Bundle, BundleError, check_tokenizer_section

SPIECE_UNDERLINE = "▁"
# MeCab dictionaries by the name transformers' MecabTokenizer takes (`mecab_dic`): the
# Python package that ships each one.
MECAB_DICTIONARIES = {"unidic_lite": "unidic_lite", "unidic": "unidic", "ipadic": "ipadic"}


class TokenizerError(BundleError):
    """The bundle's tokenizer cannot be loaded here (file unreadable, package missing)."""


class TextTokenizer:
    """Common interface: `encode_batch(texts)` → (ids, mask), both int64 [n, T], padded on
    the right to the longest row, every row truncated to `max_tokens`."""

    kind = ""

    def __init__(self, max_tokens: int, pad_id: int):
        self.max_tokens = max_tokens
        self.pad_id = pad_id

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = [self.encode(t) for t in texts]
        width = max((len(r) for r in rows), default=0)
        ids = np.full((len(rows), width), self.pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        return ids, mask


class FastTokenizer(TextTokenizer):
    """tokenizer.json: normalisation, pieces and [CLS]/[SEP] as the `tokenizers` library does them."""

    kind = "fast"

    def __init__(self, path: Path, max_tokens: int):
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises plain Exceptions
            raise TokenizerError(f"{path}: cannot load tokenizer: {exc}") from None
        self.tokenizer.enable_truncation(max_length=max_tokens)
        padding = self.tokenizer.padding or {}
        pad_token = padding.get("pad_token", "[PAD]")
        pad_id = padding.get("pad_id", self.tokenizer.token_to_id(pad_token) or 0)
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        super().__init__(max_tokens, pad_id)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer.encode_batch(list(texts))
        width = len(enc[0].ids) if enc else 0
        ids = np.array([e.ids for e in enc], np.int64).reshape(len(enc), width)
        mask = np.array([e.attention_mask for e in enc], np.int64).reshape(len(enc), width)
        return ids, mask


def _need(module: str, path: Path, fix: str = "install emoclap[ja]"):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TokenizerError(f"{path}: this bundle's tokenizer (mecab-sentencepiece) needs the Python "
                             f"package {module!r}: {fix}") from None


def mecab_arguments(dictionary: str | None, option: str, path: Path) -> str:
    """The MeCab command line transformers builds: the dictionary package's folder and its
    own mecabrc first, so no system-wide MeCab configuration is read."""
    if dictionary is None:
        return option
    if dictionary not in MECAB_DICTIONARIES:
        raise TokenizerError(f"{path}: unknown MeCab dictionary {dictionary!r} "
                             f"(known: {', '.join(MECAB_DICTIONARIES)})")
    package = MECAB_DICTIONARIES[dictionary]
    fix = "install emoclap[ja]" if package == "unidic_lite" else f"pip install {package}"
    dic_dir = _need(package, path, fix).DICDIR
    if not os.path.isdir(dic_dir):
        raise TokenizerError(f"{path}: the {dictionary} dictionary's files are not installed ({dic_dir})")
    mecabrc = os.path.join(dic_dir, "mecabrc")
    return f'-d "{dic_dir}" -r "{mecabrc}" ' + option


class MecabSentencepieceTokenizer(TextTokenizer):
    """transformers' BertJapaneseTokenizer with word_tokenizer_type "mecab" and
    subword_tokenizer_type "sentencepiece", as its slow (Python) code runs:

    1. split the text on added tokens (the special tokens), which pass through whole;
    2. each other part: NFKC, MeCab words, words lower-cased unless in never_split;
    3. each word: whitespace collapsed, SentencePiece pieces, "9," pieces re-split;
    4. pieces → ids (added tokens first, then the SentencePiece model, <unk> for the rest);
    5. truncate to max_tokens - 2, then [CLS] ids [SEP].
    """

    kind = "mecab-sentencepiece"

    def __init__(self, path: Path, settings: dict, max_tokens: int):
        fugashi = _need("fugashi", path)
        spm = _need("sentencepiece", path)
        mecab = settings["mecab"]
        try:
            self.tagger = fugashi.GenericTagger(mecab_arguments(mecab["dictionary"], mecab["option"], path))
        except RuntimeError as exc:
            raise TokenizerError(f"{path}: cannot start MeCab: {exc}") from None
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"{path}: cannot load the SentencePiece model: {exc}") from None
        self.normalize_text = mecab["normalize_text"]
        self.lower_case = settings["do_lower_case"]
        self.never_split = set(settings["never_split"])
        self.sp_settings = settings["sentencepiece"]
        self.added = {t["content"]: t for t in settings["added_tokens"]}
        # Longest first: the regex then takes, at the leftmost match, the longest added
        # token, which is how transformers' trie splits.
        names = sorted(self.added, key=len, reverse=True)
        self.added_pattern = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None
        self.cls_id, self.sep_id = settings["cls_id"], settings["sep_id"]
        super().__init__(max_tokens, settings["pad_id"])

    def _split_added(self, text: str) -> list[str]:
        parts = [p for p in self.added_pattern.split(text) if p] if self.added_pattern else [text]
        for i, part in enumerate(parts):
            token = self.added.get(part)
            if token is None:
                continue
            left = parts[i - 1] if i > 0 else None
            right = parts[i + 1] if i < len(parts) - 1 else None
            if token["rstrip"] and right:
                parts[i + 1] = right.lstrip()
            if token["lstrip"] and left:
                parts[i - 1] = left.rstrip()
            if token["single_word"]:
                if left and left[-1] != " ":
                    parts[i - 1] += part
                    parts[i] = ""
                elif right and right[0] != " ":
                    parts[i + 1] = part + parts[i + 1]
                    parts[i] = ""
        return parts

    def words(self, text: str) -> list[str]:
        if self.normalize_text:
            text = unicodedata.normalize("NFKC", text)
        words = []
        for node in self.tagger(text):
            word = node.surface
            if self.lower_case and word not in self.never_split:
                word = word.lower()
            words.append(word)
        return words

    def word_pieces(self, word: str) -> list[str]:
        opts = self.sp_settings
        if opts["remove_space"]:
            word = " ".join(word.strip().split())
        word = word.replace("``", '"').replace("''", '"')
        if not opts["keep_accents"]:
            word = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))
        if opts["do_lower_case"]:
            word = word.lower()
        pieces = []
        for piece in self.sp.encode(word, out_type=str):
            # ALBERT's rule, kept by BertJapaneseTokenizer: "1,000" keeps its comma apart.
            if len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit():
                parts = self.sp.EncodeAsPieces(piece[:-1].replace(SPIECE_UNDERLINE, ""))
                if piece[0] != SPIECE_UNDERLINE and parts[0][0] == SPIECE_UNDERLINE:
                    if len(parts[0]) == 1:
                        parts = parts[1:]
                    else:
                        parts[0] = parts[0][1:]
                parts.append(piece[-1])
                pieces.extend(parts)
            else:
                pieces.append(piece)
        return pieces

    def tokens(self, text: str) -> list[str]:
        out = []
        for part in self._split_added(text):
            if not part:
                continue
            if part in self.added:
                out.append(part)
            else:
                out.extend(p for word in self.words(part) for p in self.word_pieces(word))
        return out

    def encode(self, text: str) -> list[int]:
        ids = [self.added[t]["id"] if t in self.added else self.sp.PieceToId(t) for t in self.tokens(text)]
        return [self.cls_id, *ids[:max(self.max_tokens - 2, 0)], self.sep_id]


def open_text_tokenizer(folder: Path, section: dict, max_tokens: int) -> TextTokenizer:
    """The tokenizer a manifest's `tokenizer` section describes, its files in `folder`
    (the export checks a bundle's tokenizer with it before the manifest exists)."""
    kind = check_tokenizer_section(section, f"{folder}: tokenizer")
    path = Path(folder) / section.get("file", "tokenizer.json")
    if kind == "mecab-sentencepiece":
        return MecabSentencepieceTokenizer(path, section, max_tokens)
    return FastTokenizer(path, max_tokens)


def load_text_tokenizer(bundle: Bundle) -> TextTokenizer:
    """The tokenizer `bundle` specifies, truncating to its `max_tokens`."""
    return open_text_tokenizer(bundle.folder, bundle.manifest["tokenizer"], bundle.max_tokens)
