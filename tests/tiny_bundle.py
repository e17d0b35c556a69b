"""A tiny but real model bundle: HuBERT- and BERT-shaped towers with random weights,
exported to ONNX, a WordPiece tokenizer trained on the shipped prompts, and a manifest."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, HubertConfig, HubertModel

from daemon.bundle import write_manifest
from daemon.prompts import load_prompt_dir
from tests.towers import AudioEmbedder, TextEmbedder, export_audio, export_text

REPO = Path(__file__).resolve().parent.parent
DIM = 16
MAX_TOKENS = 24
EXTRA_TEXT = ["I feel calm and happy today.", "This is far too expensive for me.",
              "I am so tired.", "Tell me more about it."]


def tiny_tokenizer(texts: list[str], max_tokens: int = MAX_TOKENS) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.train_from_iterator(texts, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.enable_truncation(max_length=max_tokens)
    return tok


def audio_config(**overrides) -> HubertConfig:
    cfg = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
               feat_extract_norm="group")
    cfg.update(overrides)
    config = HubertConfig(**cfg)
    config._attn_implementation = "eager"
    return config


def build_tiny_bundle(folder: Path, seed: int = 0, languages=("en", "ja")) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        emotions = load_prompt_dir(REPO / "prompts")
        texts = [s for e in emotions.values() for p in (e.negative, e.positive) for s in p.texts()]
        tok = tiny_tokenizer(texts + EXTRA_TEXT)
        tok.save(str(folder / "tokenizer.json"))
        export_audio(AudioEmbedder(HubertModel(audio_config()), DIM), folder / "audio_encoder.onnx")
        bert = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=MAX_TOKENS + 8)
        bert._attn_implementation = "eager"
        export_text(TextEmbedder(BertModel(bert, add_pooling_layer=False), DIM), folder / "text_encoder.onnx")
    finally:
        torch.set_num_threads(threads)
    write_manifest(folder, {
        "description": "Tiny test model with random weights",
        "sample_rate": 16000, "embedding_dim": DIM, "logit_scale": 20.0,
        "languages": list(languages),
        "audio_encoder": {"file": "audio_encoder.onnx", "precision": "fp32", "min_samples": 400},
        "text_encoder": {"file": "text_encoder.onnx", "max_tokens": MAX_TOKENS},
        "tokenizer": {"file": "tokenizer.json"},
        "sources": {"audio": "tiny-hubert (random)", "text": "tiny-bert (random)"},
        "training": {}, "metrics": {},
    })
    return folder


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A tiny real bundle, built once per test run (import this fixture into a test
    module to use it); tests must not modify it, copy it with `copy_bundle` instead."""
    folder = tmp_path_factory.getbasetemp() / "tiny-bundle"
    if not (folder / "manifest.json").exists():
        build_tiny_bundle(folder)
    return folder
