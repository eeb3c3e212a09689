"""Shared fixtures: paths to ../shared (skipped with a reason when absent) and tiny synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers import FLUKES, ODD_IMAGES, REPO  # noqa: E402


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


def pytest_configure(config):
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


# --- the fast and the slow tier ------------------------------------------------------------------
#: Fixtures that train or start something for minutes: a test using one (directly or through another
#: fixture) is slow, marked or not, so `pytest -m "not slow"` stays the fast tier.
SLOW_FIXTURES = {"real_bundle"}
#: A slow test prints a line when it starts and then every this many seconds (it never looks hung).
HEARTBEAT_S = float(os.environ.get("WHALEID_TEST_HEARTBEAT_S", "30"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Progress of slow tests on the terminal (pytest shows a test only when it ends)."""
    import contextlib
    import threading
    import time

    reporter = item.config.pluginmanager.get_plugin("terminalreporter")
    capture = item.config.pluginmanager.get_plugin("capturemanager")
    if item.get_closest_marker("slow") is None or reporter is None:
        yield
        return
    t0, done = time.monotonic(), threading.Event()

    def say(text: str) -> None:
        # past pytest's output capture (as live logging does), flushed: shown at once in a pipe or log file
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write_line(f"[slow] {item.nodeid}: {text}")
            reporter.write("", flush=True)

    say(f"started {time.strftime('%H:%M:%S')}")

    # The heartbeat runs in another thread while the test runs, so it must not suspend pytest's capture
    # (that swaps sys.stdout under a test that has swapped it too, e.g. typer's CliRunner, which then
    # fails with "I/O operation on closed file"): it writes straight to the terminal's file descriptor
    # that pytest's fd capture saved (or fd 1 when pytest does not capture at the fd level).
    out = getattr(getattr(capture, "_global_capturing", None), "out", None)
    fd = getattr(out, "targetfd_save", None) if out is not None else None
    fd = fd if fd is not None else (1 if getattr(capture, "_method", "fd") != "fd" else None)

    def beat():
        while not done.wait(HEARTBEAT_S):
            if fd is not None:
                os.write(fd, f"\n[slow] {item.nodeid}: still running, {time.monotonic() - t0:.0f} s\n".encode())

    threading.Thread(target=beat, daemon=True, name="slow-test-heartbeat").start()
    try:
        yield
    finally:
        done.set()
        say(f"{time.monotonic() - t0:.0f} s")


@pytest.fixture(scope="session")
def real_subset(tmp_path_factory):
    """A labelled subset of the real 2018 playground photos (../shared, read-only, never copied):
    40 identities with >= 3 photos (3 each, the gallery), plus 10 further identities with 2 photos
    each (never enrolled: for enrolment tests). Returns a dict of paths and lists."""
    import csv
    from collections import defaultdict

    root = _need(FLUKES / "playground2018" / "labels.csv").parent
    by_id = defaultdict(list)
    with open(root / "labels.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["whale_id"] != "new_whale":
                by_id[r["whale_id"]].append(r["image"])
    multi = sorted(w for w, imgs in by_id.items() if len(imgs) >= 3)
    gallery_ids, spare_ids = multi[:40], [w for w in sorted(by_id) if len(by_id[w]) == 2][:10]
    out = tmp_path_factory.mktemp("real-subset")
    gallery_rows = [(img, w) for w in gallery_ids for img in sorted(by_id[w])[:3]]
    with open(out / "gallery.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "whale_id"), *gallery_rows])
    return {
        "images": root / "images",
        "boxes": root / "boxes.csv",
        "gallery_csv": out / "gallery.csv",
        "gallery_rows": gallery_rows,
        "spare": {w: sorted(by_id[w]) for w in spare_ids},
    }


@pytest.fixture(scope="session")
def real_bundle(real_subset, tmp_path_factory):
    """A bundle trained briefly on real photos (ResNet18 at 64x128, about a minute on 2 cores),
    exported to ONNX, with a gallery of 40 real whales x 3 photos. Read-only for tests: copy its
    gallery folder before changing it (see ``gallery_copy``)."""
    from core.manifest import ThresholdSpec, load_manifest
    from training.config import load_config
    from training.engine import train
    from training.export import export_bundle
    from whaleid.workflows import build_gallery

    work = tmp_path_factory.mktemp("real-bundle")
    cfg = load_config(
        REPO / "configs" / "cpu-small.yaml",
        [
            f"run_dir={work / 'run'}",
            f"data.images={real_subset['images']}",
            f"data.labels={real_subset['gallery_csv']}",
            "data.val_open_fraction=0.0",
            "data.val_closed_fraction=0.0",
            "model.backbone=resnet18",
            "model.embedding_dim=128",
            'stages=[{"name": "s1", "epochs": 12, "min_images": 1}]',
            "head.margin_warmup_epochs=4",
            "optim.batch_size=24",
        ],
    )
    train(cfg, progress=False, evaluate_at_end=False)
    bundle = work / "bundle"
    export_bundle(work / "run", bundle)
    m = load_manifest(bundle)
    m.model_copy(update={"thresholds": {"embedding": ThresholdSpec(value=0.5, rule="manual")}}).save(bundle)
    build_gallery(bundle, real_subset["images"], real_subset["gallery_csv"], progress=False)
    return bundle
