"""Training configuration: dataclass options read from a TOML file under `configs/`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoclap.audio import SAMPLE_RATE

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and field."""


@dataclass
class TowerOptions:
    """One encoder: `pretrained` (hub id or local folder) or `config` (random init)."""

    pretrained: str | None = None
    config: dict[str, Any] | None = None
    trainable: bool = True
    # Text towers only: a tokenizer.json file, a hub id/folder, or "bytes" (built in,
    # 256 byte symbols, any language). Default: the pretrained tower's own tokenizer.
    tokenizer: str | None = None


@dataclass
class ModelOptions:
    audio: TowerOptions = field(default_factory=lambda: TowerOptions(pretrained="rinna/japanese-hubert-base"))
    text: TowerOptions = field(
        default_factory=lambda: TowerOptions(pretrained="line-corporation/line-distilbert-base-japanese")
    )
    embedding_dim: int = 512
    head: str = "linear"  # "linear" or "residual" (ParaCLAP: linear→GELU→linear + residual + LayerNorm)
    head_dropout: float = 0.1
    text_pooling: str = "cls"  # "cls" or "mean"
    # "batch": standardise the pooled audio vector (BatchNorm, running statistics at inference,
    # so an embedding never depends on batch mates there). Pooled frames of an untrained tower
    # are nearly identical across utterances; centring them lets a tower trained from scratch
    # learn in minutes instead of collapsing. "none" for pretrained towers, as in the method.
    audio_norm: str = "none"
    # Which encoder layers the audio head reads ("last", or "all" mixed by learned weights)
    # and what of their frames ("mean", or "stats": mean and standard deviation).
    audio_layers: str = "last"
    audio_pooling: str = "mean"
    normalize_waveform: bool = False  # zero mean, unit variance over the valid samples
    # > 0: every utterance is encoded in pieces this long (a multiple of 20 ms), their frame
    # statistics merged exactly (emoclap.pieces), so the daemon encodes the pieces while the
    # customer is still speaking and only the last one remains when the utterance ends.
    audio_piece_s: float = 0.0
    max_tokens: int = 64
    init_logit_scale: float = 1 / 0.07
    max_logit_scale: float = 100.0

    @property
    def piece_samples(self) -> int:
        return round(self.audio_piece_s * SAMPLE_RATE)


@dataclass
class TrainOptions:
    emotions: list[str] = field(
        default_factory=lambda: ["pleasant", "aroused", "dominant", "credible", "interested", "positive"]
    )
    language: str = "ja"
    prompts: str = "prompts"
    paraphrases: bool = True  # sample among all sentences of a pole, not only the canonical one
    loss: str = "ce"  # "ce" (label-equality targets) or "kl" (GEmo-CLAP)
    normalisation: str = "pooled"  # as `trainer.labels`; "annotator": per-annotator z-scores
    epochs: int = 300
    batch_size: int = 64
    grad_accum: int = 1
    lr_encoder: float = 1e-6
    lr_head: float = 1e-6
    weight_decay: float = 0.01
    precision: str = "auto"  # "auto" (bf16/fp16 on GPU, fp32 on CPU), "fp32", "bf16", "fp16"
    # The frozen audio tower's one pass over the corpus: "fp32", or "bf16" autocast (on a
    # CPU with bf16 matrix instructions about twice as fast; pooled statistics at cosine
    # 0.9998 mean, 0.995 worst to fp32). Training only: bundles are exported from fp32.
    tower_precision: str = "fp32"
    # Which runtime makes that pass: "torch", or "onnxruntime" (the tower's piece graph as a
    # bundle ships it, run as the daemon runs it: on two cores 1.3 times as fast in fp32,
    # the same statistics to 1e-4, so fp32 caches are shared). With "onnxruntime" the
    # precision is "fp32" or "int8-weights" (the 8-bit-weight encoder `export --int8-weights`
    # ships); with "torch", "fp32" or "bf16". ONNX Runtime runs it on the CPU.
    tower_runtime: str = "torch"
    max_seconds: float = 8.0  # random crop length for training utterances
    # With both towers frozen, training runs on their cached pooled outputs: `views` per
    # utterance, the clean one and views-1 augmented ones (trainer/augment.py), one drawn
    # per epoch. Crops do not apply there: a view is the whole utterance, as at inference.
    views: int = 1
    # Frozen towers only: weight of a second contrastive term that draws each utterance's
    # audio embedding to the text head's embedding of its own transcript (the same
    # sentence is the positive, other sentences in the batch the negatives), so the audio
    # path learns what was said in the space the prompt sentences live in. 0: off.
    transcript_weight: float = 0.0
    # Weight of a term drawing each augmented view's audio embedding to its clean
    # utterance's (1 − cosine), so that a room, noise, other talkers or a narrow-band
    # microphone move the scores less. Frozen towers only. 0: off.
    view_consistency: float = 0.0
    val_fraction: float = 0.1
    patience: int = 20  # epochs without a better validation UA before stopping; 0 = never
    seed: int = 0
    num_workers: int = 0


@dataclass
class Config:
    model: ModelOptions = field(default_factory=ModelOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    source: str = "<defaults>"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data


def _build(cls, data: dict[str, Any], where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown field {key!r} (known: {', '.join(sorted(known))})")
        if key in ("audio", "text"):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a table")
            value = _build(TowerOptions, value, f"{where}.{key}")
        kwargs[key] = value
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if cls is TowerOptions and (obj.pretrained is None) == (obj.config is None):
        raise ConfigError(f"{where}: give exactly one of `pretrained` or `config`")
    return obj


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    unknown = set(data) - {"model", "train"}
    if unknown:
        raise ConfigError(f"{source}: unknown table(s) {sorted(unknown)} (known: model, train)")
    cfg = Config(
        model=_build(ModelOptions, data.get("model", {}), f"{source}: model"),
        train=_build(TrainOptions, data.get("train", {}), f"{source}: train"),
        source=source,
    )
    _check(cfg)
    return cfg


def _check(cfg: Config) -> None:
    choices = {
        ("model", "head"): ("linear", "residual"),
        ("model", "text_pooling"): ("cls", "mean"),
        ("model", "audio_norm"): ("none", "batch"),
        ("model", "audio_layers"): ("last", "all"),
        ("model", "audio_pooling"): ("mean", "stats"),
        ("train", "loss"): ("ce", "kl"),
        ("train", "precision"): ("auto", "fp32", "bf16", "fp16"),
        ("train", "tower_precision"): ("fp32", "bf16", "int8-weights"),
        ("train", "tower_runtime"): ("torch", "onnxruntime"),
    }
    for (table, key), allowed in choices.items():
        value = getattr(getattr(cfg, table), key)
        if value not in allowed:
            raise ConfigError(f"{cfg.source}: {table}.{key} = {value!r}; expected one of {allowed}")
    piece = cfg.model.audio_piece_s
    if not isinstance(piece, (int, float)) or isinstance(piece, bool) or not 0 <= piece <= 30 \
            or abs(piece * 50 - round(piece * 50)) > 1e-9:
        raise ConfigError(f"{cfg.source}: model.audio_piece_s = {piece!r}; expected 0 (whole utterances) "
                          "or a length in seconds up to 30 that is a multiple of 0.02")
    runtimes = {"bf16": "torch", "int8-weights": "onnxruntime"}
    wanted = runtimes.get(cfg.train.tower_precision, cfg.train.tower_runtime)
    if wanted != cfg.train.tower_runtime:
        raise ConfigError(f"{cfg.source}: train.tower_precision = {cfg.train.tower_precision!r} runs on "
                          f"train.tower_runtime = {wanted!r}, not {cfg.train.tower_runtime!r}")
    if cfg.train.batch_size < 2:
        raise ConfigError(f"{cfg.source}: train.batch_size must be at least 2 (contrastive loss)")
    if not 1 <= cfg.train.views <= 64:
        raise ConfigError(f"{cfg.source}: train.views must be 1 to 64")
    for key in ("transcript_weight", "view_consistency"):
        if not 0.0 <= getattr(cfg.train, key) <= 10.0:
            raise ConfigError(f"{cfg.source}: train.{key} must be 0 to 10")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a TOML config; `overrides` maps "train.epochs"-style keys to values."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config_from_dict(data, str(path))
