"""configs/method.toml end to end: fit → export → `emoclapd score`, on towers of the
method's real architectures (HuBERT, DistilBERT with LINE's 32768-token vocabulary),
shrunk and randomly initialised, with a BERT-Japanese tokenizer (MeCab + SentencePiece)
shaped like LINE DistilBERT's, on synthetic Japanese speech. Nothing is downloaded."""
import json

import numpy as np
import pytest
import torch

from daemon import cli as daemon_cli
from emoclap.bundle import load_bundle
from tests.conftest import _need_speech_tools
from tests.japanese import build_bert_japanese
from trainer.cli import main as train
from trainer.synth.corpus import CorpusOptions, build_corpus

EMOTIONS = {"pleasant", "aroused", "dominant", "credible", "interested", "positive", "purchase_intention"}
# HubertConfig's defaults are rinna/japanese-hubert-base's (HuBERT-base: seven conv layers,
# 320× downsampling, group norm); only the widths and depth are cut.
AUDIO = {"model_type": "hubert", "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 96, "conv_dim": [32] * 7}
# LINE DistilBERT: vocabulary 32768 (6 layers, 768 wide, 12 heads there).
TEXT = {"model_type": "distilbert", "vocab_size": 32768, "dim": 48, "n_layers": 2, "n_heads": 4,
        "hidden_dim": 96}


@pytest.mark.slow
def test_method_config_fits_exports_and_scores_japanese(tmp_path, capsys):
    _need_speech_tools()
    torch.set_num_threads(1)  # the suite shares 2 cores
    corpus = tmp_path / "corpus"
    build_corpus(corpus, CorpusOptions.small(language="ja", tts="openjtalk"))  # kokoro: minutes
    tokenizer = build_bert_japanese(tmp_path / "line-tokenizer")

    run = tmp_path / "run"
    text = {"config": TEXT, "tokenizer": str(tokenizer)}
    assert train(["fit", str(corpus / "manifest.jsonl"), "--config", "configs/method.toml", "--out", str(run),
                  "--fold", "s1-car", "--device", "cpu", "--set", f"model.audio={{'config': {AUDIO!r}}}",
                  "--set", f"model.text={text!r}", "--set", "train.epochs=1", "--set", "train.batch_size=8"]) == 0
    bundle = tmp_path / "bundle"
    assert train(["export", str(run / "fold-s1-car" / "best.pt"), "--out", str(bundle)]) == 0
    out = capsys.readouterr().out
    parity = json.loads(out[out.rindex('{\n  "bundle"'):])["export_parity"]
    assert parity["fp32"]["text_min_cosine"] >= 0.9999 and parity["tokenizer_sentences"] > 12

    loaded = load_bundle(bundle)
    assert loaded.languages == ("ja",) and loaded.tokenizer_kind == "mecab-sentencepiece"
    assert loaded.tokenizer.name == "spiece.model" and "spiece.model" in loaded.manifest["files"]
    assert loaded.manifest["sources"] == {"audio": "random init (hubert)", "text": "random init (distilbert)"}
    _runtime_text_encoder_matches_torch(loaded, run / "fold-s1-car" / "best.pt")

    wav = corpus / "dialogues" / "s1-car-d1.wav"  # the held-out session's dialogue
    assert daemon_cli.main(["score", str(wav), "--bundle", str(bundle), "--prompts", "prompts",
                            "--cache", str(tmp_path / "cache.sqlite3"), "--role", "customer"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert {r["station"] for r in rows} == {"channel0", "channel1"}, captured.err
    for row in rows:
        assert set(row["scores"]) == EMOTIONS and all(0 <= v <= 1 for v in row["scores"].values())


def _runtime_text_encoder_matches_torch(bundle, checkpoint):
    """The daemon's text encoder (emoclap.tokenizer + ONNX) embeds the shipped Japanese
    prompts as the trained torch model does through transformers' tokenizer."""
    from daemon.encoder import TextEncoder
    from tests.japanese import japanese_sentences
    from trainer.checkpoint import load_for_inference
    from trainer.tokenization import tokenize

    loaded = load_for_inference(checkpoint)
    sentences = japanese_sentences()
    got = TextEncoder(bundle, provider="cpu").embed(sentences)
    with torch.no_grad():
        ref = loaded.model.encode_text(*tokenize(loaded.tokenizer, sentences)).numpy()
    assert np.min(np.sum(got * ref, 1)) > 0.9999
