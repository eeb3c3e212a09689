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


def _module_graph(packages=("core", "index", "training", "service", "whaleid")) -> dict[str, set[str]]:
    """``module -> modules it imports`` over our packages, lazy (in-function) imports included."""
    files = {}
    for pkg in packages:
        for path in (REPO / pkg).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            files[".".join(parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module for a in node.names
                ]
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_even_through_lazy_imports():
    graph = _module_graph()
    assert "training.evaluate" in graph and "index.modes.base" in graph  # the walk found the modules
    assert _cycles(graph) == []
    # a cycle is found when there is one
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
