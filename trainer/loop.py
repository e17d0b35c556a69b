"""The training loop shared by the CLAP model and the supervised baseline.

Seeded per epoch (data order, crops, sentence sampling, dropout), so a run resumed
from a checkpoint continues exactly as if it had never stopped. Under torchrun each
process trains on its shard of every batch through DistributedDataParallel.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from emoclap.audio import SAMPLE_RATE, pad_batch, read_mono
from trainer.config import TrainOptions


@dataclass
class Corpus:
    """Utterances with their labels: audio (paths or arrays), labels [N, K] in {0, 1, -1}."""

    audio: list
    labels: np.ndarray
    sessions: list[str]
    emotions: list[str]
    roles: list[str] = field(default_factory=list)
    transcripts: list[str] = field(default_factory=list)  # "" where unknown

    def subset(self, idx) -> "Corpus":
        idx = list(map(int, idx))
        return Corpus([self.audio[i] for i in idx], self.labels[idx], [self.sessions[i] for i in idx],
                      self.emotions, [self.roles[i] for i in idx] if self.roles else [],
                      [self.transcripts[i] for i in idx] if self.transcripts else [])

    def labelled(self) -> "Corpus":
        """Without the utterances that no emotion has a label for (they add nothing to a loss)."""
        return self.subset(np.flatnonzero((self.labels >= 0).any(axis=1)))

    def clip(self, i: int) -> np.ndarray:
        a = self.audio[i]
        return a if isinstance(a, np.ndarray) else read_mono(a)


class UtteranceDataset(Dataset):
    """Clips with labels; in training mode a random crop of at most `max_samples`."""

    def __init__(self, corpus: Corpus, max_samples: int | None, seed: int):
        self.corpus, self.max_samples, self.seed, self.epoch = corpus, max_samples, seed, 0
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self):
        return len(self.corpus.audio)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i):
        if i not in self._cache:
            self._cache[i] = self.corpus.clip(i)
        clip = self._cache[i]
        if self.max_samples and len(clip) > self.max_samples:
            start = np.random.default_rng([self.seed, self.epoch, i]).integers(len(clip) - self.max_samples + 1)
            clip = clip[start : start + self.max_samples]
        return clip, self.corpus.labels[i]


def collate(items):
    wave, lengths = pad_batch([c for c, _ in items])
    return (torch.from_numpy(wave), torch.from_numpy(lengths),
            torch.as_tensor(np.stack([y for _, y in items]), dtype=torch.long))


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """torchrun's environment → a process group (NCCL on GPU, gloo on CPU); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def resolve_device(name: str) -> str:
    """"auto": this process's GPU (LOCAL_RANK under torchrun) when there is one, else the CPU."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def autocast_for(device: torch.device, precision: str):
    """(autocast context factory, GradScaler or None): mixed precision on GPU only."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext, None
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def param_groups(heads: list, encoders: list, opts: TrainOptions) -> list[dict]:
    """Encoders and heads at their own learning rates; no weight decay on gains, biases, scale."""
    groups = []
    for params, lr in ((encoders, opts.lr_encoder), (heads, opts.lr_head)):
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        rest = [p for p in params if p.ndim < 2]
        groups += [{"params": decay, "lr": lr, "weight_decay": opts.weight_decay},
                   {"params": rest, "lr": lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


StepLoss = Callable[[torch.nn.Module, tuple, np.random.Generator], torch.Tensor]


def train(model: torch.nn.Module, *, corpus: Corpus, opts: TrainOptions, out: Path, step_loss: StepLoss,
          validate: Callable[[torch.nn.Module], float] | None, save_best: Callable[[Path, dict], None],
          groups: list[dict], resume: bool = False, device: str | torch.device = "cpu",
          after_step: Callable[[torch.nn.Module], None] | None = None,
          data: Dataset | None = None, collate_fn=collate) -> dict:
    """Run the epochs; checkpoint `out/last.pt` each epoch and `save_best(out/best.pt, summary)`
    whenever validation UA improves. Returns the summary (history, best epoch, timing).
    `data` replaces the corpus's clips (e.g. cached features); it needs `set_epoch`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ddp = init_distributed()
    device = torch.device(device)
    model.to(device)
    net = model
    if ddp.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    optimizer = torch.optim.AdamW(groups)
    autocast, scaler = autocast_for(device, opts.precision)
    if data is None:
        data = UtteranceDataset(corpus, int(opts.max_seconds * SAMPLE_RATE) if opts.max_seconds else None,
                                opts.seed)
    sampler = (DistributedSampler(data, ddp.world, ddp.rank, shuffle=True, seed=opts.seed, drop_last=True)
               if ddp.world > 1 else None)
    state = {"epoch": 0, "history": [], "best_ua": -math.inf, "best_epoch": None, "bad_epochs": 0, "wall_s": 0.0}
    last = out / "last.pt"
    if resume and last.is_file():
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = ckpt["state"]
        if ddp.main:
            print(f"resuming {out} after epoch {state['epoch']}", file=sys.stderr)
    start_epoch = state["epoch"]
    for epoch in range(start_epoch + 1, opts.epochs + 1):
        t0 = time.time()
        torch.manual_seed(opts.seed * 100_003 + epoch)  # dropout and masking
        data.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
            order = sampler
        else:
            order = RandomSampler(data, generator=torch.Generator().manual_seed(opts.seed * 7919 + epoch))
        loader = DataLoader(data, batch_size=opts.batch_size, sampler=order, collate_fn=collate_fn,
                            num_workers=opts.num_workers, drop_last=len(data) > opts.batch_size)
        rng = np.random.default_rng([opts.seed, epoch])
        net.train()
        losses, seen = [], 0
        bar = _progress(loader, epoch, opts.epochs, ddp.main)
        optimizer.zero_grad(set_to_none=True)
        for step, batch in enumerate(bar, 1):
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            boundary = step % opts.grad_accum == 0 or step == len(loader)
            sync = net.no_sync if (ddp.world > 1 and not boundary) else contextlib.nullcontext
            with sync():
                with autocast():
                    loss = step_loss(net, batch, rng)
                scaled = loss / opts.grad_accum
                (scaler.scale(scaled) if scaler else scaled).backward()
            if boundary:
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if after_step:
                    after_step(model)
            losses.append(float(loss.detach()))
            seen += len(batch[0])
            if ddp.main and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", utt_s=f"{seen / (time.time() - t0):.1f}")
        if ddp.world > 1:
            # Running statistics (BatchNorm) are per process: take rank 0's, so that every
            # process validates the same model and takes the same early-stopping decision.
            for buf in model.buffers():
                dist.broadcast(buf, 0)
        val = validate(model) if validate else None
        state["wall_s"] += time.time() - t0
        state["epoch"] = epoch
        state["history"].append({"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                                 "val_ua": val, "seconds": round(time.time() - t0, 3)})
        improved = val is None or val > state["best_ua"]
        if improved:
            state["best_ua"], state["best_epoch"], state["bad_epochs"] = (val if val is not None else -math.inf,
                                                                          epoch, 0)
        else:
            state["bad_epochs"] += 1
        if ddp.main:
            print(f"epoch {epoch}: loss {state['history'][-1]['loss']:.4f}"
                  + (f", validation UA {val:.3f}" if val is not None else ""), file=sys.stderr)
            if improved:
                save_best(out / "best.pt", _summary(state, ddp))
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict() if scaler else None, "state": state}, last.with_suffix(".tmp"))
            last.with_suffix(".tmp").replace(last)
        if opts.patience and state["bad_epochs"] >= opts.patience:
            if ddp.main:
                print(f"early stop: no better validation UA for {opts.patience} epochs", file=sys.stderr)
            break
    if ddp.world > 1:
        dist.barrier()
    return _summary(state, ddp)


def _summary(state: dict, ddp: Dist) -> dict:
    return {"epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
            "best_val_ua": None if state["best_ua"] == -math.inf else state["best_ua"],
            "wall_s": round(state["wall_s"], 1), "processes": ddp.world, "history": list(state["history"])}


def _progress(loader, epoch: int, epochs: int, main: bool):
    if not main:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, dynamic_ncols=True,
                disable=not sys.stderr.isatty())
