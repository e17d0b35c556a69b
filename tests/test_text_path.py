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


def test_words_read_while_others_are_decoded_are_the_words_read_alone(bundle, clips):
    """Utterances whose words join a running decode (the encode stage's batcher, real
    graphs) are answered with what each gives decoded alone, sharing decoder steps."""
    from daemon.batcher import Batcher, BatcherOptions
    from daemon.encoder import AudioEncoder, TextEncoder
    from daemon.transcriber import utterance_reader
    from emoclap.bundle import load_bundle

    b = load_bundle(bundle)
    reader = utterance_reader(b, AudioEncoder(b, provider="cpu"), TextEncoder(b, provider="cpu"), provider="cpu")
    alone = [reader.encode([c])[0].transcript for c in clips]
    steps_alone = reader._live.graph_runs
    assert steps_alone == 0 and reader._live.joins  # read_words decodes apart from the live batch
    runs_alone = 0
    for c in clips:
        decoding, chunks = reader.transcriber.decoding(), reader.encoder.encode_with_frames([c])[1][0]
        decoding.decode([f for f, _ in chunks], [b.transcriber.spec.budget(s) for _, s in chunks])
        runs_alone += decoding.graph_runs
    # One utterance an audio pass: each one's words arrive while the ones before are decoded.
    batcher = Batcher(reader, BatcherOptions(max_batch=1))
    got = [f.result(timeout=60) for f in [batcher.submit(c) for c in clips]]
    batcher.close()
    assert [r.transcript for r in got] == alone
    assert all(r.spans["decode"] > 0 for r in got)
    assert reader._live.graph_runs < runs_alone  # steps were shared


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


def test_calibrate_fits_the_text_path_and_the_fusion_weights(bundle, tmp_path):
    """Buyers and browsers said in the same flat voice: the words carry purchase intention,
    the (untrained) audio head does not, and calibration says so in the weights."""
    import shutil
    import subprocess

    from emoclap.prompts import load_prompt_dir
    from trainer.cli import main

    buyers = ["I will take it, thank you.", "Can I pay for this by card?", "Yes, I want to buy this one.",
              "Please wrap it up, I am buying it.", "I would like to order two of them.", "Great, I will have it."]
    browsers = ["No thanks, I am only looking.", "That is too expensive for me.", "I do not need it today.",
                "Maybe another time, thank you.", "I will leave it, thanks.", "I am not going to buy anything."]
    lines = []
    (tmp_path / "clips").mkdir()
    for session, voice in (("s1", "en-us"), ("s2", "en-gb")):
        for label, texts in ((7, buyers), (1, browsers)):
            for i, text in enumerate(texts):
                wav = tmp_path / "clips" / f"{session}-{label}-{i}.wav"
                subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True, capture_output=True)
                # varied second ratings, so no one average is the most frequent (the threshold)
                second = label + (-1, -2, 0)[i % 3] if label == 7 else label + i % 3
                lines.append({"audio": str(wav), "session": session, "speaker": voice, "role": "customer",
                              "ratings": {"a": {"purchase_intention": label}, "b": {"purchase_intention": second}}})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    prompts = shutil.copytree(REPO / "prompts", tmp_path / "prompts")
    code = main(["calibrate", str(manifest), "--bundle", str(bundle), "--prompts", str(prompts),
                 "--holdout", "0", "--min-per-class", "5", "--emotion", "purchase_intention",
                 "--out", str(tmp_path / "report")])
    assert code == 0
    entry = json.loads((tmp_path / "report" / "report.json").read_text())["emotions"]["purchase_intention"]
    assert entry["status"] == "written", entry
    written = load_prompt_dir(prompts)["purchase_intention"]
    assert written.text_temperature is not None and written.text_temperature > 0
    assert written.text_weight > written.audio_weight, entry
    assert entry["fitted"]["after"]["log_loss"] <= entry["fitted"]["before"]["log_loss"] + 1e-9


def test_an_utterance_too_poor_to_count_is_not_transcribed(bundle, clips):
    from daemon.batcher import Batcher
    from daemon.encoder import AudioEncoder, TextEncoder
    from daemon.transcriber import utterance_reader
    from emoclap.bundle import load_bundle

    b = load_bundle(bundle)
    reader = utterance_reader(b, AudioEncoder(b, provider="cpu"), TextEncoder(b, provider="cpu"), provider="cpu")
    read, skipped = reader.encode(clips[:2], words=[True, False])
    assert read.transcript and skipped.transcript is None and skipped.text_embedding is None
    batcher = Batcher(reader)
    try:
        got = [batcher.submit(clips[0], "s", read_words=False).result(timeout=60),
               batcher.submit(clips[0], "s").result(timeout=60)]
    finally:
        batcher.close()
    assert got[0].transcript is None and got[1].transcript
    np.testing.assert_allclose(got[0].embedding, got[1].embedding, atol=1e-5)


def test_an_int8_transcriber_reads_the_same_words_in_any_batch_and_says_so(bundle, clips, tmp_path):
    """`--int8-transcriber`: the graphs' matrix products with 8-bit weights; the manifest
    says so, the export reports how many of its clips decode to the same tokens as fp32,
    the words read are (nearly) the fp32 graphs' words, and an utterance's words do not
    depend on which utterances share its decode."""
    from daemon.encoder import AudioEncoder, TextEncoder
    from daemon.transcriber import utterance_reader
    from emoclap.bundle import load_bundle
    from trainer.export import espeak_clips, export_bundle, tower_sources

    cfg, model, tokenizer = build_model(REPO / "configs" / "test-transcriber.toml")
    folder = tmp_path / "int8"
    export_bundle(model, tokenizer, folder, languages=["en"], sources=tower_sources(cfg.model),
                  texts=shipped_sentences()[:8], real_audio=espeak_clips(["I want to buy it.", "Hello there."]),
                  description="int8 transcriber", int8_transcriber=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    agreement = manifest["metrics"]["export_parity"]["transcriber"]["int8"]
    assert manifest["transcriber"]["precision"] == "int8" and agreement["clips"] == 2
    assert 0 <= agreement["same_tokens"] <= 2 and agreement["max_logit_difference"] > 0
    assert not list(folder.glob("*.fp32*"))  # the fp32 graphs it was compared with are gone
    import onnx
    ops = {n.op_type for n in onnx.load(str(folder / "transcriber_step.onnx")).graph.node}
    assert "MatMulNBits" in ops  # the layers' and the vocabulary's products, weights in 8 bits

    def said(b):
        b = load_bundle(b)
        reader = utterance_reader(b, AudioEncoder(b, provider="cpu"), TextEncoder(b, provider="cpu"), provider="cpu")
        together = [r.transcript for r in reader.encode(clips)]
        assert together == [reader.encode([c])[0].transcript for c in clips]  # batched = alone
        return [set(t.lower().replace(",", "").replace(".", "").split()) for t in together]
    assert load_bundle(folder).transcriber.precision == "int8"
    for fp32, int8 in zip(said(bundle), said(folder)):
        assert len(fp32 & int8) >= len(fp32) / 2, (fp32, int8)


@pytest.mark.parametrize("precision", ["int4", "", 8, None, ["int8"]])
def test_an_unknown_transcriber_precision_is_refused_by_name(bundle, tmp_path, precision):
    import shutil

    from emoclap.bundle import BundleError, load_bundle

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["transcriber"]["precision"] = precision
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="transcriber.precision"):
        load_bundle(copy)
