"""A bundle encoded in pieces, trained, exported and served: the trainer and the runtime
cut and merge alike, pieces encoded while the customer speaks change no score, and the
serve path encodes them ahead."""
from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest
import torch

from tests.tiny_bundle import REPO, TINY_CONFIG, parity_clips, shipped_sentences

PIECE_S = 0.24  # 3840 samples (12 frames of 20 ms): a tiny tower's piece


def build(folder, config=TINY_CONFIG, piece_s=PIECE_S, **overrides):
    from trainer.config import load_config
    from trainer.export import export_bundle, tower_sources
    from trainer.model import ClapModel, load_tokenizer

    cfg = load_config(config, {"model.audio_piece_s": piece_s, "model.audio_pooling": "stats", **overrides})
    torch.manual_seed(0)
    model = ClapModel(cfg.model).eval()
    tokenizer = load_tokenizer(cfg.model.text, cfg.model.max_tokens)
    export_bundle(model, tokenizer, folder, languages=["en"], sources=tower_sources(cfg.model),
                  texts=shipped_sentences()[:8], real_audio=parity_clips(), description="pieces test bundle")
    return model, folder


@pytest.fixture(scope="module")
def piece_bundle(tmp_path_factory):
    return build(tmp_path_factory.mktemp("pieces") / "bundle")


def long_clips():
    rng = np.random.default_rng(3)
    tone, noise = parity_clips()
    return [np.concatenate([tone, noise, tone]),  # 2.9 s: eleven pieces and a rest
            (rng.standard_normal(7680) * 0.1).astype(np.float32),  # two pieces, no rest
            noise]


def test_the_bundle_says_how_it_is_cut_and_the_runtime_reproduces_training(piece_bundle):
    from daemon.encoder import AudioEncoder
    from emoclap.bundle import load_bundle

    model, folder = piece_bundle
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["audio_encoder"]["piece_samples"] == 3840
    assert manifest["audio_head"]["statistics"] == "mean+std"
    assert manifest["metrics"]["export_parity"]["fp32"]["audio_min_cosine"] >= 0.9999
    b = load_bundle(folder)
    assert b.piece_samples == 3840 and b.audio_head.name == "audio_head.onnx"
    got = AudioEncoder(b, "cpu").embed(long_clips())
    with torch.no_grad():
        for g, clip in zip(got, long_clips()):
            ref = model.encode_audio(torch.from_numpy(clip)[None], torch.tensor([clip.size])).numpy()[0]
            assert float(np.dot(g, ref)) > 0.9999


def test_pieces_encoded_while_spoken_change_nothing(piece_bundle):
    from daemon.batcher import Batcher, BatcherOptions
    from daemon.encoder import AudioEncoder
    from emoclap import pieces
    from emoclap.bundle import load_bundle

    b = load_bundle(piece_bundle[1])
    encoder = AudioEncoder(b, "cpu")
    clips = long_clips()
    whole = encoder.embed(clips)
    batcher = Batcher(encoder, BatcherOptions(max_batch=4, max_wait_ms=5))
    try:
        futures = []
        for clip in clips:
            ahead = {k: batcher.submit_piece(clip[s:e], s)
                     for k, (s, e) in enumerate(pieces.bounds(clip.size, b.piece_samples, b.min_samples))
                     if e - s == b.piece_samples and k % 3 != 1}  # some ahead, some not
            futures.append(batcher.submit(clip, "s1", known=ahead))
        got = [f.result(timeout=30) for f in futures]
    finally:
        batcher.close()
    np.testing.assert_allclose(np.stack(got), whole, atol=2e-6)
    assert batcher.pieces >= 7


def test_a_bundle_of_pieces_is_refused_where_it_cannot_run(piece_bundle, tmp_path):
    import shutil

    from daemon.triton_repository import RepositoryError, write_repository
    from emoclap.bundle import BundleError, load_bundle

    b = load_bundle(piece_bundle[1])
    with pytest.raises(RepositoryError, match="pieces"):
        write_repository(b, tmp_path / "repo")
    copy = tmp_path / "b"
    shutil.copytree(piece_bundle[1], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["audio_head"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="go together"):
        load_bundle(copy)


def test_a_piece_length_that_is_not_whole_frames_is_refused():
    from trainer.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="audio_piece_s"):
        load_config(TINY_CONFIG, {"model.audio_piece_s": 0.015})


def test_the_serve_path_encodes_pieces_while_the_customer_speaks(piece_bundle, tmp_path, capsys):
    """A replayed customer: most pieces are encoded before their utterance ends, and every
    score is the one the same utterances get offline in one go (`emoclapd score`)."""
    from daemon.cli import main as cli_main
    from tests.servicekit import service_config, with_service
    from tests.speech import dialogue
    import soundfile as sf

    audio, spans = dialogue([0.5, "Yes, I will take the blue one, and could you wrap it as a present for my "
                                  "sister please?", 1.0, "Can I pay by card?", 1.0,
                             "That is lovely, thank you very much for all your help today.", 1.0], tmp_path)
    wav = tmp_path / "customer.wav"
    sf.write(wav, audio, 16000)
    cfg = service_config(tmp_path, piece_bundle[1], f"""
[[stations]]
name = "till"
role = "customer"
file = "{wav}"
realtime = true
""")
    cfg.transcripts.enabled = False

    async def body(svc):
        deadline = asyncio.get_running_loop().time() + 40
        while svc.parts.floor is None or svc.parts.floor.progress.settled < len(spans):
            assert asyncio.get_running_loop().time() < deadline, "not every utterance was published"
            await asyncio.sleep(0.2)
        port = svc.parts.server.port
        metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
        return metrics

    metrics = with_service(cfg, body, stages=("capture", "encode", "serve"))
    count = {w: float(line.split()[-1]) for line in metrics.splitlines() for w in ("ahead", "at_close")
             if line.startswith(f'emoclap_audio_pieces_total{{when="{w}"}}')}
    assert count["ahead"] > count["at_close"] > 0, count
    from daemon.history import History
    live = [e for e in History(tmp_path / "history.sqlite3").events() if e["type"] == "utterance"]
    (tmp_path / "defaults.toml").write_text("")
    capsys.readouterr()
    assert cli_main(["score", str(wav), "--bundle", str(piece_bundle[1]), "--prompts", str(REPO / "prompts"),
                     "--cache", "", "--config", str(tmp_path / "defaults.toml"), "--role", "customer"]) == 0
    offline = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(offline) == len(live) == len(spans)
    for row, event in zip(offline, live):
        assert row["scores"].keys() == event["scores"].keys()
        for emotion, score in event["scores"].items():
            assert abs(row["scores"][emotion] - score) < 2e-3, (emotion, row["scores"][emotion], score)


def test_pieces_of_another_length_are_refused_counted_and_cost_only_time(piece_bundle, tmp_path):
    """A capture stage cutting pieces the bundle was not made for (`[stages] piece_s`):
    the worker refuses each, /metrics counts them, and every utterance is still scored."""
    from tests.servicekit import service_config, with_service
    from tests.speech import dialogue
    import soundfile as sf

    audio, spans = dialogue([0.5, "Yes, I will take the blue one, and could you wrap it for me please?", 1.0,
                             "Can I pay by card?", 1.0], tmp_path)
    wav = tmp_path / "customer.wav"
    sf.write(wav, audio, 16000)
    cfg = service_config(tmp_path, piece_bundle[1], f"""
[stages]
piece_s = {2 * PIECE_S}

[[stations]]
name = "till"
role = "customer"
file = "{wav}"
realtime = true
""")
    cfg.transcripts.enabled = False

    async def body(svc):
        deadline = asyncio.get_running_loop().time() + 40
        while svc.parts.floor is None or svc.parts.floor.progress.settled < len(spans):
            assert asyncio.get_running_loop().time() < deadline, "not every utterance was published"
            await asyncio.sleep(0.2)
        port = svc.parts.server.port
        # The worker tells at its next heartbeat.
        await asyncio.sleep(2 * cfg.stages.heartbeat_interval_s + 0.2)
        return await asyncio.to_thread(lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())

    metrics = with_service(cfg, body, stages=("capture", "encode", "serve"))
    count = {o: float(line.split()[-1]) for line in metrics.splitlines() for o in ("refused", "expired")
             if line.startswith(f'emoclap_unused_pieces_total{{outcome="{o}"}}')}
    ahead = [float(line.split()[-1]) for line in metrics.splitlines()
             if line.startswith('emoclap_audio_pieces_total{when="ahead"}')]
    assert count["refused"] >= 4 and count["expired"] == 0, count
    assert ahead == [0.0]  # nothing was encoded early


@pytest.mark.slow
def test_whisper_pieces_sit_at_their_positions_and_the_words_are_read_whole(tmp_path):
    """Whisper's encoder in pieces: each piece at its place in the utterance (`offsets`),
    trainer = runtime, and the transcript read from one pass over the whole utterance."""
    import onnxruntime as ort

    from daemon.encoder import AudioEncoder, TextEncoder
    from daemon.transcriber import utterance_reader
    from emoclap.bundle import load_bundle
    from trainer.export import espeak_clips

    model, folder = build(tmp_path / "whisper", REPO / "configs" / "test-transcriber.toml", piece_s=1.0)
    b = load_bundle(folder)
    assert "offsets" in [i.name for i in ort.InferenceSession(str(b.audio_encoder)).get_inputs()]
    clips = espeak_clips(["Yes, I will buy it. Can I pay by card?", "No thank you, it is far too expensive for me."])
    reader = utterance_reader(b, AudioEncoder(b, "cpu"), TextEncoder(b, "cpu"), provider="cpu")
    readings = reader.encode(clips)
    with torch.no_grad():
        for r, clip in zip(readings, clips):
            ref = model.encode_audio(torch.from_numpy(clip)[None], torch.tensor([clip.size])).numpy()[0]
            assert float(np.dot(r.embedding, ref)) > 0.9999
    said = " ".join(r.transcript.lower() for r in readings)
    assert all(w in said for w in ("card", "expensive")), said


def test_a_piece_graph_that_does_not_reproduce_training_fails_the_export(tmp_path, monkeypatch):
    import onnx

    import trainer.export as ex

    real = ex.export_pieces

    def tampered(model, path, head_path, frames=False):
        out = real(model, path, head_path, frames)
        g = onnx.load(str(head_path))
        for init in g.graph.initializer:  # one weight of the head, changed
            if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
                init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 1.5, init.name))
                break
        onnx.save(g, str(head_path))
        return out

    monkeypatch.setattr(ex, "export_pieces", tampered)
    with pytest.raises(ex.ExportError, match="does not reproduce"):
        build(tmp_path / "b")
    assert not (tmp_path / "b" / "manifest.json").exists()
