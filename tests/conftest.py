"""Shared fixtures: paths to ../shared (skipped with a reason when absent) and tiny synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLUKES = SHARED / "data" / "flukes"
ODD_IMAGES = SHARED / "data" / "odd-images"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs ../shared beside the repository (CI has it)")
    return path


@pytest.fixture(scope="session")
def odd_images_dir() -> Path:
    return _need(ODD_IMAGES / "MANIFEST.csv").parent


@pytest.fixture(scope="session")
def flukes_dir() -> Path:
    return _need(FLUKES / "labels.csv").parent
