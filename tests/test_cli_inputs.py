"""The command line checks its inputs before any long step starts, and its help is never cut (issue 23).

A wrong ``--labels`` path used to be reported only after training had started, leaving an empty run
folder; ``predict --help`` cut ``--balance-min-claims`` to ``--balance-min-cla…``.
"""

from __future__ import annotations

import pytest
from helpers import REPO
from typer.testing import CliRunner

from whaleid.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})


def test_train_refuses_a_missing_labels_file_before_making_the_run_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    run_dir = tmp_path / "run"
    res = run("train", REPO / "configs" / "cpu-small.yaml", "--images", images, "--labels", tmp_path / "nope.csv")
    assert res.exit_code == 2 and "nope.csv" in res.output
    res = run(
        "train", REPO / "configs" / "cpu-small.yaml", "--set", f"data.images={images}", "--set",
        f"data.labels={tmp_path / 'nope.csv'}", "--run-dir", run_dir,
    )  # fmt: skip
    assert res.exit_code == 2 and f"data.labels={tmp_path / 'nope.csv'} is not a file" in res.output
    assert not run_dir.exists()


def test_train_refuses_labels_without_their_columns(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    bad = tmp_path / "labels.csv"
    bad.write_text("file,name\na.jpg,w1\n")
    config = REPO / "configs" / "cpu-small.yaml"
    res = run("train", config, "--images", images, "--labels", bad, "--run-dir", tmp_path / "r")
    assert res.exit_code == 2 and "labels.csv" in res.output
    assert not (tmp_path / "r").exists()


def test_quickstart_refuses_a_missing_labels_file_at_once(tmp_path):
    res = run("quickstart", "--images", tmp_path, "--labels", tmp_path / "nope.csv", "--home", tmp_path / "home")
    assert res.exit_code == 2 and "nope.csv" in res.output
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("command", ["predict", "train", "build-gallery", "calibrate", "quickstart"])
def test_help_names_every_option_in_full(command):
    res = run(command, "--help")
    assert res.exit_code == 0
    assert "…" not in res.output
    if command == "predict":
        assert "--balance-min-claims" in res.output and "--scoring" in res.output


def test_a_training_command_without_the_train_extra_names_the_extra(tmp_path, monkeypatch):
    """Without torch (a `.[serve]` install), `quickstart --train` says which extra to install, no traceback."""
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ModuleNotFoundError
    for name in [m for m in sys.modules if m.startswith("training.") and m != "training.synthetic"]:
        monkeypatch.delitem(sys.modules, name)
    res = run("quickstart", "--train", "--no-serve", "--home", tmp_path / "home")
    assert res.exit_code == 2
    assert "needs 'torch'" in res.output and "pip install -e '.[train]'" in res.output
    assert "Traceback" not in res.output
