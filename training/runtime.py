"""The training run's machinery: devices and DDP, seeds and RNG state, optimiser and schedule,
checkpoints and the metrics log (used by :mod:`training.engine` and the training-step benchmark)."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from core.fileio import atomic_write_bytes, atomic_write_json
from training.config import TrainConfig
from training.data import Split, load_photos, split_by_identity, split_from_json, split_to_json
from training.model import EmbeddingNet

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
FINAL = "final.pt"


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's contract
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(cfg: TrainConfig, ddp: Dist | None = None) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda was asked for, but no CUDA device is available")
        return torch.device("cuda", ddp.local_rank if ddp else 0)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float):
    """Linear warm-up from 0 to 1 over ``warmup_steps``, then cosine from 1 to ``min_ratio``."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


class Net(nn.Module):
    """Embedding network and head in one module, so DDP synchronises both."""

    def __init__(self, embedding: EmbeddingNet, head: nn.Module):
        super().__init__()
        self.embedding = embedding
        self.head = head

    def forward(self, x, y, margin):
        emb = self.embedding.features(x)
        return self.head(emb, y, margin)


def make_optimizer(cfg: TrainConfig, emb: EmbeddingNet, head: nn.Module, lr: float) -> torch.optim.Optimizer:
    groups = [
        {"params": [p for p in emb.parameters() if p.requires_grad], "lr": lr},
        {"params": [p for p in head.parameters() if p.requires_grad], "lr": lr * cfg.optim.head_lr_mult},
    ]
    o = cfg.optim
    factories = {
        "adam": lambda: torch.optim.Adam(groups, lr=lr, weight_decay=o.weight_decay),
        "adamw": lambda: torch.optim.AdamW(groups, lr=lr, weight_decay=o.weight_decay),
        "sgd": lambda: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=o.weight_decay),
    }
    return factories[o.name]()


def save_checkpoint(path: Path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    # Our own files: model/optimiser state, config dicts and RNG states (numpy state is a tuple).
    return torch.load(path, map_location="cpu", weights_only=False)


class MetricsLog:
    """Appends rows to ``metrics.csv`` (and TensorBoard scalars when tensorboard is installed)."""

    FIELDS = ["time_s", "stage", "epoch", "step", "loss", "acc", "lr", "margin", "images_per_s", "val_map5"]

    def __init__(self, run_dir: Path, enabled: bool):
        self.path = run_dir / "metrics.csv"
        self.enabled = enabled
        self.t0 = time.time()
        self.tb = None
        if enabled:
            if not self.path.exists():
                with open(self.path, "w", newline="") as fh:
                    csv.writer(fh).writerow(self.FIELDS)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def write(self, **row) -> None:
        if not self.enabled:
            return
        row["time_s"] = round(time.time() - self.t0, 1)
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([row.get(f, "") for f in self.FIELDS])
        if self.tb is not None:
            for k in ("loss", "acc", "lr", "val_map5"):
                if row.get(k) not in (None, ""):
                    self.tb.add_scalar(k, float(row[k]), int(row["step"]))


def prepare_split(cfg: TrainConfig, run_dir: Path) -> Split:
    """Load the photos and split them by identity; the split is saved as ``split.json`` (and reused)."""
    path = run_dir / "split.json"
    if path.exists():
        return split_from_json(json.loads(path.read_text()))
    d = cfg.data
    photos = load_photos(d.images, d.labels, d.boxes, d.extra_labels, d.max_images, cfg.seed)
    split = split_by_identity(photos, d.val_open_fraction, d.val_closed_fraction, d.val_new_whale_fraction, cfg.seed)
    atomic_write_json(path, split_to_json(split))
    return split
