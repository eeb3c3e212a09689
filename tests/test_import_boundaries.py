"""The service side never imports torch (checked in fresh interpreters), and imports run one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TORCH_FREE = [
    ["core", "core.preprocess", "core.manifest", "core.boxes", "core.errors"],
    ["index", "index.ranking", "index.gallery", "index.embedder", "index.build", "index.evaluate", "index.detector"],
    ["service", "service.main", "service.engine", "service.routes.gallery", "service.routes.identify"],
    ["whaleid.cli", "whaleid.workflows", "whaleid.predict", "whaleid.quickstart"],
]


@pytest.mark.parametrize("modules", TORCH_FREE, ids=lambda m: m[0])
def test_service_side_does_not_import_torch(modules):
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + (
            "bad = [m for m in ('torch', 'timm', 'torchvision', 'albumentations') if m in sys.modules]\n"
            "assert not bad, bad\n"
        )
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _imports(package: str) -> set[str]:
    found = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_imports_run_one_way():
    # service -> index -> core ; training -> index -> core ; nothing imports service
    assert not _imports("core") & {"index", "training", "service", "torch", "timm", "fastapi", "faiss"}
    assert not _imports("index") & {"training", "service", "torch", "timm", "fastapi"}
    assert not _imports("service") & {"training", "torch", "timm"}
    assert not _imports("training") & {"service"}
