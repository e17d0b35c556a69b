import json

import numpy as np
import pytest

from emoclap.bundle import BundleError, load_bundle, sha256_file, write_manifest
from tests.tiny_bundle import DIM, copy_bundle


@pytest.fixture
def bundle_dir(tiny_bundle, tmp_path):
    return copy_bundle(tiny_bundle, tmp_path / "b")


def edit_manifest(folder, **changes):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest))


def test_valid_bundle_loads(tiny_bundle):
    b = load_bundle(tiny_bundle)
    assert b.embedding_dim == DIM and b.sample_rate == 16000 and b.logit_scale == 20.0
    assert b.languages == ("en", "ja") and b.min_samples == 400 and b.max_tokens > 0
    assert b.audio_encoder.name == "audio_encoder.onnx" and b.tokenizer.exists()
    assert len(b.hash) == 64 and b.description


def test_write_manifest_fills_format_time_and_hashes(bundle_dir):
    written = write_manifest(bundle_dir, {"sample_rate": 16000, "embedding_dim": DIM,
                                          "logit_scale": 10.0, "languages": ["en"],
                                          "format": "ignored", "files": {"x": "y"}})
    on_disk = json.loads((bundle_dir / "manifest.json").read_text())
    assert written == on_disk
    assert written["format"] == "emoclap-bundle" and written["format_version"] == 1
    assert written["created"].endswith("Z")
    assert written["files"] == {n: sha256_file(bundle_dir / n) for n in
                                ("audio_encoder.onnx", "text_encoder.onnx", "tokenizer.json")}
    assert load_bundle(bundle_dir).languages == ("en",)
    assert written["tokenizer"] == {"file": "tokenizer.json", "kind": "fast"}


def test_a_tokenizer_without_kind_is_a_fast_one(bundle_dir):
    from emoclap.tokenizer import load_text_tokenizer

    edit_manifest(bundle_dir, tokenizer={"file": "tokenizer.json"})  # as bundles were before kinds
    bundle = load_bundle(bundle_dir)
    assert bundle.tokenizer_kind == "fast"
    ids, mask = load_text_tokenizer(bundle).encode_batch(["I feel fine.", ""])
    assert ids.shape == mask.shape and ids.dtype == mask.dtype == np.int64 and mask[1].sum() < mask[0].sum()


def test_hash_changes_with_weights(bundle_dir, tiny_bundle):
    before = load_bundle(tiny_bundle).hash
    with open(bundle_dir / "tokenizer.json", "a") as f:
        f.write(" ")
    write_manifest(bundle_dir, json.loads((bundle_dir / "manifest.json").read_text()))
    assert load_bundle(bundle_dir).hash != before


def test_write_manifest_refuses_missing_files(tmp_path):
    with pytest.raises(BundleError, match="audio_encoder.onnx is missing"):
        write_manifest(tmp_path, {})


@pytest.mark.parametrize("changes, message", [
    ({"format": "something-else"}, "'format'"),
    ({"format_version": 2}, "'format_version' is 2"),
    ({"sample_rate": 44100}, "'sample_rate' is 44100"),
    ({"embedding_dim": 0}, "'embedding_dim'"),
    ({"embedding_dim": "16"}, "'embedding_dim' has the wrong type"),
    ({"logit_scale": None}, "'logit_scale' is missing"),
    ({"logit_scale": -1}, "'logit_scale'"),
    ({"languages": []}, "'languages'"),
    ({"text_encoder": None}, "'text_encoder' is missing"),
    ({"files": {"audio_encoder.onnx": "0" * 64}}, "no sha256 for text_encoder.onnx"),
    ({"tokenizer": {"file": "tokenizer.json", "kind": "sentencepiece"}}, "'tokenizer.kind' is 'sentencepiece'"),
    ({"tokenizer": {"file": "tokenizer.json", "kind": "mecab-sentencepiece"}}, "'tokenizer.do_lower_case' is missing"),
    ({"audio_encoder": {"file": "audio_encoder.onnx", "precision": "int4"}}, "'audio_encoder.precision' must be one of"),
    ({"audio_encoder": {"file": "audio_encoder.onnx", "precision": ["int8"]}}, "'audio_encoder.precision' must be one of"),
])
def test_bad_manifest_fields_are_named(bundle_dir, changes, message):
    edit_manifest(bundle_dir, **changes)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_tampered_file_is_refused(bundle_dir):
    data = bytearray((bundle_dir / "audio_encoder.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bundle_dir / "audio_encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="audio_encoder.onnx does not match"):
        load_bundle(bundle_dir)


def test_partial_bundle_is_refused(bundle_dir):
    (bundle_dir / "text_encoder.onnx").unlink()
    with pytest.raises(BundleError, match="text_encoder.onnx listed in the manifest is missing"):
        load_bundle(bundle_dir)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="manifest is missing"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)
