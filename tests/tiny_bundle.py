"""Model bundles for tests and benchmarks, built as the product builds them: the trainer's
model from a configuration in `configs/`, random weights, and the trainer's export
(ONNX towers, tokenizer.json, manifest, parity check)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from emoclap.audio import SAMPLE_RATE
from emoclap.prompts import load_prompt_dir
from trainer.config import Config, load_config
from trainer.export import export_bundle, tower_sources
from trainer.model import ClapModel, load_tokenizer

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "configs" / "test-bundle.toml"
DIM = 16  # the embedding size of configs/test-bundle.toml


def build_model(config: str | Path, seed: int = 0) -> tuple[Config, ClapModel, Tokenizer]:
    """A configuration's model, randomly initialised from `seed`, and its tokenizer."""
    cfg = load_config(config)
    torch.manual_seed(seed)
    return cfg, ClapModel(cfg.model).eval(), load_tokenizer(cfg.model.text, cfg.model.max_tokens)


def parity_clips(seed: int = 0) -> list[np.ndarray]:
    """Voice-like clips for the export's parity check, without a speech synthesiser:
    a harmonic tone with a falling pitch and amplitude-modulated noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.8 * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 180.0 - 40.0 * t
    tone = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / SAMPLE_RATE) / k for k in (1, 2, 3)) * 0.2
    n = int(1.3 * SAMPLE_RATE)
    noise = rng.standard_normal(n) * 0.1 * (0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * np.arange(n) / SAMPLE_RATE))
    return [tone.astype(np.float32), noise.astype(np.float32)]


def shipped_sentences() -> list[str]:
    emotions = load_prompt_dir(REPO / "prompts")
    return [s for e in emotions.values() for p in (e.negative, e.positive) for s in p.texts()]


def export_model(cfg: Config, model: ClapModel, tokenizer: Tokenizer, folder: Path, languages=("en",), *,
                 description: str, int8: bool = False) -> Path:
    export_bundle(model, tokenizer, folder, languages=list(languages),
                  sources=tower_sources(cfg.model), texts=shipped_sentences(),
                  real_audio=parity_clips(), description=description, int8=int8)
    return Path(folder)


def build_bundle(folder: Path, config: str | Path, seed: int = 0, languages=("en",), *,
                 description: str, int8: bool = False) -> Path:
    return export_model(*build_model(config, seed), folder, languages, description=description, int8=int8)


def build_tiny_bundle(folder: Path, seed: int = 0, languages=("en", "ja")) -> Path:
    """configs/test-bundle.toml: embedding size 16, logit scale 20, 400 samples minimum."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only wait on each other
    try:
        return build_bundle(folder, TINY_CONFIG, seed, languages,
                            description="Tiny test model with random weights")
    finally:
        torch.set_num_threads(threads)


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A tiny real bundle, built once per test run (import this fixture into a test
    module to use it); tests must not modify it, copy it with `copy_bundle` instead."""
    folder = tmp_path_factory.getbasetemp() / "tiny-bundle"
    if not (folder / "manifest.json").exists():
        build_tiny_bundle(folder)
    return folder
