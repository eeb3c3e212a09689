"""Training speed: images per second of one training step at the cpu-small and the Kaggle input sizes.

A step is what ``training.engine.train`` does per batch: forward through ``EmbeddingNet.features`` and the
ArcFace head (``build_head``, ``--classes`` class centres), backward, gradient clipping and the optimiser
step (``make_optimizer``: the recipe's optimiser, learning rates and weight decay, from ``--config``), with
a ``GradScaler`` and fp16 autocast when AMP is on. The batch is already in memory (random normal pixels,
random labels): data loading and augmentation are not part of it. Weights are random (speed does not depend
on them).

Variants, each measured on a fresh model after ``--warmup`` steps: ``eager`` (NCHW float32),
``channels_last`` (model and batch in channels_last; the engine uses it on CUDA only), and on CUDA with
``--amp`` the two again under fp16 autocast (the engine's CUDA default: AMP + channels_last). The ratios are
images/s of each variant over ``eager`` at the same size, measured in the same run.

The default sizes are the ``model.input_size`` of ``configs/cpu-small.yaml`` (64x128) and
``configs/kaggle-densenet121.yaml`` (256x512).

Example::

    python benchmarks/train_step.py                                   # densenet121, CPU, batch 8
    python benchmarks/train_step.py --device cuda --amp --batch-size 32 --steps 20
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from common import (
    REPO,
    base_parser,
    machine_info,
    parse_hw,
    peak_rss_mib,
    print_table,
    ratio,
    reset_peak_rss,
    summarize,
    write_result,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZE_CONFIGS = {
    "cpu-small": REPO / "configs" / "cpu-small.yaml",
    "kaggle": REPO / "configs" / "kaggle-densenet121.yaml",
}


def parse_args(argv=None):
    p = base_parser("training", __doc__)
    p.add_argument("--backbone", default="densenet121", help="timm backbone.")
    p.add_argument(
        "--sizes",
        nargs="+",
        type=parse_hw,
        help="Input sizes HxW (default: those of configs/cpu-small.yaml and configs/kaggle-densenet121.yaml).",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=SIZE_CONFIGS["kaggle"],
        help="Training config whose head, optimiser, grad clip and embedding size the step uses.",
    )
    p.add_argument("--batch-size", type=int, default=8, help="Images per step.")
    p.add_argument("--classes", type=int, default=1000, help="ArcFace class centres.")
    p.add_argument("--steps", type=int, default=5, help="Timed steps per variant and size.")
    p.add_argument("--warmup", type=int, default=2, help="Untimed steps first.")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available.")
    p.add_argument("--amp", action="store_true", help="On CUDA, also measure fp16 autocast (AMP).")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=["eager", "channels_last"],
        default=["eager", "channels_last"],
        help="Memory formats to measure (each also with AMP when --amp on CUDA).",
    )
    return p.parse_args(argv)


def default_sizes() -> list[tuple[str, tuple[int, int]]]:
    """``(label, (H, W))`` of the cpu-small and Kaggle configs."""
    from training.config import load_config

    return [(label, tuple(load_config(path).model.input_size)) for label, path in SIZE_CONFIGS.items()]


def label_of(hw: tuple[int, int], known: list[tuple[str, tuple[int, int]]]) -> str:
    names = [label for label, size in known if size == hw]
    return f"{names[0]} {hw[0]}x{hw[1]}" if names else f"{hw[0]}x{hw[1]}"


def measure(cfg, hw, batch: int, classes: int, device, channels_last: bool, amp: bool, warmup: int, steps: int):
    """Time ``steps`` training steps of a fresh model (after ``warmup``); returns per-step ms and memory."""
    import torch

    from training.engine import train_step
    from training.heads import build_head
    from training.model import build_embedding_net
    from training.runtime import Net, make_optimizer

    torch.manual_seed(0)
    logging.getLogger("training.model").setLevel(logging.ERROR)  # "random weights" is the point here
    emb = build_embedding_net(cfg.model).to(device)
    head = build_head(cfg.head.kind, cfg.model.embedding_dim, classes, cfg.head.scale, cfg.head.margin_rad).to(device)
    if channels_last:
        emb = emb.to(memory_format=torch.channels_last)
    net = Net(emb, head).train()
    params = list(net.parameters())
    opt = make_optimizer(cfg, emb, head, cfg.optim.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *hw, generator=gen).to(device)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    margin = cfg.head.margin_rad

    def step():
        xb = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        loss, _ = train_step(net, params, opt, scaler, xb, y, margin, amp, cfg.optim.grad_clip)
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()
    for _ in range(warmup):
        step()
    sync()
    ms = []
    loss = None
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        ms.append((time.perf_counter() - t0) * 1e3)
    if loss is not None and not torch.isfinite(loss):
        raise FloatingPointError(f"the loss is {loss.item()}")
    if device.type == "cuda":
        peak = {"peak_cuda_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    else:
        peak = {"peak_rss_mib": None if peak_rss_mib() is None else round(peak_rss_mib(), 1)}
    return ms, peak


def main(argv=None) -> dict:
    args = parse_args(argv)
    machine = machine_info()
    import torch

    from training.config import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    kind = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    device = torch.device(kind)
    if kind == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.amp and kind != "cuda":
        print("NOTE: --amp is measured on CUDA only; ignored on the CPU", file=sys.stderr)
    known = default_sizes()
    if args.sizes:
        sizes = [(label_of(hw, known), hw) for hw in args.sizes]
    else:
        sizes = [(f"{name} {hw[0]}x{hw[1]}", hw) for name, hw in known]
    variants = [(v, v == "channels_last", False) for v in args.variants]
    if args.amp and kind == "cuda":
        variants += [(f"{v} + AMP", v == "channels_last", True) for v in args.variants]

    rows, table_rows = [], []
    for label, hw in sizes:
        cfg = load_config(
            args.config,
            [
                f"model.backbone={args.backbone}",
                "model.pretrained=false",
                f"model.input_size=[{hw[0]}, {hw[1]}]",
            ],
        )
        base = None
        for name, cl, amp in variants:
            print(f"{label}: {name}, batch {args.batch_size}, {args.warmup}+{args.steps} steps ...", flush=True)
            ms, peak = measure(cfg, hw, args.batch_size, args.classes, device, cl, amp, args.warmup, args.steps)
            s = summarize(ms)
            ips = round(args.batch_size * 1000.0 / s["p50"], 3)
            if name == args.variants[0]:
                base = ips
            row = {
                "size": label,
                "input_size": list(hw),
                "variant": name,
                "step_ms": s,
                "ms_per_image_p50": round(s["p50"] / args.batch_size, 3),
                "images_per_s": ips,
                f"ratio_to_{args.variants[0]}": ratio(ips, base),
                **peak,
            }
            rows.append(row)
            mem = peak.get("peak_cuda_allocated_mib", peak.get("peak_rss_mib"))
            table_rows.append([label, name, s["p50"], row["ms_per_image_p50"], ips, ratio(ips, base), mem])
            if kind == "cuda":
                torch.cuda.empty_cache()
    mem_header = "peak CUDA MiB" if kind == "cuda" else "peak RSS MiB"
    table = print_table(
        f"Training step, {args.backbone} + ArcFace ({args.classes} classes), batch {args.batch_size}, {kind}, "
        f"{args.steps} timed steps (x {args.variants[0]} = images/s / {args.variants[0]} images/s)",
        ["input", "variant", "ms/step p50", "ms/image", "images/s", f"x {args.variants[0]}", mem_header],
        table_rows,
    )
    config = {
        "backbone": args.backbone,
        "config": str(args.config),
        "batch_size": args.batch_size,
        "classes": args.classes,
        "steps": args.steps,
        "warmup": args.warmup,
        "device": kind,
        "gpu": torch.cuda.get_device_name(device) if kind == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "amp": args.amp and kind == "cuda",
        "inputs": "random normal pixels and random labels, already on the device (no data loading)",
        "step": "forward + ArcFace loss + backward + grad clip + optimiser step (training.engine.train_step)",
    }
    results = {"rows": rows}
    write_result(args.out, "training", machine, config, results, [table])
    return results


if __name__ == "__main__":
    main()
