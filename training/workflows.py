"""Run-level commands that need torch (``whaleid evaluate RUN_DIR``)."""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import ConfigError
from training.config import TrainConfig, load_config
from training.evaluate import evaluate_model, frequency_baseline
from training.export import load_run
from training.model import build_embedding_net
from training.runtime import pick_device, prepare_split


def evaluate_run(run_dir: str | Path, untrained: bool = False, baseline: bool = False, progress: bool = True) -> dict:
    """Validation MAP@5 of a run's network (or of an untrained one with the run's config and split).

    Returns:
        The :class:`index.evaluate.EvalReport` as a dict; with ``baseline`` also the MAP@5 of
        answering new_whale then the 4 most frequent identities (``baseline_map5``).
    """
    run = Path(run_dir)
    if not (run / "config.yaml").exists():
        raise ConfigError(f"{run} is neither a bundle (manifest.json) nor a run folder (config.yaml)")
    if untrained:
        cfg: TrainConfig = load_config(run / "config.yaml")
        torch.manual_seed(cfg.seed)
        model = build_embedding_net(cfg.model)
    else:
        cfg, model, _ = load_run(run)
    device = pick_device(cfg)
    model.to(device)
    split = prepare_split(cfg, run)
    out = evaluate_model(model, cfg, split, device, progress=progress).as_dict()
    out["network"] = "untrained" if untrained else "trained"
    if baseline:
        out["baseline_map5"] = round(frequency_baseline(split.train, split.queries()), 5)
    return out
