"""Frozen towers, run once: pooled audio features per utterance and augmented view, and
pooled text features per sentence, so that training touches only the heads.

With a pretrained tower frozen (as the demo's Whisper-base is), every epoch would
otherwise run the same large encoder over the same audio. Features are cached on disk
next to the run (keyed by the tower, the augmentation settings and each file's size and
modification time), so the folds of one run, a resumed run and a rerun share them.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from trainer import augment
from trainer.inference import run_batched
from trainer.model import tokenize

FORMAT = 1  # bump when the augmentation or the pooling changes what a view is


def _file_key(path) -> str:
    # Resolved: a manifest named by a relative or an absolute path reads the same cache.
    path = Path(path).resolve()
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def tower_key(cfg, views: int) -> str:
    spec = {"format": FORMAT, "audio": vars(cfg.model.audio), "normalize": cfg.model.normalize_waveform,
            "views": views, "seed": cfg.train.seed}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


class AudioFeatures:
    """[views, N, H] pooled features of the frozen audio tower, computed where missing."""

    def __init__(self, folder: Path, key: str):
        self.path = Path(folder) / f"audio-{key}.npz"
        self._rows: dict[str, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as data:
                self._rows = dict(zip(data["keys"].tolist(), data["features"]))

    def get(self, model, corpus, views: int, seed: int, device="cpu") -> np.ndarray:
        keys = [_file_key(a) if not isinstance(a, np.ndarray) else None for a in corpus.audio]
        todo = [i for i, k in enumerate(keys) if k is None or k not in self._rows]
        if todo:
            started = time.time()
            print(f"frozen audio tower: {len(todo)} utterances × {views} views", file=sys.stderr)
            model.audio.eval()
            clips, owner = [], []
            for i in todo:
                # The views' noise is seeded by the file, however the manifest named it.
                key = zlib.crc32(str(Path(corpus.audio[i]).resolve()).encode()) if keys[i] else i
                clips += augment.views(corpus.clip(i), views, seed, key)
                owner.append(i)
            pooled = run_batched(model.audio.pooled, clips, model.audio.hidden_size, 8, device)
            for n, i in enumerate(owner):
                rows = pooled[n * views:(n + 1) * views]
                if keys[i] is not None:
                    self._rows[keys[i]] = rows
                else:
                    self._rows[f"array:{i}"] = rows
            self._save()
            print(f"frozen audio tower: {time.time() - started:.0f} s", file=sys.stderr)
        rows = [self._rows[k if k is not None else f"array:{i}"] for i, k in enumerate(keys)]
        return np.stack(rows, axis=1)

    def _save(self) -> None:
        keys = [k for k in self._rows if not k.startswith("array:")]
        if not keys:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.stem + ".tmp.npz")
        np.savez(tmp, keys=np.array(keys), features=np.stack([self._rows[k] for k in keys]))
        tmp.replace(self.path)


@torch.no_grad()
def text_features(model, tokenizer, sentences: list[str], device="cpu") -> dict[str, torch.Tensor]:
    """Pooled output of the frozen text tower for each distinct sentence."""
    model.text.eval()
    unique = sorted(set(sentences))
    out = {}
    for start in range(0, len(unique), 64):
        batch = unique[start:start + 64]
        ids, mask = tokenize(tokenizer, batch)
        pooled = model.text(ids.to(device), mask.to(device)).float()
        out.update(zip(batch, pooled))
    return out


class FeatureDataset(Dataset):
    """Each utterance once per epoch, as one of its views drawn for that epoch."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, seed: int):
        self.features, self.labels, self.seed, self.epoch = features, labels, seed, 0

    def __len__(self):
        return self.features.shape[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i):
        view = int(np.random.default_rng([self.seed, self.epoch, i]).integers(self.features.shape[0]))
        return self.features[view, i], self.labels[i]


def collate_features(items):
    return (torch.from_numpy(np.stack([f for f, _ in items])),
            torch.as_tensor(np.stack([y for _, y in items]), dtype=torch.long))
