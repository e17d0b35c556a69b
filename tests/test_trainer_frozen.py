"""Frozen towers: their outputs are computed once (clean and augmented views), cached
on disk, and only the heads train — for the CLAP model and the supervised baseline."""
import numpy as np
import pytest
import torch

from emoclap.audio import SAMPLE_RATE, write_wav
from trainer import augment
from trainer.baseline import fit_baseline
from trainer.config import load_config
from trainer.fit import fit_clap
from trainer.loop import Corpus
from tests.test_trainer_fit import toy_corpus

torch.set_num_threads(1)


def frozen_cfg(**over):
    base = {"train.epochs": 4, "train.batch_size": 8, "train.val_fraction": 0.25, "train.views": 3,
            "train.lr_head": 3e-3, "model.audio.trainable": False, "model.text.trainable": False}
    base.update(over)
    return load_config("configs/tiny.toml", base)


def on_disk(corpus: Corpus, folder) -> Corpus:
    paths = []
    for i, clip in enumerate(corpus.audio):
        write_wav(folder / f"{i}.wav", clip)
        paths.append(str(folder / f"{i}.wav"))
    return Corpus(paths, corpus.labels, corpus.sessions, corpus.emotions)


def test_views_are_reproducible_and_vary_rate_level_and_noise():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    a = augment.views(tone, 6, seed=1, key=7)
    b = augment.views(tone, 6, seed=1, key=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(a[0], tone)  # the first view is the utterance itself
    assert len({v.size for v in a[1:]}) > 1  # speaking rate changes the length
    assert len({round(float(np.abs(v).max()), 3) for v in a[1:]}) > 1  # and the level varies
    for v in a[1:]:
        assert v.dtype == np.float32 and np.isfinite(v).all() and np.abs(v).max() <= 1.0


def test_frozen_fit_caches_tower_outputs_and_trains_only_heads(tmp_path, capsys):
    corpus = on_disk(toy_corpus(40), tmp_path)
    cfg = frozen_cfg()
    first = fit_clap(corpus, cfg, tmp_path / "run" / "fold-a")
    assert "frozen audio tower: 40 utterances × 3 views" in capsys.readouterr().err
    (cache,) = (tmp_path / "run" / "features").glob("audio-*.npz")
    # Another fold of the same run reads the cache: the towers do not run again.
    second = fit_clap(corpus, cfg, tmp_path / "run" / "fold-b")
    assert "frozen audio tower" not in capsys.readouterr().err
    assert [h["loss"] for h in first["history"]] == [h["loss"] for h in second["history"]]
    losses = [h["loss"] for h in first["history"]]
    assert losses[-1] < losses[0]
    before = torch.load(tmp_path / "run" / "fold-a" / "best.pt", weights_only=False)
    from trainer.model import ClapModel
    from trainer.runs import seed_everything

    seed_everything(cfg.train.seed)  # the towers as fit_clap built them, before training
    fresh = ClapModel(cfg.model)
    tower = {k: v for k, v in before["model"].items() if k.startswith(("audio.", "text."))}
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in tower.items())  # frozen: untouched
    # A changed file is embedded again; the others come from the cache.
    write_wav(corpus.audio[0], np.zeros(6000, np.float32))
    fit_clap(corpus, cfg, tmp_path / "run" / "fold-c")
    assert "frozen audio tower: 1 utterances × 3 views" in capsys.readouterr().err
    assert cache.exists()


def test_frozen_baseline_trains_on_cached_features(tmp_path):
    corpus = on_disk(toy_corpus(40), tmp_path)
    summary = fit_baseline(corpus, frozen_cfg(**{"train.epochs": 6}), tmp_path / "base" / "fold-a")
    assert summary["best_val_ua"] is not None and summary["epochs_run"] >= 1
    data = torch.load(tmp_path / "base" / "fold-a" / "best.pt", weights_only=False)
    assert len(data["thresholds"]) == 2


def test_views_must_be_sane():
    with pytest.raises(Exception, match="train.views"):
        load_config("configs/tiny.toml", {"train.views": 0})


def test_validation_scores_from_cached_text_features_equal_the_text_towers():
    """Validation with frozen towers scores from the cached pooled sentences: the same
    probabilities as running the text tower, without running it every epoch."""
    from trainer.descriptions import load_descriptions
    from trainer.features import text_features
    from trainer.inference import zero_shot_probs
    from trainer.model import ClapModel, load_tokenizer

    cfg = frozen_cfg()
    torch.manual_seed(0)
    model = ClapModel(cfg.model).eval()
    tok = load_tokenizer(cfg.model.text, cfg.model.max_tokens)
    desc = load_descriptions(cfg.train.prompts, ["pleasant", "aroused"], "en")
    texts = text_features(model, tok, [s for _, _, s in desc.all_sentences()])
    audio = torch.nn.functional.normalize(torch.randn(5, cfg.model.embedding_dim), dim=-1).numpy()
    with torch.no_grad():
        cached = zero_shot_probs(model, tok, desc, audio, embed=lambda batch: model.text_from_pooled(
            torch.stack([texts[s] for s in batch])).numpy())
    np.testing.assert_allclose(cached, zero_shot_probs(model, tok, desc, audio), atol=1e-6)


def test_a_telephone_or_cheap_microphone_removes_the_band_outside_it():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(SAMPLE_RATE)
    for seed in range(6):
        out = augment._microphone(np.random.default_rng(seed), noise)
        spectrum = np.abs(np.fft.rfft(out)) ** 2
        f = np.fft.rfftfreq(out.size, 1 / SAMPLE_RATE)
        assert out.size == noise.size
        assert spectrum[f > 7500].sum() < 1e-6 * spectrum.sum()
        assert spectrum[f < 60].sum() < 1e-6 * spectrum.sum()


def test_babble_is_other_talkers_at_the_drawn_level():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    talkers = [(0.3 * np.sin(2 * np.pi * f * t[: 4000 + 900 * k])).astype(np.float32)
               for k, f in enumerate((1500, 2100, 2700, 3300))]
    mix = augment._babble(np.random.default_rng(0), tone.size, talkers)
    assert mix.size == tone.size and abs(mix.std() - 1) < 1e-6  # short talkers looped to length
    power = np.abs(np.fft.rfft(mix)) ** 2
    f = np.fft.rfftfreq(mix.size, 1 / SAMPLE_RATE)
    assert power[(f > 1400) & (f < 3400)].sum() > 0.95 * power.sum()  # the talkers (and the loop seams)
    with_babble = augment.views(tone, 8, seed=1, key=7, babble=talkers)
    without = augment.views(tone, 8, seed=1, key=7)
    assert any(not np.array_equal(a, b) for a, b in zip(with_babble[1:], without[1:]))


def test_the_transcript_term_draws_each_clip_to_what_was_said(tmp_path):
    from dataclasses import replace

    from trainer.config import ConfigError
    from trainer.fit import frozen_step, transcript_rows

    corpus = on_disk(toy_corpus(24), tmp_path)
    said = ["I'll take it.", "No thanks.", ""]
    corpus = replace(corpus, transcripts=[said[i % 3] for i in range(24)])
    sentences, rows = transcript_rows(corpus)
    assert sentences == ["I'll take it.", "No thanks."] and rows[:3].tolist() == [0, 1, -1]
    with_term = fit_clap(corpus, frozen_cfg(**{"train.transcript_weight": 1.0}), tmp_path / "a" / "fold")
    without = fit_clap(corpus, frozen_cfg(), tmp_path / "b" / "fold")
    # The term adds to the loss from the first step on (same seed, same batches).
    assert with_term["history"][0]["loss"] > without["history"][0]["loss"]
    # A step with no utterance's transcript known is the plain loss.
    from trainer.model import ClapModel
    from trainer.descriptions import load_descriptions
    cfg = frozen_cfg()
    net = ClapModel(cfg.model)
    desc = load_descriptions("prompts", corpus.emotions, "en")
    texts = {s: torch.randn(net.text.hidden_size) for _, _, s in desc.all_sentences()}
    pooled = torch.randn(4, 1, net.audio_pool.width)
    labels = torch.as_tensor(corpus.labels[:4])
    unknown = torch.cat([labels, torch.full((4, 1), -1)], 1)
    plain = frozen_step(desc, texts, False, "ce")(net, (pooled, labels), np.random.default_rng(0))
    none_said = frozen_step(desc, texts, False, "ce", torch.randn(2, net.text.hidden_size), 1.0)(
        net, (pooled, unknown), np.random.default_rng(0))
    assert torch.allclose(plain, none_said)
    with pytest.raises(ConfigError, match="transcript_weight"):
        frozen_cfg(**{"train.transcript_weight": -1.0})


def test_view_consistency_draws_each_view_to_its_clean_utterance(tmp_path):
    from trainer.config import ConfigError
    from trainer.descriptions import load_descriptions
    from trainer.features import FeatureDataset, collate_features
    from trainer.fit import frozen_step
    from trainer.model import ClapModel

    cfg = frozen_cfg()
    net = ClapModel(cfg.model)
    corpus = toy_corpus(8)
    desc = load_descriptions("prompts", corpus.emotions, "en")
    texts = {s: torch.randn(net.text.hidden_size) for _, _, s in desc.all_sentences()}
    features = np.random.default_rng(0).standard_normal((3, 8, 1, net.audio_pool.width)).astype(np.float32)
    labels = np.asarray(corpus.labels)

    # The dataset hands each utterance's clean view (view 0) beside the drawn one.
    data = FeatureDataset(features, labels, seed=0, with_clean=True)
    pooled, y, clean = collate_features([data[i] for i in range(8)])
    assert torch.equal(clean, torch.from_numpy(features[0]))
    assert y.dtype == torch.long and pooled.shape == clean.shape
    assert len(collate_features([FeatureDataset(features, labels, 0)[i] for i in range(8)])) == 2

    def loss(views, weight):
        return frozen_step(desc, texts, False, "ce", consistency=weight)(
            net, (views, y, clean), np.random.default_rng(0))

    plain = loss(torch.from_numpy(features[1]), 0.0)
    # The term is weight × the mean (1 − cosine) between each view's embedding and its clean one's.
    with torch.no_grad():
        cos = (net.audio_from_pooled(torch.from_numpy(features[1])) * net.audio_from_pooled(clean)).sum(-1)
    assert torch.allclose(loss(torch.from_numpy(features[1]), 2.0), plain + 2.0 * (1 - cos).mean(), atol=1e-5)
    # A clean view is already where it is drawn to: the loss is the plain one.
    assert torch.allclose(loss(clean, 2.0), loss(clean, 0.0), atol=1e-6)
    # Only the view moves: the clean embedding is the fixed target.
    views = torch.from_numpy(features[1]).requires_grad_(True)
    target = clean.clone().requires_grad_(True)
    term = frozen_step(desc, texts, False, "ce", consistency=1.0)(net, (views, y, target), np.random.default_rng(0))
    term.backward()
    assert target.grad is None or not target.grad.any()
    assert views.grad.abs().sum() > 0

    with pytest.raises(ConfigError, match="view_consistency"):
        frozen_cfg(**{"train.view_consistency": -0.5})


def test_a_fit_with_view_consistency_adds_the_term_and_needs_frozen_towers(tmp_path):
    corpus = on_disk(toy_corpus(24), tmp_path)
    with_term = fit_clap(corpus, frozen_cfg(**{"train.view_consistency": 1.0}), tmp_path / "a" / "fold")
    without = fit_clap(corpus, frozen_cfg(), tmp_path / "b" / "fold")
    assert with_term["history"][0]["loss"] > without["history"][0]["loss"]
    with pytest.raises(ValueError, match="view_consistency needs both towers frozen"):
        fit_clap(corpus, load_config("configs/tiny.toml", {"train.epochs": 1, "train.view_consistency": 1.0}),
                 tmp_path / "c" / "fold")


def test_the_frozen_pass_in_bf16_is_cached_apart_and_stays_close_to_fp32(tmp_path, capsys):
    from trainer.config import ConfigError
    from trainer.features import frozen_audio_features, tower_key
    from trainer.model import ClapModel

    corpus = on_disk(toy_corpus(12), tmp_path)
    fp32, bf16 = frozen_cfg(), frozen_cfg(**{"train.tower_precision": "bf16"})
    assert tower_key(fp32, 3) != tower_key(bf16, 3)  # a bf16 cache is never read as fp32's
    model = ClapModel(fp32.model)
    a = frozen_audio_features(fp32, tmp_path / "run", model, corpus)
    b = frozen_audio_features(bf16, tmp_path / "run", model, corpus)
    assert "× 3 views (bf16, torch)" in capsys.readouterr().err
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert not np.array_equal(a, b) and cos.min() > 0.99
    with pytest.raises(ConfigError, match="tower_precision"):
        frozen_cfg(**{"train.tower_precision": "fp16"})


WHISPER_TINY = {"model_type": "whisper", "d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2,
                "encoder_ffn_dim": 64, "num_mel_bins": 80}


@pytest.mark.parametrize("over", [
    {},  # a HuBERT-like tower, whole utterances
    {"model.audio.config": WHISPER_TINY, "model.audio_pooling": "stats"},  # absolute positions, whole
    {"model.audio.config": WHISPER_TINY, "model.audio_pooling": "stats", "model.audio_layers": "all",
     "model.audio_piece_s": 0.24},  # in pieces, each at its offset
], ids=["hubert-whole", "whisper-whole", "whisper-pieces-all-layers"])
def test_the_frozen_pass_through_onnx_runtime_gives_the_torch_statistics(over):
    from trainer.features import tower_statistics
    from trainer.model import ClapModel

    cfg = frozen_cfg(**over)
    torch.manual_seed(0)
    model = ClapModel(cfg.model).eval()
    rng = np.random.default_rng(1)
    clips = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (4000, 9100, 16000, 23456)]
    ref = tower_statistics(model, clips)
    got = tower_statistics(model, clips, runtime="onnxruntime")
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
    quantised = tower_statistics(model, clips, precision="int8-weights", runtime="onnxruntime")
    a, b = quantised.reshape(len(clips), -1), ref.reshape(len(clips), -1)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert not np.allclose(a, b, atol=1e-6) and cos.min() > 0.99


def test_the_frozen_pass_runtime_shares_fp32_caches_and_pairs_with_its_precisions(tmp_path, capsys):
    from trainer.config import ConfigError
    from trainer.features import frozen_audio_features, tower_key
    from trainer.model import ClapModel

    torch_cfg = frozen_cfg()
    ort_cfg = frozen_cfg(**{"train.tower_runtime": "onnxruntime"})
    int8w = frozen_cfg(**{"train.tower_runtime": "onnxruntime", "train.tower_precision": "int8-weights"})
    assert tower_key(torch_cfg, 3) == tower_key(ort_cfg, 3) != tower_key(int8w, 3)
    corpus = on_disk(toy_corpus(6), tmp_path)
    model = ClapModel(ort_cfg.model)
    frozen_audio_features(ort_cfg, tmp_path / "run", model, corpus)
    assert "× 3 views (fp32, onnxruntime)" in capsys.readouterr().err
    for precision, runtime in (("bf16", "onnxruntime"), ("int8-weights", "torch")):
        with pytest.raises(ConfigError, match=f"tower_precision = '{precision}' runs on train.tower_runtime"):
            frozen_cfg(**{"train.tower_precision": precision, "train.tower_runtime": runtime})
    with pytest.raises(ConfigError, match="tower_runtime"):
        frozen_cfg(**{"train.tower_runtime": "tensorrt"})
