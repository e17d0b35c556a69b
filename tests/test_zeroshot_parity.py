"""The trainer's evaluation scores an utterance exactly as the runtime does, including
each prompt file's temperature and bias."""
import hashlib

import numpy as np
import pytest
import torch

from emoclap.prompts import load_prompt_dir
from emoclap.zeroshot import bank_vectors, bipolar_scores, emotion_poles, score_utterance
from tests.test_prompts import GOOD as PLEASANT  # temperature 20, bias -0.5
from trainer.config import load_config
from trainer.evaluate import prompt_variants
from trainer.inference import embed_texts, zero_shot_bank, zero_shot_probs
from trainer.model import ClapModel, load_tokenizer

DIM = 16
CALM = """label = "Calm – agitated"
bias = 0.3

[negative]
label = "Agitated"
en = ["I am agitated."]

[positive]
label = "Calm"
en = ["I am calm.", "I am at peace."]
"""


@pytest.fixture
def prompts(tmp_path):
    (tmp_path / "pleasant.toml").write_text(PLEASANT, encoding="utf-8")
    (tmp_path / "calm.toml").write_text(CALM, encoding="utf-8")
    return tmp_path


def fake_embed(sentences):
    """A fixed vector per sentence, whatever else is embedded with it."""
    out = []
    for s in sentences:
        seed = int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "little")
        out.append(np.random.default_rng(seed).standard_normal(DIM))
    return np.asarray(out, np.float32)


def audio_embeddings(n=6, seed=0):
    a = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def runtime_scores(folder, embed, logit_scale, audio, language="en"):
    """As daemon/prompt_bank.py and the scorer do for a bundle exported with `language`."""
    emotions = load_prompt_dir(folder, [language])
    poles = {name: emotion_poles(e, [language], embed) for name, e in emotions.items()}
    bank = bank_vectors([emotions[n] for n in sorted(emotions)], poles, logit_scale, DIM)
    return [score_utterance(a, bank) for a in audio]


def evaluated(folder, emotion, language="en"):
    """What trainer/evaluate.py scores for the full prompt file (canonical + paraphrases)."""
    variants = dict(prompt_variants([folder], emotion, False, language))
    return variants[f"zero-shot {folder.name}/{emotion} + paraphrases"]


def test_evaluation_and_runtime_give_identical_scores(prompts):
    audio = audio_embeddings()
    runtime = runtime_scores(prompts, fake_embed, 12.5, audio)
    for emotion in ("pleasant", "calm"):
        trainer = bipolar_scores(audio, zero_shot_bank(evaluated(prompts, emotion), fake_embed, 12.5, DIM))
        assert trainer[:, 0].tolist() == [r[emotion] for r in runtime]

    # The file's temperature and bias are what made those scores.
    bank = zero_shot_bank(evaluated(prompts, "pleasant"), fake_embed, 12.5, DIM)
    n, p = bank.negative[0], bank.positive[0]
    expected = 1 / (1 + np.exp(-(20.0 * (audio @ p - audio @ n) - 0.5)))
    np.testing.assert_allclose([r["pleasant"] for r in runtime], expected, rtol=1e-5)
    bank = zero_shot_bank(evaluated(prompts, "calm"), fake_embed, 12.5, DIM)
    assert bank.scale.tolist() == [12.5] and bank.bias.tolist() == pytest.approx([0.3])


def test_a_torch_model_scores_as_its_bundle_would(prompts):
    """zero_shot_probs (training validation, evaluation) against the runtime's recipe fed
    with the same model's sentence embeddings and the logit scale its manifest carries."""
    cfg = load_config("configs/tiny.toml", {"model.embedding_dim": DIM})
    torch.manual_seed(0)
    model = ClapModel(cfg.model).eval()
    tokenizer = load_tokenizer(cfg.model.text, cfg.model.max_tokens)
    audio = audio_embeddings(seed=1)
    runtime = runtime_scores(prompts, lambda t: embed_texts(model, tokenizer, t), model.zero_shot_scale(), audio)
    for emotion in ("pleasant", "calm"):
        trainer = zero_shot_probs(model, tokenizer, evaluated(prompts, emotion), audio)[:, 0]
        assert trainer.tolist() == [r[emotion] for r in runtime]
