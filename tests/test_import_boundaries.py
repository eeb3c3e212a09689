"""The service side never imports torch: checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "modules", [["core", "core.preprocess", "core.manifest", "core.boxes"], ["index", "index.ranking"]]
)
def test_core_and_index_do_not_import_torch(modules):
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + ("bad = [m for m in ('torch', 'timm', 'training', 'fastapi') if m in sys.modules]\nassert not bad, bad\n")
    )
    subprocess.run([sys.executable, "-c", code], check=True)
