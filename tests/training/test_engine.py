"""The training loop on tiny synthetic data: checkpoint, exact resume, DDP under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from training.config import load_config
from training.engine import CHECKPOINT_DIR, FINAL, LAST, load_checkpoint, train
from training.synthetic import SyntheticSpec, make_synthetic_dataset


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("synth"), SyntheticSpec(identities=8, new_whales=4, image_size=(48, 96), seed=1)
    )


def tiny_overrides(data, run_dir, **extra):
    sets = {
        "run_dir": str(run_dir),
        "data.images": str(data / "images"),
        "data.labels": str(data / "train.csv"),
        "data.boxes": str(data / "boxes.csv"),
        "model.backbone": "test_resnet",
        "model.input_size": "[32, 64]",
        "model.embedding_dim": "16",
        "optim.batch_size": "4",
        "log_every_steps": "1",
        "stages": '[{"name": "s1", "epochs": 2, "min_images": 2}, {"name": "s2", "epochs": 1, "min_images": 1, '
        '"freeze": ["conv1"]}]',
    }
    sets.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in sets.items()]


def _weights(run_dir, name=LAST):
    return load_checkpoint(run_dir / CHECKPOINT_DIR / name)


def test_two_steps_write_a_checkpoint_and_resume_is_exact(tiny_data, tmp_path):
    straight = tmp_path / "straight"
    train(
        load_config("configs/cpu-small.yaml", tiny_overrides(tiny_data, straight, max_steps=4)),
        progress=False,
        evaluate_at_end=False,
    )
    resumed = tmp_path / "resumed"
    train(
        load_config("configs/cpu-small.yaml", tiny_overrides(tiny_data, resumed, max_steps=2)),
        progress=False,
        evaluate_at_end=False,
    )
    ckpt = _weights(resumed)
    assert ckpt["global_step"] == 2 and ckpt["stage"] == 0 and ckpt["step_in_epoch"] == 2
    assert {"embedding", "head", "optimizer", "scheduler", "scaler", "rng", "config"} <= set(ckpt)
    assert (resumed / "metrics.csv").read_text().count("\n") == 3  # header + 2 steps
    train(
        load_config("configs/cpu-small.yaml", tiny_overrides(tiny_data, resumed, max_steps=4)),
        resume=True,
        progress=False,
        evaluate_at_end=False,
    )
    a, b = _weights(straight), _weights(resumed)
    assert b["global_step"] == 4
    for key in a["embedding"]:
        torch.testing.assert_close(a["embedding"][key], b["embedding"][key], rtol=0, atol=1e-6, msg=key)
    for key in a["head"]:
        torch.testing.assert_close(a["head"][key], b["head"][key], rtol=0, atol=1e-6)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4


def test_full_tiny_run_has_two_stages_and_evaluates(tiny_data, tmp_path):
    run = train(load_config("configs/cpu-small.yaml", tiny_overrides(tiny_data, tmp_path / "run")), progress=False)
    assert (run / CHECKPOINT_DIR / FINAL).exists()
    assert (run / "eval.json").exists() and (run / "config.yaml").exists() and (run / "split.json").exists()
    stages = {line.split(",")[1] for line in (run / "metrics.csv").read_text().splitlines()[1:]}
    assert {"s1", "s2", "final"} <= stages


def test_training_on_every_photo_skips_evaluation(tiny_data, tmp_path):
    # the starter model's final recipe: every data.val_* fraction 0, so no photo is held out
    zero = {"data.val_open_fraction": 0, "data.val_closed_fraction": 0, "data.val_new_whale_fraction": 0}
    run = train(
        load_config("configs/cpu-small.yaml", tiny_overrides(tiny_data, tmp_path / "all", max_steps=2, **zero)),
        progress=False,
    )
    split = json.loads((run / "split.json").read_text())
    named = [r for r in (tiny_data / "train.csv").read_text().splitlines()[1:] if not r.endswith(",new_whale")]
    assert sorted(r[0] for r in split["train"]) == sorted(r.split(",")[0] for r in named)  # every named photo
    assert not split["val_closed"] and not split["val_open"] and not split["val_new_whale"]
    assert (run / CHECKPOINT_DIR / FINAL).exists() and not (run / "eval.json").exists()
    assert "final" not in {line.split(",")[1] for line in (run / "metrics.csv").read_text().splitlines()[1:]}


@pytest.mark.slow
def test_two_processes_under_torchrun_gloo(tiny_data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "whaleid",
        "train",
        "configs/cpu-small.yaml",
    ]
    for ov in tiny_overrides(tiny_data, run, max_steps=2, device="cpu", threads=1):
        cmd += ["--set", ov]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = _weights(run)
    assert ckpt["global_step"] == 2
    assert (run / "eval.json").exists()
