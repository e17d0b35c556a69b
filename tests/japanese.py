"""A BERT-Japanese tokenizer folder shaped like LINE DistilBERT's (MeCab with unidic-lite,
then SentencePiece; its tokenizer_config.json, remote-code pointer included), with a
SentencePiece model trained here on Japanese text, so nothing is downloaded."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from emoclap.prompts import load_prompt_dir
from trainer.synth.script import SCENARIOS, SPEAKERS, write_dialogue

REPO = Path(__file__).resolve().parent.parent
# Kanji, katakana, numbers and Latin letters, which the kana-only synthetic dialogues lack.
MORE_TEXT = [
    "今日はとても良い天気ですね。", "この車は燃費が良くて、とても静かです。", "値段が高すぎると思います。",
    "もう少し考えさせてください。", "新しいスマートフォンのカメラは素晴らしいです。",
    "バッテリーは一日中持ちますか？", "旅行のプランについて詳しく教えてください。",
    "コーヒーメーカーを買いたいのですが、おすすめはありますか。", "LINEで連絡してもいいですか。",
    "三年間の保証が付いています。", "割引は10%です。合計は1,200円になります。",
    "彼は納得していないようでした。", "私はこの商品に興味があります。", "少し高いけれど、品質は良いですね。",
    "店員さんの説明はとても分かりやすかったです。", "残念ですが、今回は見送ります。",
    "本当にそうなんですか？信じられません。", "ぜひ試してみたいです！", "ソファの色は何種類ありますか。",
    "ジムの会員になると、プールとサウナが使えます。",
    "ＡＢＣ株式会社のiPhone 15 Proは128GBで、価格は149,800円です。", "The quick brown fox jumps over the lazy dog.",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 !?.,:;'\"()[]-+*/%&@#",
]
TOKENIZER_CONFIG = {  # LINE DistilBERT's, as published with the model
    "do_lower_case": True, "remove_space": True, "keep_accents": True,
    "bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "<unk>", "sep_token": "[SEP]",
    "pad_token": "<pad>", "cls_token": "[CLS]",
    "mask_token": {"content": "[MASK]", "single_word": False, "lstrip": True, "rstrip": False,
                   "normalized": False, "__type": "AddedToken"},
    "tokenize_chinese_chars": False, "tokenizer_class": "DistilBertJapaneseTokenizer",
    "word_tokenizer_type": "mecab", "subword_tokenizer_type": "sentencepiece",
    "mecab_kwargs": {"mecab_dic": "unidic_lite"},
    "auto_map": {"AutoTokenizer": ["distilbert_japanese_tokenizer.DistilBertJapaneseTokenizer", None]},
}


def japanese_sentences() -> list[str]:
    """The shipped prompts' Japanese sentences, synthetic sales dialogue and MORE_TEXT."""
    prompts = [s for e in load_prompt_dir(REPO / "prompts").values() for pole in (e.negative, e.positive)
               for s in pole.texts(["ja"])]
    dialogue = [turn.text for i, scenario in enumerate(SCENARIOS)
                for turn in write_dialogue(np.random.default_rng(i), scenario, SPEAKERS[0], SPEAKERS[1], 12, "ja")]
    return prompts + dialogue + MORE_TEXT


def words(tagger) -> list[str]:
    return [" ".join(w.surface for w in tagger(s)) for s in japanese_sentences()]


def build_bert_japanese(folder: Path, vocab_size: int = 600, **config) -> Path:
    """spiece.model (unigram; <pad> 0, <unk> 1, [CLS] [SEP] [MASK] as pieces, as in LINE's)
    and tokenizer_config.json in `folder`. Trained on MeCab's words, as the tokenizer will
    cut them, so that pieces span words' starts ("▁です") as in a real model. Every
    character seen is in the vocabulary (so a wrong normalisation shows as other ids, not
    as the same <unk>), and "00," is a piece, which brings the "digits and comma" rule into play.
    `config` overrides tokenizer_config.json's settings."""
    import fugashi
    import sentencepiece as spm

    from emoclap.tokenizer import mecab_arguments

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(words(fugashi.GenericTagger(mecab_arguments("unidic_lite", "", folder)))),
        model_writer=model, vocab_size=vocab_size,
        hard_vocab_limit=False, model_type="unigram", character_coverage=1.0, pad_id=0, unk_id=1,
        bos_id=-1, eos_id=-1, pad_piece="<pad>", unk_piece="<unk>",
        user_defined_symbols=["[CLS]", "[SEP]", "[MASK]", "00,"], minloglevel=2, num_threads=1)
    (folder / "spiece.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({**TOKENIZER_CONFIG, **config}, indent=2), encoding="utf-8")
    return folder
