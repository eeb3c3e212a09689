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

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.fileio import atomic_write_json
from training.config import StageConfig, TrainConfig, save_config, to_dict
from training.data import ClassMap, ImageCache, Split, class_map
from training.heads import build_head
from training.model import EmbeddingNet, build_embedding_net, freeze_prefixes, set_frozen_bn_eval
from training.runtime import (
    CHECKPOINT_DIR,
    FINAL,
    LAST,
    Dist,
    MetricsLog,
    Net,
    init_distributed,
    load_checkpoint,
    lr_lambda,
    make_optimizer,
    pick_device,
    prepare_split,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from training.samples import EpochBatchSampler, TrainDataset

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_DIR", "FINAL", "LAST", "load_checkpoint", "prepare_split", "train", "train_step"]


def train_step(
    model: nn.Module,
    params: list[nn.Parameter],
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    y: torch.Tensor,
    margin: float,
    use_amp: bool = False,
    grad_clip: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step: forward (fp16 autocast when ``use_amp``), loss, backward through the AMP
    scaler, optional gradient-norm clipping, optimiser step.

    Args:
        model: :class:`~training.runtime.Net` (or its DDP wrapper) returning ``(loss, logits)``.
        params: the parameters to clip (the unwrapped network's).
        x: ``(b, 3, H, W) float32`` batch; y: ``(b,) int64`` class ids (-1: a negative of every class).
        margin: the head's margin ``m`` in radians for this step.
        grad_clip: clip the gradient norm to this (0: no clipping).

    Returns:
        ``(loss, logits)``: the batch loss (scalar tensor) and ``(b, classes)`` logits.
    """
    with torch.autocast(device_type=x.device.type, dtype=torch.float16, enabled=use_amp):
        loss, logits = model(x, y, margin)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(opt)
    scaler.update()
    return loss, logits


@dataclass
class _Run:
    """What the stages of one run share, and its counters."""

    cfg: TrainConfig
    run_dir: Path
    ddp: Dist
    device: torch.device
    use_amp: bool
    channels_last: bool
    progress: bool
    split: Split
    emb: EmbeddingNet
    cache: ImageCache
    metrics: MetricsLog
    ckpt_path: Path
    global_step: int = 0
    epoch_base: int = 0  # whole epochs of earlier stages (seeds batch order and augmentation)
    epochs_before: float = 0.0  # training epochs of earlier stages (drives the margin warm-up)
    stopped: bool = False
    prev_head: tuple[ClassMap, nn.Module] | None = field(default=None)


@dataclass
class _Stage:
    """One stage's head, optimiser and schedule, and where it starts (or resumes)."""

    index: int
    spec: StageConfig
    cmap: ClassMap
    samples: list
    sampler: EpochBatchSampler
    steps_per_epoch: int
    total_steps: int
    n_epochs: int
    head: nn.Module = None
    opt: torch.optim.Optimizer = None
    sched: torch.optim.lr_scheduler.LambdaLR = None
    scaler: torch.amp.GradScaler = None
    start_epoch: int = 0
    start_batch: int = 0


def _plan_stage(run: _Run, si: int) -> _Stage:
    cfg, stage = run.cfg, run.cfg.stages[si]
    cmap = class_map(run.split.train, stage.min_images, cfg.data.flip_identities)
    samples = cmap.samples(run.split.train)
    if cfg.head.kind == "binary" and cfg.data.new_whale_negatives:
        # 1st place: new_whale photos are negatives of every class (label -1), mirrored too
        flips = (False, True) if cfg.data.flip_identities else (False,)
        samples += [(p, -1, flip) for p in run.split.train_new_whale for flip in flips]
    sampler = EpochBatchSampler(len(samples), cfg.optim.batch_size, cfg.seed + 7919 * si, run.ddp.rank, run.ddp.world)
    steps_per_epoch = len(sampler)
    total_steps = max(1, int(round(stage.epochs * steps_per_epoch)))
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    return _Stage(si, stage, cmap, samples, sampler, steps_per_epoch, total_steps, n_epochs)


def _start_stage(run: _Run, st: _Stage, state: dict | None) -> None:
    """Build the stage's head (centres copied from the previous stage), optimiser, schedule and AMP
    scaler; restore them from ``state`` when resuming this stage."""
    cfg = run.cfg
    st.head = build_head(
        cfg.head.kind, cfg.model.embedding_dim, st.cmap.num_classes, cfg.head.scale, cfg.head.margin_rad
    ).to(run.device)
    if run.prev_head is not None:
        _copy_centres(run.prev_head, (st.cmap, st.head))
    freeze_prefixes(run.emb, st.spec.freeze)
    lr = cfg.optim.lr * st.spec.lr_mult
    st.opt = make_optimizer(cfg, run.emb, st.head, lr)
    warmup = int(round(cfg.optim.warmup_epochs * st.steps_per_epoch))
    st.sched = torch.optim.lr_scheduler.LambdaLR(st.opt, lr_lambda(st.total_steps, warmup, cfg.optim.min_lr_ratio))
    st.scaler = torch.amp.GradScaler("cuda", enabled=run.use_amp)
    if state is not None:
        st.head.load_state_dict(state["head"])
        st.opt.load_state_dict(state["optimizer"])
        st.sched.load_state_dict(state["scheduler"])
        st.scaler.load_state_dict(state["scaler"])
        st.start_epoch, st.start_batch = int(state["epoch"]), int(state["step_in_epoch"])
        if st.start_batch >= st.steps_per_epoch:
            st.start_epoch, st.start_batch = st.start_epoch + 1, 0
        set_rng_state(state["rng"])


def _run_epoch(run: _Run, st: _Stage, model, net: Net, dataset: TrainDataset, epoch: int, stage_step: int, bar) -> int:
    """Train one epoch of a stage (from ``st.start_batch`` when resuming); returns the stage's step count."""
    cfg = run.cfg
    first = epoch == st.start_epoch
    st.sampler.set_epoch(run.epoch_base + epoch, st.start_batch if first else 0)
    dataset.set_epoch(run.epoch_base + epoch)
    # The loader's own generator keeps its seed draws off the global RNG (exact resume).
    loader = DataLoader(
        dataset,
        batch_sampler=st.sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=run.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed + run.epoch_base + epoch),
    )
    net.train()
    set_frozen_bn_eval(run.emb, st.spec.freeze)
    t_epoch, seen = time.time(), 0
    step_in_epoch = st.start_batch if first else 0
    params = list(net.parameters())
    for x, y in loader:
        if stage_step >= st.total_steps or (cfg.max_steps and run.global_step >= cfg.max_steps):
            break
        x = x.to(run.device, non_blocking=True)
        y = y.to(run.device, non_blocking=True)
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        margin = _margin(cfg, run.epochs_before + stage_step / st.steps_per_epoch)
        loss, logits = train_step(model, params, st.opt, st.scaler, x, y, margin, run.use_amp, cfg.optim.grad_clip)
        st.sched.step()
        stage_step += 1
        run.global_step += 1
        step_in_epoch += 1
        seen += len(x) * run.ddp.world
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {run.global_step}")
        bar.update(1)
        if run.global_step % max(1, cfg.log_every_steps) == 0 or stage_step == st.total_steps:
            acc = (logits.argmax(1) == y).float().mean().item()
            ips = seen / max(time.time() - t_epoch, 1e-6)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}", ips=f"{ips:.1f}")
            run.metrics.write(
                stage=st.spec.name,
                epoch=epoch,
                step=run.global_step,
                loss=round(loss.item(), 5),
                acc=round(acc, 4),
                lr=f"{st.sched.get_last_lr()[0]:.3g}",
                margin=round(margin, 4),
                images_per_s=round(ips, 2),
            )
        if cfg.checkpoint_every_steps and run.global_step % cfg.checkpoint_every_steps == 0 and run.ddp.main:
            _checkpoint(run, st, epoch, step_in_epoch)
    if run.ddp.main:
        _checkpoint(run, st, epoch, step_in_epoch)
    return stage_step


def _run_stage(run: _Run, st: _Stage) -> None:
    """Train one stage's epochs (evaluating every ``eval.every_epochs`` in the last stage)."""
    cfg = run.cfg
    net = Net(run.emb, st.head)
    model = net
    if run.ddp.world > 1:
        ids = [run.device.index] if run.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    dataset = TrainDataset(st.samples, run.cache, cfg, cfg.seed + 104729 * st.index)
    stage_step = st.start_epoch * st.steps_per_epoch + st.start_batch
    if run.ddp.main:
        log.info(
            "stage %s: %d classes, %d samples, %d steps of %d",
            st.spec.name,
            st.cmap.num_classes,
            len(st.samples),
            st.total_steps,
            cfg.optim.batch_size * run.ddp.world,
        )
    bar = tqdm(
        total=st.total_steps,
        initial=stage_step,
        desc=st.spec.name,
        unit="step",
        disable=not (run.progress and run.ddp.main),
        dynamic_ncols=True,
    )
    for epoch in range(st.start_epoch, st.n_epochs):
        stage_step = _run_epoch(run, st, model, net, dataset, epoch, stage_step, bar)
        if cfg.max_steps and run.global_step >= cfg.max_steps:
            run.stopped = True
            break
        if (
            st.index == len(cfg.stages) - 1
            and cfg.eval.every_epochs
            and run.ddp.main
            and (epoch + 1) % max(1, int(cfg.eval.every_epochs)) == 0
            and epoch + 1 < st.n_epochs
        ):
            report = _evaluate(run.emb, cfg, run.split, run.device, run.run_dir, run.progress)
            if report is not None:
                run.metrics.write(stage=st.spec.name, epoch=epoch, step=run.global_step, val_map5=round(report.map5, 5))
    bar.close()


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, evaluate_at_end: bool = True) -> Path:
    """Train an embedding network as ``cfg`` says; returns the run folder.

    Writes ``config.yaml``, ``split.json``, ``metrics.csv``, ``checkpoints/last.pt`` (resumable)
    and ``checkpoints/final.pt``, and, when ``evaluate_at_end`` and the split holds validation photos,
    ``eval.json`` (validation MAP@5 and the new_whale threshold chosen by both rules).

    Raises:
        FileNotFoundError: ``resume`` without a checkpoint. FloatingPointError: a non-finite loss.
        RuntimeError: ``device: cuda`` without a CUDA device.
    """
    run_dir = Path(cfg.run_dir)
    kind = "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
    ddp = init_distributed(kind)
    device = pick_device(cfg, ddp)
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
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

    channels_last = cfg.channels_last and device.type == "cuda"
    emb = build_embedding_net(cfg.model).to(device)
    if channels_last:
        emb = emb.to(memory_format=torch.channels_last)
    if state is not None:
        emb.load_state_dict(state["embedding"])
    run = _Run(
        cfg,
        run_dir,
        ddp,
        device,
        cfg.amp and device.type == "cuda",
        channels_last,
        progress,
        split,
        emb,
        ImageCache(cfg.data.images, cfg.data.cache_max_side_px),
        MetricsLog(run_dir, ddp.main),
        ckpt_path,
        global_step=0 if state is None else int(state["global_step"]),
    )
    start_stage = 0 if state is None else int(state["stage"])
    for si in range(len(cfg.stages)):
        st = _plan_stage(run, si)
        if si >= start_stage:
            _start_stage(run, st, state if si == start_stage else None)
            _run_stage(run, st)
            run.prev_head = (st.cmap, st.head)
        run.epoch_base += st.n_epochs
        run.epochs_before += st.spec.epochs
        if run.stopped:
            break

    if ddp.main:
        save_checkpoint(
            run_dir / CHECKPOINT_DIR / FINAL,
            {"embedding": emb.state_dict(), "config": to_dict(cfg), "global_step": run.global_step},
        )
        if evaluate_at_end:
            report = _evaluate(emb, cfg, split, device, run_dir, progress)
            if report is not None:
                run.metrics.write(stage="final", epoch="", step=run.global_step, val_map5=round(report.map5, 5))
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


def _checkpoint(run: _Run, st: _Stage, epoch: int, step_in_epoch: int) -> None:
    save_checkpoint(
        run.ckpt_path,
        {
            "embedding": run.emb.state_dict(),
            "head": st.head.state_dict(),
            "head_classes": list(st.cmap.identities),
            "optimizer": st.opt.state_dict(),
            "scheduler": st.sched.state_dict(),
            "scaler": st.scaler.state_dict(),
            "stage": st.index,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": run.global_step,
            "rng": rng_state(),
            "config": to_dict(run.cfg),
        },
    )


def _evaluate(emb: EmbeddingNet, cfg: TrainConfig, split: Split, device, run_dir: Path, progress: bool):
    """Evaluate on the split's validation queries and write ``eval.json``; ``None`` (nothing written) when
    the split holds no query (every ``data.val_*`` fraction 0: training on every photo)."""
    from training.evaluate import evaluate_model

    if not split.queries():
        log.info("no validation photos (data.val_* fractions are 0): evaluation skipped, no eval.json")
        return None
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
