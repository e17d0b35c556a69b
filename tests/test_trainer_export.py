import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from emoclap.bundle import load_bundle
from trainer.config import load_config
from trainer.export import ExportError, espeak_clips, export_bundle
from trainer.model import ClapModel, load_tokenizer

torch.set_num_threads(1)
TEXTS = ["I want to buy it.", "I do not want to buy it.", "私の気持ちは心地よいです。"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = load_config("configs/tiny.toml", {"model.head": "residual"})
    torch.manual_seed(0)
    model = ClapModel(cfg.model).eval()
    tok = load_tokenizer(cfg.model.text, cfg.model.max_tokens)
    real = espeak_clips(["Hello, I would like to see the blue one.", "That is too expensive."])
    out = tmp_path_factory.mktemp("bundle")
    manifest = export_bundle(model, tok, out, languages=["en"], sources={"audio": "tiny", "text": "tiny"},
                             texts=TEXTS, real_audio=real, description="tiny test model", int8=True)
    return model, tok, out, manifest, real


def test_bundle_loads_and_parity_is_recorded(exported):
    model, _, out, manifest, _ = exported
    bundle = load_bundle(out)
    assert bundle.embedding_dim == 32 and bundle.min_samples == model.audio.min_samples
    assert bundle.precision == "int8"
    assert bundle.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)
    parity = json.loads((out / "manifest.json").read_text())["metrics"]["export_parity"]
    assert parity["fp32"]["audio_min_cosine"] >= 0.9999 and parity["fp32"]["text_min_cosine"] >= 0.9999
    assert parity["fp32"]["clips"] >= 10
    assert 0.5 < parity["int8"]["audio_min_cosine"] <= 1.0


def test_onnx_audio_embedding_does_not_depend_on_batch_mates(exported):
    _, _, out, _, real = exported
    sess = ort.InferenceSession(str(out / "audio_encoder.onnx"), providers=["CPUExecutionProvider"])
    clips = real + [np.zeros(400, np.float32)]
    lengths = np.array([len(c) for c in clips])
    batch = np.zeros((len(clips), lengths.max()), np.float32)
    for i, c in enumerate(clips):
        batch[i, : len(c)] = c
    together = sess.run(None, {"waveform": batch, "lengths": lengths})[0]
    for i, c in enumerate(clips):
        alone = sess.run(None, {"waveform": c[None], "lengths": lengths[i : i + 1]})[0]
        assert np.dot(together[i], alone[0]) > 0.995  # int8: dynamic quantisation scales per batch
    assert np.allclose(np.linalg.norm(together, axis=1), 1, atol=1e-4)


def test_tokenizer_json_tokenises_like_training(exported):
    from tokenizers import Tokenizer

    _, tok, out, _, _ = exported
    shipped = Tokenizer.from_file(str(out / "tokenizer.json"))
    for a, b in zip(shipped.encode_batch(TEXTS), tok.encode_batch(TEXTS)):
        assert a.ids == b.ids and a.attention_mask == b.attention_mask


def test_parity_failure_is_loud(tmp_path, monkeypatch):
    cfg = load_config("configs/tiny.toml")
    model = ClapModel(cfg.model).eval()
    tok = load_tokenizer(cfg.model.text, cfg.model.max_tokens)
    import trainer.export as ex

    real_export = ex.export_audio

    def tampered(m, path, dynamo=False, frames=False):
        real_export(m, path, dynamo, frames)
        import onnx
        g = onnx.load(str(path))
        for init in g.graph.initializer:  # corrupt one weight of the exported graph
            if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
                arr = onnx.numpy_helper.to_array(init) * 1.5
                init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
                break
        onnx.save(g, str(path))

    monkeypatch.setattr(ex, "export_audio", tampered)
    noise = [np.random.default_rng(0).standard_normal(8000).astype(np.float32)]
    with pytest.raises(ExportError, match="does not reproduce"):
        ex.export_bundle(model, tok, tmp_path, languages=["en"], sources={}, texts=TEXTS, real_audio=noise)
    assert not (tmp_path / "manifest.json").exists()


def test_real_minilm_text_tower_exports_with_its_own_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from trainer.config import TowerOptions
    from trainer.sources import resolve_source

    cfg = load_config("configs/demo.toml")
    cfg.model.audio = load_config("configs/tiny.toml").model.audio  # keep the audio side small
    model = ClapModel(cfg.model).eval()
    tok = load_tokenizer(cfg.model.text, cfg.model.max_tokens)
    manifest = export_bundle(model, tok, tmp_path, languages=["en"], sources={"text": cfg.model.text.pretrained},
                             texts=TEXTS + ["I am interested. " * 30], real_audio=[np.zeros(4000, np.float32)])
    assert manifest["metrics"]["export_parity"]["fp32"]["text_min_cosine"] >= 0.9999
    from tokenizers import Tokenizer

    shipped = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(resolve_source(cfg.model.text.pretrained))
    for text in TEXTS:
        assert shipped.encode(text).ids == hf(text)["input_ids"]
    assert len(shipped.encode("I am interested. " * 30).ids) == cfg.model.max_tokens
    assert isinstance(cfg.model.text, TowerOptions) and not cfg.model.text.trainable


def test_the_runtime_encoders_reproduce_the_torch_model(exported):
    from daemon.encoder import AudioEncoder, TextEncoder
    from trainer.tokenization import tokenize

    model, tok, out, _, real = exported
    bundle = load_bundle(out)
    got = AudioEncoder(bundle, provider="cpu").embed(real)
    with torch.no_grad():
        ref = torch.cat([model.encode_audio(torch.from_numpy(c)[None], torch.tensor([len(c)])) for c in real]).numpy()
    # The bundle's audio encoder is int8: the runtime must do no worse than the export's
    # own parity check measured on these clips (ONNX Runtime's quantiser sets the level).
    measured = bundle.manifest["metrics"]["export_parity"]["int8"]["audio_min_cosine"]
    assert np.min(np.sum(got * ref, 1)) >= min(measured - 1e-5, 0.999)
    got = TextEncoder(bundle).embed(TEXTS)
    with torch.no_grad():
        ref = model.encode_text(*tokenize(tok, TEXTS)).numpy()
    assert np.min(np.sum(got * ref, 1)) > 0.9999


def test_8_bit_weights_are_checked_against_fp32_and_named_in_the_manifest(tmp_path, monkeypatch):
    import trainer.export as ex

    cfg = load_config("configs/tiny.toml", {"model.head": "residual"})
    torch.manual_seed(0)
    model = ClapModel(cfg.model).eval()
    tok = load_tokenizer(cfg.model.text, cfg.model.max_tokens)
    real = espeak_clips(["Hello, I would like to see the blue one."])
    common = dict(languages=["en"], sources={"audio": "tiny", "text": "tiny"}, texts=TEXTS, real_audio=real)
    export_bundle(model, tok, tmp_path / "w", **common, int8_weights=True)
    bundle = load_bundle(tmp_path / "w")
    assert bundle.precision == "int8-weights"
    parity = bundle.manifest["metrics"]["export_parity"]
    assert ex.INT8_WEIGHTS_MIN_COSINE <= parity["int8-weights"]["audio_min_cosine"] <= 1.0
    import onnx
    ops = {n.op_type for n in onnx.load(str(tmp_path / "w" / "audio_encoder.onnx")).graph.node}
    assert "MatMulNBits" in ops and "DynamicQuantizeMatMul" not in ops
    # Too far from fp32 is an error, not a bundle.
    monkeypatch.setattr(ex, "INT8_WEIGHTS_MIN_COSINE", 1.01)
    with pytest.raises(ExportError, match="8-bit weights is too far from fp32"):
        export_bundle(model, tok, tmp_path / "far", **common, int8_weights=True)
    with pytest.raises(ExportError, match="not both"):
        export_bundle(model, tok, tmp_path / "both", **common, int8=True, int8_weights=True)
