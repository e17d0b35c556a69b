"""The text path end to end on real small weights: a bundle exported with Whisper tiny.en's
encoder (frozen) reads spoken words through its transcriber, and the transcript scores
purchase intention against the shipped prompt files."""
import json

import numpy as np
import pytest

from tests.tiny_bundle import REPO, build_model, shipped_sentences

pytestmark = pytest.mark.slow
BUYER = ["Yes, I will buy it. Can I pay by card?", "I'll take two of these, please."]
BROWSER = ["No thank you, I am just looking around.", "It is far too expensive, I will leave it."]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from trainer.export import espeak_clips, export_bundle, tower_sources

    cfg, model, tokenizer = build_model(REPO / "configs" / "test-transcriber.toml")
    folder = tmp_path_factory.mktemp("text-path") / "bundle"
    export_bundle(model, tokenizer, folder, languages=["en"], sources=tower_sources(cfg.model),
                  texts=shipped_sentences()[:8], real_audio=espeak_clips(["I want to buy it.", "Hello there."]),
                  description="text path test bundle")
    return folder


@pytest.fixture(scope="module")
def clips():
    from trainer.export import espeak_clips

    return espeak_clips(BUYER + BROWSER)


def test_the_bundle_carries_a_checked_transcriber(bundle):
    from emoclap.bundle import load_bundle

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["transcriber"]["shares_audio_pass"] is True
    assert manifest["metrics"]["export_parity"]["transcriber"]["max_logit_error"] < 2e-3
    b = load_bundle(bundle)
    assert b.transcriber is not None and b.transcriber.spec.prompt  # tiny.en: <|startoftranscript|><|notimestamps|>
    assert len(b.transcriber.spec.prompt) == 2


def test_a_tampered_transcriber_is_refused_by_name(bundle, tmp_path):
    import shutil

    from emoclap.bundle import BundleError, load_bundle

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    with open(copy / "transcriber_step.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01")
    with pytest.raises(BundleError, match="transcriber_step.onnx"):
        load_bundle(copy)


def test_one_encoder_pass_gives_the_audio_embedding_and_the_words(bundle, clips):
    from daemon.encoder import AudioEncoder, TextEncoder
    from daemon.transcriber import utterance_reader
    from emoclap.bundle import load_bundle

    b = load_bundle(bundle)
    encoder = AudioEncoder(b, provider="cpu")
    reader = utterance_reader(b, encoder, TextEncoder(b, provider="cpu"), provider="cpu")
    assert reader.reads_words
    readings = reader.encode(clips)
    alone = encoder.encode(clips)
    for r, a in zip(readings, alone):
        np.testing.assert_allclose(r.embedding, a, atol=1e-5)  # the shared pass changes nothing
        assert r.text_embedding is not None and abs(np.linalg.norm(r.text_embedding) - 1) < 1e-4
    said = " ".join(r.transcript.lower() for r in readings)
    assert all(w in said for w in ("card", "two", "looking", "expensive")), said


def test_the_text_path_tells_a_buyer_from_someone_browsing(bundle, clips):
    from daemon.clips import ClipScorer

    res = ClipScorer(bundle, REPO / "prompts").score(clips)
    text = res.column("text", "purchase_intention")
    assert np.isfinite(text).all()
    assert text[:2].min() > text[2:].max(), (text, res.transcripts)
    fused, audio = res.column("fused", "purchase_intention"), res.column("audio", "purchase_intention")
    from emoclap.prompts import load_prompt_dir

    knobs = load_prompt_dir(REPO / "prompts")["purchase_intention"]

    def logit(p):
        return np.log(p / (1 - p))
    # the fused score is the documented logistic fusion of the two parts
    np.testing.assert_allclose(logit(fused), knobs.audio_weight * logit(audio) + knobs.text_weight * logit(text),
                               atol=2e-3)


def test_transcripts_leave_the_encode_stage_only_when_asked(bundle, clips):
    from daemon.encoder import AudioEncoder, TextEncoder
    from daemon.transcriber import utterance_reader
    from emoclap import wire
    from emoclap.bundle import load_bundle
    from emoclap.record import Utterance

    b = load_bundle(bundle)
    reader = utterance_reader(b, AudioEncoder(b, provider="cpu"), TextEncoder(b, provider="cpu"), provider="cpu")
    utt = Utterance("till-1", "customer", 1, 0.0, 2.0, 0.0, 0.0, audio=clips[0])
    reader.read([utt])
    assert "transcript" not in json.loads(wire.embedding(utt)[0])
    sent = wire.decode(wire.embedding(utt, with_transcript=True)).utterance
    assert sent.transcript == utt.transcript and sent.text_embedding is not None


def test_turned_off_the_text_path_reads_no_words(bundle, clips):
    from daemon.encoder import AudioEncoder, TextEncoder
    from daemon.transcriber import utterance_reader
    from emoclap.bundle import load_bundle

    b = load_bundle(bundle)
    reader = utterance_reader(b, AudioEncoder(b, provider="cpu"), TextEncoder(b, provider="cpu"), enabled=False)
    assert not reader.reads_words
    r = reader.encode(clips[:1])[0]
    assert r.transcript is None and r.text_embedding is None
