"""Fixtures: a real uvicorn server on 127.0.0.1 serving a bundle built from real photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from live_server import Server


@pytest.fixture
def gallery_copy(real_bundle, tmp_path) -> Path:
    """A private copy of the real bundle's gallery folder."""
    dst = tmp_path / "gallery"
    shutil.copytree(real_bundle / "gallery", dst)
    return dst


@pytest.fixture
def server(real_bundle, gallery_copy, tmp_path):
    srv = Server(real_bundle, gallery_copy, tmp_path / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def shared_server(real_bundle, tmp_path_factory):
    """One server for read-only tests of a module (its gallery is a private copy too)."""
    tmp = tmp_path_factory.mktemp("shared-server")
    shutil.copytree(real_bundle / "gallery", tmp / "gallery")
    srv = Server(real_bundle, tmp / "gallery", tmp / "server.log").start()
    yield srv
    srv.stop()
