"""The training loop: stages, warm-up + cosine schedule, AMP, checkpoints, resume, DDP.

Schedule (1st place of Kaggle 2019 Humpback Whale Identification, with the 3rd place's network):
stage 1 trains on identities with at least ``min_images`` photos; stage 2 on all identities with
the early backbone frozen. ``new_whale`` photos are never a class. Each stage has its own head,
whose class centres are copied from the previous stage for the identities they share.

Resuming (``whaleid train --resume``) restores model, head, optimiser, scheduler, AMP scaler,
stage, epoch, step within the epoch and RNG states from ``checkpoints/last.pt``; because batch
order and augmentation are pure functions of ``(seed, epoch, index)``, a resumed run takes the same
steps as an uninterrupted one.

DDP: under ``torchrun`` (``WORLD_SIZE > 1``) each process trains on its shard of every batch
order, with gloo on the CPU and NCCL on CUDA; rank 0 writes checkpoints, logs and evaluates.
"""

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
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from core.boxes import full_frame
from core.fileio import atomic_write_bytes, atomic_write_json
from core.preprocess import PreprocessSpec, crop_resize, normalize
from training.augment import augment, build_augment
from training.config import TrainConfig, save_config, to_dict
from training.data import (
    ClassMap,
    ImageCache,
    Photo,
    Split,
    class_map,
    jitter_box,
    load_photos,
    split_by_identity,
    split_from_json,
    split_to_json,
)
from training.heads import build_head
from training.model import EmbeddingNet, build_embedding_net, freeze_prefixes, set_frozen_bn_eval

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
FINAL = "final.pt"


# --------------------------------------------------------------------------------------------
# data


def preprocess_spec(cfg: TrainConfig) -> PreprocessSpec:
    m = cfg.model
    return PreprocessSpec(
        input_size=tuple(m.input_size), mean=tuple(m.mean), std=tuple(m.std), interpolation=m.interpolation
    )


class TrainDataset(Dataset):
    """Training samples ``(photo, class, flipped)`` → ``(3, H, W) float32`` tensors and class ids.

    A sample is the photo's box (or the full frame) with jitter, cropped and resized in one step,
    augmented, mirrored when ``flipped``, then normalised exactly as ``core.preprocess`` does.
    """

    def __init__(self, samples: list[tuple[Photo, int, bool]], cache: ImageCache, cfg: TrainConfig, seed: int):
        self.samples = samples
        self.cache = cache
        self.spec = preprocess_spec(cfg)
        self.aug_cfg = cfg.augment
        self.transform = build_augment(cfg.augment)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        photo, label, flipped = self.samples[i]
        pixels, scale = self.cache.get(photo.image)
        h, w = pixels.shape[:2]
        box = full_frame(w, h) if photo.box is None else np.asarray(photo.box, np.float32) * scale
        rng = np.random.default_rng([self.seed, self.epoch, i])
        box = jitter_box(box, w, h, self.aug_cfg.box_jitter, rng)
        crop = crop_resize(pixels, box, self.spec.input_size, self.spec.interpolation)
        crop = augment(self.transform, crop, int(rng.integers(2**31 - 1)))
        if flipped:
            crop = np.ascontiguousarray(crop[:, ::-1])
        return torch.from_numpy(normalize(crop, self.spec)), label


class EpochBatchSampler(Sampler):
    """Batches of a seeded permutation per epoch, sharded across DDP ranks, resumable mid-epoch.

    Every rank sees ``len(self)`` batches of ``batch_size`` indices (the last, partial global
    batch is dropped so ranks stay in step).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return max(1, self.n // (self.batch_size * self.world))

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        while len(perm) < self.batch_size * self.world:  # tiny data sets: repeat
            perm += perm
        per_batch = self.batch_size * self.world
        for b in range(self.start_batch, len(self)):
            chunk = perm[b * per_batch : (b + 1) * per_batch]
            yield chunk[self.rank :: self.world]


# --------------------------------------------------------------------------------------------
# helpers


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


class _Net(nn.Module):
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


# --------------------------------------------------------------------------------------------
# the loop


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


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, evaluate_at_end: bool = True) -> Path:
    """Train an embedding network as ``cfg`` says; returns the run folder.

    Writes ``config.yaml``, ``split.json``, ``metrics.csv``, ``checkpoints/last.pt`` (resumable)
    and ``checkpoints/final.pt``, and, when ``evaluate_at_end``, ``eval.json`` (validation MAP@5 and
    the new_whale threshold chosen by both rules).
    """
    run_dir = Path(cfg.run_dir)
    kind = "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
    ddp = init_distributed(kind)
    device = pick_device(cfg, ddp)
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    use_amp = cfg.amp and device.type == "cuda"
    channels_last = cfg.channels_last and device.type == "cuda"
    seed_everything(cfg.seed + ddp.rank)

    ckpt_path = run_dir / CHECKPOINT_DIR / LAST
    state = None
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        state = load_checkpoint(ckpt_path)
    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        prepare_split(cfg, run_dir)
    if ddp.world > 1:
        dist.barrier()
    split = prepare_split(cfg, run_dir)
    if ddp.main:
        log.info("split: %s", split.summary())

    emb = build_embedding_net(cfg.model).to(device)
    if channels_last:
        emb = emb.to(memory_format=torch.channels_last)
    cache = ImageCache(cfg.data.images, cfg.data.cache_max_side_px)
    metrics = MetricsLog(run_dir, ddp.main)
    global_step = 0 if state is None else int(state["global_step"])
    start_stage = 0 if state is None else int(state["stage"])
    if state is not None:
        emb.load_state_dict(state["embedding"])
    prev_head: tuple[ClassMap, nn.Module] | None = None
    stopped = False
    epoch_base = 0  # whole epochs of earlier stages (seeds batch order and augmentation)
    epochs_before = 0.0  # training epochs of earlier stages (drives the margin warm-up)

    for si, stage in enumerate(cfg.stages):
        cmap = class_map(split.train, stage.min_images, cfg.data.flip_identities)
        samples = cmap.samples(split.train)
        if cfg.head.kind == "binary" and cfg.data.new_whale_negatives:
            # 1st place: new_whale photos are negatives of every class (label -1), mirrored too
            samples += [
                (p, -1, flip)
                for p in split.train_new_whale
                for flip in ((False, True) if cfg.data.flip_identities else (False,))
            ]
        per_rank_batch = cfg.optim.batch_size
        sampler = EpochBatchSampler(len(samples), per_rank_batch, cfg.seed + 7919 * si, ddp.rank, ddp.world)
        steps_per_epoch = len(sampler)
        total_steps = max(1, int(round(stage.epochs * steps_per_epoch)))
        n_epochs = math.ceil(total_steps / steps_per_epoch)
        if si < start_stage:
            epoch_base += n_epochs
            epochs_before += stage.epochs
            continue
        head = build_head(
            cfg.head.kind, cfg.model.embedding_dim, cmap.num_classes, cfg.head.scale, cfg.head.margin_rad
        ).to(device)
        if prev_head is not None:
            _copy_centres(prev_head, (cmap, head))
        freeze_prefixes(emb, stage.freeze)
        lr = cfg.optim.lr * stage.lr_mult
        opt = make_optimizer(cfg, emb, head, lr)
        warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps, warmup, cfg.optim.min_lr_ratio))
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        start_epoch, start_batch = 0, 0
        if state is not None and si == start_stage:
            head.load_state_dict(state["head"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            start_epoch, start_batch = int(state["epoch"]), int(state["step_in_epoch"])
            if start_batch >= steps_per_epoch:
                start_epoch, start_batch = start_epoch + 1, 0
            set_rng_state(state["rng"])
            state = None
        net = _Net(emb, head)
        model = net
        if ddp.world > 1:
            model = nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None
            )
        dataset = TrainDataset(samples, cache, cfg, cfg.seed + 104729 * si)
        stage_step = start_epoch * steps_per_epoch + start_batch
        if ddp.main:
            log.info(
                "stage %s: %d classes, %d samples, %d steps of %d",
                stage.name,
                cmap.num_classes,
                len(samples),
                total_steps,
                per_rank_batch * ddp.world,
            )
        bar = tqdm(
            total=total_steps,
            initial=stage_step,
            desc=stage.name,
            unit="step",
            disable=not (progress and ddp.main),
            dynamic_ncols=True,
        )
        for epoch in range(start_epoch, n_epochs):
            sampler.set_epoch(epoch_base + epoch, start_batch if epoch == start_epoch else 0)
            dataset.set_epoch(epoch_base + epoch)
            # The loader's own generator keeps its seed draws off the global RNG (exact resume).
            loader = DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=cfg.data.num_workers,
                pin_memory=device.type == "cuda",
                generator=torch.Generator().manual_seed(cfg.seed + epoch_base + epoch),
            )
            net.train()
            set_frozen_bn_eval(emb, stage.freeze)
            t_epoch, seen = time.time(), 0
            step_in_epoch = start_batch if epoch == start_epoch else 0
            for x, y in loader:
                if stage_step >= total_steps or (cfg.max_steps and global_step >= cfg.max_steps):
                    break
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                margin = _margin(cfg, epochs_before + stage_step / steps_per_epoch)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    loss, logits = model(x, y, margin)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.optim.grad_clip:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                stage_step += 1
                global_step += 1
                step_in_epoch += 1
                seen += len(x) * ddp.world
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {global_step}")
                bar.update(1)
                if global_step % max(1, cfg.log_every_steps) == 0 or stage_step == total_steps:
                    acc = (logits.argmax(1) == y).float().mean().item()
                    ips = seen / max(time.time() - t_epoch, 1e-6)
                    bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}", ips=f"{ips:.1f}")
                    metrics.write(
                        stage=stage.name,
                        epoch=epoch,
                        step=global_step,
                        loss=round(loss.item(), 5),
                        acc=round(acc, 4),
                        lr=f"{sched.get_last_lr()[0]:.3g}",
                        margin=round(margin, 4),
                        images_per_s=round(ips, 2),
                    )
                if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0 and ddp.main:
                    _checkpoint(
                        ckpt_path, emb, head, opt, sched, scaler, si, epoch, step_in_epoch, global_step, cfg, cmap
                    )
            if ddp.main:
                _checkpoint(ckpt_path, emb, head, opt, sched, scaler, si, epoch, step_in_epoch, global_step, cfg, cmap)
            if cfg.max_steps and global_step >= cfg.max_steps:
                stopped = True
                break
            if (
                si == len(cfg.stages) - 1
                and cfg.eval.every_epochs
                and ddp.main
                and (epoch + 1) % max(1, int(cfg.eval.every_epochs)) == 0
                and epoch + 1 < n_epochs
            ):
                report = _evaluate(emb, cfg, split, device, run_dir, progress)
                metrics.write(stage=stage.name, epoch=epoch, step=global_step, val_map5=round(report.map5, 5))
        bar.close()
        epoch_base += n_epochs
        epochs_before += stage.epochs
        prev_head = (cmap, head)
        if stopped:
            break

    if ddp.main:
        save_checkpoint(
            run_dir / CHECKPOINT_DIR / FINAL,
            {
                "embedding": emb.state_dict(),
                "config": to_dict(cfg),
                "global_step": global_step,
            },
        )
        if evaluate_at_end:
            report = _evaluate(emb, cfg, split, device, run_dir, progress)
            metrics.write(stage="final", epoch="", step=global_step, val_map5=round(report.map5, 5))
    if ddp.world > 1:
        dist.barrier()
    return run_dir


def _margin(cfg: TrainConfig, epochs_done: float) -> float:
    m = cfg.head.margin_rad
    if cfg.head.margin_warmup_epochs > 0:
        return m * min(1.0, epochs_done / cfg.head.margin_warmup_epochs)
    return m


def _copy_centres(prev: tuple[ClassMap, nn.Module], new: tuple[ClassMap, nn.Module]) -> None:
    """Start a stage's class centres from the previous stage's for the identities both know."""
    (pmap, phead), (nmap, nhead) = prev, new
    pidx = {w: i for i, w in enumerate(pmap.identities)}
    with torch.no_grad():
        for j, w in enumerate(nmap.identities):
            i = pidx.get(w)
            if i is None:
                continue
            nhead.weight[j] = phead.weight[i]
            if nmap.flip and pmap.flip:
                nhead.weight[j + len(nmap.identities)] = phead.weight[i + len(pmap.identities)]


def _checkpoint(path, emb, head, opt, sched, scaler, stage, epoch, step_in_epoch, global_step, cfg, cmap) -> None:
    save_checkpoint(
        path,
        {
            "embedding": emb.state_dict(),
            "head": head.state_dict(),
            "head_classes": list(cmap.identities),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "stage": stage,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "rng": rng_state(),
            "config": to_dict(cfg),
        },
    )


def _evaluate(emb: EmbeddingNet, cfg: TrainConfig, split: Split, device, run_dir: Path, progress: bool):
    from training.evaluate import evaluate_model

    report = evaluate_model(emb, cfg, split, device, progress=progress)
    atomic_write_json(run_dir / "eval.json", report.as_dict())
    log.info(
        "validation: MAP@5 %.4f (top-1 known %.3f), threshold %.4f (%s)",
        report.map5,
        report.top1_known,
        report.threshold,
        report.threshold_rule,
    )
    return report
