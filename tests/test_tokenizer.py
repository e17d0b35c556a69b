"""emoclap.tokenizer (no transformers) against transformers' BertJapaneseTokenizer on a
LINE-DistilBERT-shaped tokenizer: the same ids and masks, hostile input included."""
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emoclap.bundle import BundleError, check_tokenizer_section
from emoclap.tokenizer import MecabSentencepieceTokenizer, TokenizerError, open_text_tokenizer
from tests.japanese import REPO, build_bert_japanese, japanese_sentences
from trainer.tokenization import (load_bert_japanese, tokenize_slow, tokenizer_from_state, tokenizer_state,
                                  write_runtime_tokenizer)

MAX_TOKENS = 32
HOSTILE = [
    "", " ", "\u3000\t\n", "私の気持ちは心地よいです。" * 20, "とても" * 200,
    "I want to BUY it. Hello World!", "このiPhone 15 Proは128GBです。", "ＡＢＣＤ１２３　ｘｙｚ",
    "ｶﾀｶﾅﾃﾞｽ ｺｰﾋｰ ﾊﾟﾝ", "😀👍🏽 最高です🎉", "①②③ Ⅸ世紀 ㈱ ㌔ ﾟ", "1,000円、2,500,000円、3,", "café naïve Ångström",
    "``quoted'' and \"double\"", "[MASK]です [CLS] [SEP]<pad><unk>", "[mask] [Mask]", "a[MASK]b", "\u200bゼロ幅\u200d",
    "𠮷野家の𩸽", "ﾞﾟ", "!!!???。。。", "ー", "\ufeffBOM", "   先頭と末尾の空白   ",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers' tokenizer, the runtime one read from its exported files)."""
    source = build_bert_japanese(tmp_path_factory.mktemp("line-tokenizer"))
    hf = load_bert_japanese(str(source), MAX_TOKENS)
    bundle = tmp_path_factory.mktemp("bundle")
    section = write_runtime_tokenizer(hf, bundle)
    return hf, open_text_tokenizer(bundle, section, MAX_TOKENS), bundle, section


def same(hf, runtime, texts):
    ids, mask = tokenize_slow(hf, texts)
    got_ids, got_mask = runtime.encode_batch(texts)
    assert got_ids.dtype == np.int64 and got_mask.dtype == np.int64
    assert got_ids.tolist() == ids.tolist(), texts
    assert got_mask.tolist() == mask.tolist(), texts


def test_the_section_names_the_kind_and_its_files(pair):
    _, runtime, bundle, section = pair
    assert section["kind"] == "mecab-sentencepiece" and (bundle / section["file"]).is_file()
    assert section["mecab"]["dictionary"] == "unidic_lite" and section["do_lower_case"] is True
    assert {t["content"] for t in section["added_tokens"]} >= {"[CLS]", "[SEP]", "<pad>", "<unk>", "[MASK]"}
    assert check_tokenizer_section(json.loads(json.dumps(section)), "here") == "mecab-sentencepiece"
    assert isinstance(runtime, MecabSentencepieceTokenizer) and runtime.kind == "mecab-sentencepiece"


@pytest.mark.parametrize("text", japanese_sentences() + HOSTILE)
def test_same_ids_one_sentence(pair, text):
    hf, runtime, _, _ = pair
    same(hf, runtime, [text])


def test_same_ids_and_padding_in_one_batch(pair):
    hf, runtime, _, _ = pair
    same(hf, runtime, HOSTILE + japanese_sentences())
    ids, mask = runtime.encode_batch(HOSTILE)
    assert ids.shape[1] == MAX_TOKENS and mask[0].sum() == 2  # "" → [CLS] [SEP]
    assert runtime.encode_batch([])[0].shape == (0, 0)


@pytest.mark.parametrize("max_tokens", [2, 3, 9, 64])
def test_truncation_matches_at_every_limit(pair, max_tokens):
    hf, _, bundle, section = pair
    hf_short = load_bert_japanese(hf.name_or_path, max_tokens)
    same(hf_short, open_text_tokenizer(bundle, section, max_tokens), ["私の気持ちは心地よいです。" * 5, "はい。", ""])


JAPANESE = st.one_of(
    st.characters(min_codepoint=0x3041, max_codepoint=0x3096),   # hiragana
    st.characters(min_codepoint=0x30A1, max_codepoint=0x30FC),   # katakana
    st.characters(min_codepoint=0xFF61, max_codepoint=0xFF9F),   # half-width katakana
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),   # kanji
    st.characters(min_codepoint=0xFF01, max_codepoint=0xFF5E),   # full-width ASCII
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),       # ASCII
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1F64F),  # emoji
    st.sampled_from(["。", "、", "！", "？", "「", "」", "ー", "\u3000", " ", "\t", "\n", "é", "\u0301"]),
)
PIECES = st.one_of(st.text(JAPANESE, max_size=30), st.sampled_from(["[MASK]", "[CLS]", "<unk>", "1,000", "です。"]),
                   st.sampled_from(japanese_sentences()))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.lists(PIECES, max_size=6).map("".join), min_size=1, max_size=4))
def test_random_japanese_text(pair, texts):
    hf, runtime, _, _ = pair
    same(hf, runtime, texts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(word=st.one_of(st.text(JAPANESE, max_size=12), st.sampled_from(["1,000", "12,00,", "a00,b", "``x''", " 00, "])))
def test_sentencepiece_step_alone(pair, word):
    """One MeCab word → pieces, without MeCab: inputs MeCab would never produce (spaces,
    digits with commas, quotes) reach every branch of the piece rules."""
    hf, runtime, _, _ = pair
    assert runtime.word_pieces(word) == hf.subword_tokenizer.tokenize(word)


def test_added_tokens_and_never_split(tmp_path):
    """Tokens added to the tokenizer (overlapping, stripping, single-word) and MeCab words
    kept in their case, which LINE's configuration happens not to use."""
    from transformers import AddedToken

    source = build_bert_japanese(tmp_path / "tok", never_split=["LINE", "iPhone"])
    hf = load_bert_japanese(str(source), MAX_TOKENS)
    hf.add_tokens([AddedToken("ほん"), AddedToken("ほんとう"), AddedToken("<<x>>", lstrip=True, rstrip=True),
                   AddedToken("ぜひ", single_word=True)])
    hf.add_tokens([AddedToken("[BRAND]", lstrip=True)], special_tokens=True)
    runtime = open_text_tokenizer(tmp_path, write_runtime_tokenizer(hf, tmp_path), MAX_TOKENS)
    texts = ["ほんとうですか、ほんですか。", "LINEとiPhoneとline", "a  <<x>>  b", "ぜひ ぜひ。あぜひい",
             "新しい [BRAND] です", "[BRAND][BRAND]"]
    same(hf, runtime, texts)
    assert len(set(runtime.encode_batch(["LINE"])[0][0]) - set(runtime.encode_batch(["line"])[0][0])) > 0


def test_checkpoint_state_rebuilds_the_same_tokenizer(pair):
    hf, _, _, _ = pair
    rebuilt = tokenizer_from_state(tokenizer_state(hf))
    texts = HOSTILE + japanese_sentences()
    assert tokenize_slow(rebuilt, texts)[0].tolist() == tokenize_slow(hf, texts)[0].tolist()


def test_the_runtime_tokenizer_needs_neither_torch_nor_transformers(pair):
    hf, _, bundle, section = pair
    (bundle / "section.json").write_text(json.dumps(section))
    code = ("import json, sys; from pathlib import Path; from emoclap.tokenizer import open_text_tokenizer; "
            f"folder = Path({str(bundle)!r}); section = json.loads((folder / 'section.json').read_text()); "
            f"ids, _ = open_text_tokenizer(folder, section, {MAX_TOKENS}).encode_batch(['私の気持ちは心地よいです。']); "
            "print(json.dumps([ids.tolist(), sorted({'torch', 'transformers'} & set(sys.modules))]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout
    ids, heavy = json.loads(out)
    assert heavy == [] and ids == tokenize_slow(hf, ["私の気持ちは心地よいです。"])[0].tolist()


def test_missing_japanese_packages_are_named(pair, monkeypatch):
    _, _, bundle, section = pair
    monkeypatch.setitem(sys.modules, "fugashi", None)  # import fugashi now fails
    with pytest.raises(TokenizerError, match=r"needs the Python package 'fugashi': install emoclap\[ja\]"):
        open_text_tokenizer(bundle, section, MAX_TOKENS)


@pytest.mark.parametrize("change, message", [
    ({"kind": "wordpiece"}, "'tokenizer.kind' is 'wordpiece'"),
    ({"mecab": {"option": ""}}, "'tokenizer.mecab.dictionary' is missing"),
    ({"cls_id": True}, "'tokenizer.cls_id' has the wrong type"),
    ({"added_tokens": [{"content": "[CLS]", "id": "2"}]}, r"'tokenizer.added_tokens\[0\].id' has the wrong type"),
    ({"never_split": [3]}, r"'tokenizer.never_split\[0\]' has the wrong type"),
    ({"mecab": {"dictionary": "jumandic", "option": "", "normalize_text": True}}, "unknown MeCab dictionary"),
])
def test_bad_sections_are_refused_naming_the_field(pair, change, message):
    _, _, bundle, section = pair
    with pytest.raises(BundleError, match=message):
        open_text_tokenizer(bundle, {**section, **change}, MAX_TOKENS)
