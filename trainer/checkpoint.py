"""Checkpoints: everything needed to resume training or to evaluate and export a model."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from trainer.config import Config, config_from_dict
from trainer.descriptions import Descriptions
from trainer.tokenization import tokenizer_from_state, tokenizer_state


def save_checkpoint(path: Path, *, config: Config, model_state: dict, tokenizer: Tokenizer,
                    descriptions: Descriptions, extra: dict[str, Any]) -> None:
    """Atomic write: a crash mid-save leaves the previous checkpoint intact."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": "emoclap-checkpoint", "config": config.to_dict(), "model": model_state,
                "tokenizer": tokenizer_state(tokenizer), "descriptions": descriptions.__dict__, **extra}, tmp)
    tmp.replace(path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(Path(path), map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{path}: cannot read checkpoint: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != "emoclap-checkpoint":
        raise ValueError(f"{path}: not an emoclap checkpoint")
    return data


@dataclass
class Loaded:
    model: Any
    tokenizer: Tokenizer
    config: Config
    descriptions: Descriptions
    training_summary: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)


def load_for_inference(path: Path) -> Loaded:
    from trainer.model import ClapModel

    data = read_checkpoint(path)
    config = config_from_dict(data["config"], str(path))
    model = ClapModel(config.model, weights=False)
    model.load_state_dict(data["model"])
    model.eval()
    return Loaded(model, tokenizer_from_state(data["tokenizer"]), config, Descriptions(**data["descriptions"]),
                  data.get("summary", {}), data.get("metrics", {}), data)
