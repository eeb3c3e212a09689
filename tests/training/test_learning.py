"""Learning is real: configs/cpu-small.yaml on the synthetic set (about 2-3 minutes on 2 cores)."""

from __future__ import annotations

import json

import pytest
import torch

from training.config import load_config
from training.engine import prepare_split, train
from training.evaluate import evaluate_model, frequency_baseline
from training.model import build_embedding_net
from training.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.slow


def test_cpu_small_learns_the_synthetic_set(tmp_path):
    data = make_synthetic_dataset(tmp_path / "synthetic")
    cfg = load_config(
        "configs/cpu-small.yaml",
        [
            f"run_dir={tmp_path / 'run'}",
            f"data.images={data / 'images'}",
            f"data.labels={data / 'train.csv'}",
            f"data.boxes={data / 'boxes.csv'}",
        ],
    )
    run = train(cfg, progress=False)
    report = json.loads((run / "eval.json").read_text())
    assert report["queries"] == 53 and report["queries_new_whale"] == 15
    assert report["map5"] >= 0.8, report
    # the same split with the untrained network and with the frequency baseline: far lower
    split = prepare_split(cfg, run)
    torch.manual_seed(0)
    untrained = evaluate_model(build_embedding_net(cfg.model), cfg, split, torch.device("cpu"), progress=False)
    assert report["map5"] - untrained.map5 >= 0.2, (report["map5"], untrained.map5)
    assert report["map5"] - frequency_baseline(split.train, split.queries()) >= 0.3
