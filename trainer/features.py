"""Frozen towers, run once: pooled audio features per utterance and augmented view, and
pooled text features per sentence, so that training touches only the heads.

With a pretrained tower frozen (as the demo's Whisper-base is), every epoch would
otherwise run the same large encoder over the same audio. Features are cached on disk
next to the run (keyed by the tower, the pooling, the augmentation settings and each
utterance's content), so the folds of one run, a resumed run and a rerun of the same
corpus share them.
"""
from __future__ import annotations

import copy
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from emoclap import pieces
from trainer import augment
from trainer.bundle_towers import cpu_session
from trainer.export import export_piece_graph, quantize_weights_int8
from trainer.inference import run_batched
from trainer.tokenization import tokenize

FORMAT = 2  # bump when the augmentation or the pooling changes what a view is


def audio_key(audio) -> str:
    """The utterance's content: a file's bytes or an array's samples, however it was named."""
    if isinstance(audio, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(audio, np.float32).tobytes()).hexdigest()[:24]
    return hashlib.sha256(Path(audio).read_bytes()).hexdigest()[:24]


def tower_key(cfg, views: int) -> str:
    spec = {"format": FORMAT, "audio": vars(cfg.model.audio), "normalize": cfg.model.normalize_waveform,
            "layers": cfg.model.audio_layers, "pooling": cfg.model.audio_pooling,
            "views": views, "seed": cfg.train.seed}
    # Not the runtime: in fp32 ONNX Runtime and torch give the same statistics (to 1e-4).
    if cfg.train.tower_precision != "fp32":  # absent for fp32, so earlier caches still match
        spec["tower_precision"] = cfg.train.tower_precision
    if cfg.model.audio_piece_s:  # absent when 0, so caches made before pieces existed still match
        spec["piece_s"] = cfg.model.audio_piece_s
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


class AudioFeatures:
    """[views, N, L, S] pooled statistics of the frozen audio tower (`model.audio_statistics`),
    keyed by each utterance's content and computed where missing."""

    def __init__(self, folder: Path, key: str):
        self.path = Path(folder) / f"audio-{key}.npz"
        self._rows: dict[str, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as data:
                self._rows = dict(zip(data["keys"].tolist(), data["features"]))

    def get(self, model, corpus, views: int, seed: int, device="cpu", precision: str = "fp32",
            runtime: str = "torch") -> np.ndarray:
        keys = [audio_key(a) for a in corpus.audio]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self._rows}.values())
        if todo:
            started = time.time()
            print(f"frozen audio tower: {len(todo)} utterances × {views} views ({precision}, {runtime})",
                  file=sys.stderr)
            model.eval()
            clean = [corpus.clip(i) for i in todo]
            clips = []
            for n, i in enumerate(todo):
                # Seeded by the content, so a view is the same whatever the manifest calls it;
                # the other utterances computed with it are its background talkers.
                others = clean[:n] + clean[n + 1:]
                clips += augment.views(clean[n], views, seed, int(keys[i][:8], 16), others)
            pooled = tower_statistics(model, clips, device, precision, runtime)
            for n, i in enumerate(todo):
                self._rows[keys[i]] = pooled[n * views:(n + 1) * views].astype(np.float16)
            self._save()
            print(f"frozen audio tower: {time.time() - started:.0f} s", file=sys.stderr)
        return np.stack([self._rows[k] for k in keys], axis=1).astype(np.float32)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.stem + ".tmp.npz")
        keys = list(self._rows)
        np.savez(tmp, keys=np.array(keys), features=np.stack([self._rows[k] for k in keys]))
        tmp.replace(self.path)


def tower_statistics(model, clips: list[np.ndarray], device="cpu", precision: str = "fp32",
                     runtime: str = "torch") -> np.ndarray:
    """[N, L, S] `model.audio_statistics` of each clip. "onnxruntime" runs the tower's piece
    graph, the one a bundle ships (`trainer.export.export_piece_graph`), through
    `emoclap.pieces` as the daemon does: on two cores 1.3 times as fast as torch in fp32
    (1.6 with "int8-weights", the bundle's 8-bit-weight encoder's own statistics), and in
    fp32 the same statistics to 1e-4 (tests/test_trainer_frozen.py)."""
    if runtime == "onnxruntime":
        return _onnx_statistics(model, clips, precision)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        return run_batched(model.audio_statistics, clips, 8, device)


def _onnx_statistics(model, clips: list[np.ndarray], precision: str) -> np.ndarray:
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()  # the graph is traced on the CPU; training stays where it is
    with tempfile.TemporaryDirectory(prefix="emoclap-tower-") as tmp:
        graph = Path(tmp) / "pieces.onnx"
        inputs = export_piece_graph(model, graph)
        if precision == "int8-weights":
            quantize_weights_int8(graph, graph.with_name("pieces-int8w.onnx"))
            graph = graph.with_name("pieces-int8w.onnx")
        session = cpu_session(graph)
    # Whole utterances are one piece as long as the longest clip.
    piece = model.opts.piece_samples or max((c.size for c in clips), default=1)
    spec = pieces.PieceSpec(piece, model.audio.min_samples, model.audio_pool.std, "offsets" in inputs)
    run, _ = pieces.session_runs(session, None)
    return pieces.encode_utterances(clips, spec, run, lambda stats: stats, 8)[0]


def frozen_audio_features(cfg, run_folder: Path, model, corpus, device="cpu") -> np.ndarray:
    """[views, N, L, S] of `corpus` from the run's cache (`run_folder`/features), computed
    where missing as `cfg.train` says (views, seed, tower precision): the folds, the CLAP
    model and the baseline of one run share them."""
    opts = cfg.train
    return AudioFeatures(Path(run_folder) / "features", tower_key(cfg, opts.views)).get(
        model, corpus, opts.views, opts.seed, device, opts.tower_precision, opts.tower_runtime)


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
    """Each utterance once per epoch, as one of its views drawn for that epoch (with
    `with_clean`, its clean view beside it, for the view-consistency term)."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, seed: int, with_clean: bool = False):
        self.features, self.labels, self.seed, self.epoch = features, labels, seed, 0
        self.with_clean = with_clean

    def __len__(self):
        return self.features.shape[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i):
        view = int(np.random.default_rng([self.seed, self.epoch, i]).integers(self.features.shape[0]))
        if self.with_clean:
            return self.features[view, i], self.labels[i], self.features[0, i]
        return self.features[view, i], self.labels[i]


def collate_features(items):
    """(views [B, L, S], labels [B, ...] as integers[, clean views [B, L, S]])."""
    views, labels, *clean = zip(*items)
    return (torch.from_numpy(np.stack(views)), torch.as_tensor(np.stack(labels), dtype=torch.long),
            *(torch.from_numpy(np.stack(c)) for c in clean))
