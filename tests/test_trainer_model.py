import math

import pytest
import torch

from trainer.config import ConfigError, config_from_dict, load_config
from trainer.model import ClapModel, load_tokenizer
from trainer.tokenization import tokenize

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("configs/tiny.toml")
    torch.manual_seed(0)
    return cfg, ClapModel(cfg.model).eval()


def test_padding_and_batch_mates_do_not_change_an_embedding(tiny):
    _, model = tiny
    g = torch.Generator().manual_seed(1)
    lengths = [16000, 7001, 2400, 165]
    batch = torch.zeros(len(lengths), 16000)
    for i, n in enumerate(lengths):
        batch[i, :n] = torch.randn(n, generator=g) * 0.3
    batch[1:, 16000 - 10:] = 0.5  # junk in the padding must be ignored too
    batch[1, 7001:] = torch.randn(16000 - 7001, generator=g)
    with torch.no_grad():
        together = model.encode_audio(batch, torch.tensor(lengths))
        for i, n in enumerate(lengths):
            alone = model.encode_audio(batch[i : i + 1, :n], torch.tensor([n]))
            assert torch.allclose(together[i], alone[0], atol=1e-5), i
    assert torch.allclose(together.norm(dim=1), torch.ones(4), atol=1e-5)


def test_unpadded_frames_equal_the_hugging_face_forward(tiny):
    _, model = tiny
    x = torch.randn(1, 8000)
    with torch.no_grad():
        frames, mask = model.audio(x, torch.tensor([8000]))
        ref = model.audio.encoder(x).last_hidden_state
    assert mask.all() and frames.shape == ref.shape
    assert torch.allclose(frames, ref, atol=1e-5)
    assert model.audio.min_samples == 165


def test_text_embedding_ignores_padding_and_is_normalised(tiny):
    cfg, model = tiny
    tok = load_tokenizer(cfg.model.text, cfg.model.max_tokens)
    ids, mask = tokenize(tok, ["I trust.", "私の気持ちは心地よいです。とても長い文です。"])
    assert mask[0].sum() < mask[1].sum()
    with torch.no_grad():
        both = model.encode_text(ids, mask)
        n = int(mask[0].sum())
        alone = model.encode_text(ids[:1, :n], mask[:1, :n])
    assert torch.allclose(both[0], alone[0], atol=1e-5)
    assert torch.allclose(both.norm(dim=1), torch.ones(2), atol=1e-5)


def test_tokenizer_truncates_to_max_tokens(tiny):
    cfg, _ = tiny
    tok = load_tokenizer(cfg.model.text, 10)
    ids, _ = tokenize(tok, ["a very long sentence " * 20])
    assert ids.shape[1] == 10 and ids[0, 0] == 2 and ids[0, -1] == 3  # [CLS] … [SEP]


def test_logit_scale_starts_at_1_over_0_07_and_is_clamped(tiny):
    cfg, _ = tiny
    model = ClapModel(cfg.model)
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000))
    assert model.scale().item() == pytest.approx(100.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(math.log(100))


def test_residual_head_mean_pooling_and_frozen_towers():
    cfg = load_config("configs/tiny.toml", {"model.head": "residual", "model.text_pooling": "mean",
                                            "model.audio.trainable": False})
    model = ClapModel(cfg.model)
    assert hasattr(model.audio_head, "norm") and model.text.pooling == "mean"
    assert not any(p.requires_grad for p in model.audio.parameters())
    assert all(p.requires_grad for p in model.text.parameters())
    enc = {id(p) for p in model.encoder_parameters()}
    assert enc.isdisjoint({id(p) for p in model.head_parameters()})


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="model.audio.*exactly one"):
        config_from_dict({"model": {"audio": {"trainable": True}}}, "x.toml")
    with pytest.raises(ConfigError, match="train: unknown field 'epoch'"):
        config_from_dict({"train": {"epoch": 3}}, "x.toml")
    with pytest.raises(ConfigError, match="train.loss"):
        config_from_dict({"train": {"loss": "hinge"}}, "x.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)


def test_shipped_configs_parse():
    for name in ("method", "demo", "tiny"):
        load_config(f"configs/{name}.toml")
