"""The text tower's tokenizer in the trainer: a fast `tokenizers.Tokenizer`, or the slow
BERT-Japanese one (MeCab + SentencePiece, e.g. LINE DistilBERT's, which has no
tokenizer.json); its state in a checkpoint, and its runtime form in a bundle."""
from __future__ import annotations

import importlib.metadata
import tempfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

MECAB_SENTENCEPIECE = "mecab-sentencepiece"
SPIECE_FILE = "spiece.model"
# BertJapaneseTokenizer's arguments that a checkpoint keeps to rebuild it; the rest are
# defaults or come from the SentencePiece model itself.
_INIT_KEYS = ("do_lower_case", "never_split", "mecab_kwargs", "unk_token", "sep_token", "pad_token",
              "cls_token", "mask_token", "bos_token", "eos_token")


def is_bert_japanese(source: str) -> bool:
    """Whether the tokenizer at `source` (hub id or folder) is BERT-Japanese with MeCab words
    and SentencePiece pieces. Read from its tokenizer_config.json, so that LINE DistilBERT's
    own copy of the class (remote code) is never run: transformers' class is the same."""
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    config = get_tokenizer_config(source)
    return (config.get("word_tokenizer_type") == "mecab"
            and config.get("subword_tokenizer_type") == "sentencepiece")


def load_bert_japanese(source: str, max_tokens: int):
    """transformers' BertJapaneseTokenizer for `source`, truncating to `max_tokens`."""
    from transformers import BertJapaneseTokenizer

    tok = BertJapaneseTokenizer.from_pretrained(source, model_max_length=max_tokens)
    check_runtime_equivalent(tok, source)
    return tok


def check_runtime_equivalent(tok, source: str) -> None:
    """Refuse a configuration that emoclap.tokenizer would not reproduce."""
    wanted = {"word_tokenizer_type": "mecab", "subword_tokenizer_type": "sentencepiece",
              "do_word_tokenize": True, "do_subword_tokenize": True, "special_tokens_pattern": "cls_sep",
              "padding_side": "right", "truncation_side": "right", "split_special_tokens": False}
    for key, value in wanted.items():
        if getattr(tok, key, value) != value:
            raise ValueError(f"{source}: tokenizer setting {key} = {getattr(tok, key)!r} is not supported "
                             f"(the bundle's runtime tokenizer needs {value!r})")


def is_fast(tokenizer) -> bool:
    return isinstance(tokenizer, Tokenizer)


def tokenize_slow(tok, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok(list(texts), padding=True, truncation=True, max_length=tok.model_max_length,
              return_attention_mask=True)
    return (torch.tensor(enc["input_ids"], dtype=torch.long).reshape(len(texts), -1),
            torch.tensor(enc["attention_mask"], dtype=torch.long).reshape(len(texts), -1))


def tokenizer_state(tokenizer) -> str | dict[str, Any]:
    """What a checkpoint keeps: tokenizer.json text (as always), or the BERT-Japanese
    tokenizer's SentencePiece model and arguments, so export needs no download."""
    if is_fast(tokenizer):
        return tokenizer.to_str()
    init = {k: tokenizer.init_kwargs[k] for k in _INIT_KEYS if k in tokenizer.init_kwargs}
    init = {k: str(v) if k.endswith("_token") and v is not None else v for k, v in init.items()}
    added = [{"id": i, "content": t.content, "lstrip": t.lstrip, "rstrip": t.rstrip,
              "single_word": t.single_word, "normalized": t.normalized, "special": t.special}
             for i, t in tokenizer.added_tokens_decoder.items()]
    return {"kind": MECAB_SENTENCEPIECE, "init": init, "added_tokens": added,
            "max_tokens": tokenizer.model_max_length,
            "spiece_model": tokenizer.subword_tokenizer.sp_model.serialized_model_proto()}


def tokenizer_from_state(state: str | dict[str, Any]):
    if isinstance(state, str):
        return Tokenizer.from_str(state)
    from transformers import AddedToken, BertJapaneseTokenizer

    added = {t["id"]: AddedToken(t["content"], lstrip=t["lstrip"], rstrip=t["rstrip"],
                                 single_word=t["single_word"], normalized=t["normalized"], special=t["special"])
             for t in state["added_tokens"]}
    with tempfile.TemporaryDirectory() as tmp:
        spm = Path(tmp) / SPIECE_FILE
        spm.write_bytes(state["spiece_model"])  # read once, at construction
        return BertJapaneseTokenizer(None, spm_file=str(spm), word_tokenizer_type="mecab",
                                     subword_tokenizer_type="sentencepiece", added_tokens_decoder=added,
                                     model_max_length=state["max_tokens"], **state["init"])


def write_runtime_tokenizer(tokenizer, folder: Path) -> dict[str, Any]:
    """Write the tokenizer's files into the bundle folder; returns the manifest's
    `tokenizer` section (kind, file and every setting emoclap.tokenizer needs)."""
    folder = Path(folder)
    if is_fast(tokenizer):
        tokenizer.save(str(folder / "tokenizer.json"))
        return {"kind": "fast", "file": "tokenizer.json"}
    words, pieces = tokenizer.word_tokenizer, tokenizer.subword_tokenizer
    (folder / SPIECE_FILE).write_bytes(pieces.sp_model.serialized_model_proto())
    mecab = dict(tokenizer.mecab_kwargs or {})
    dictionary = mecab.get("mecab_dic", "unidic_lite")
    specials = [t for t in tokenizer.all_special_tokens if t not in words.never_split]
    section = {
        "kind": MECAB_SENTENCEPIECE, "file": SPIECE_FILE,
        "do_lower_case": bool(words.do_lower_case),
        # MeCab leaves these words' case alone: its own list plus every special token.
        "never_split": [*words.never_split, *specials],
        "mecab": {"dictionary": dictionary, "option": mecab.get("mecab_option") or "",
                  "normalize_text": bool(words.normalize_text)},
        "sentencepiece": {"remove_space": bool(pieces.remove_space), "keep_accents": bool(pieces.keep_accents),
                          "do_lower_case": bool(pieces.do_lower_case)},
        "added_tokens": [{"content": t.content, "id": i, "lstrip": t.lstrip, "rstrip": t.rstrip,
                          "single_word": t.single_word} for i, t in tokenizer.added_tokens_decoder.items()],
        "cls_id": tokenizer.cls_token_id, "sep_id": tokenizer.sep_token_id, "pad_id": tokenizer.pad_token_id,
    }
    if dictionary:  # provenance: another dictionary release may split words differently
        try:
            section["mecab"]["dictionary_version"] = importlib.metadata.version(dictionary.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            pass
    return section


def configure_tokenizer(tok: Tokenizer, max_tokens: int, pad_id: int, pad_token: str) -> Tokenizer:
    # Truncation and padding live in tokenizer.json so the runtime tokenises exactly as training did.
    tok.enable_truncation(max_length=max_tokens)
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tok


def tokenize(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    if not is_fast(tokenizer):
        return tokenize_slow(tokenizer, texts)
    encs = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encs], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.long)
    return ids, mask
