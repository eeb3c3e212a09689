"""The trailing edge as a scoring mode (issue 17): ``edge_fused`` through the registry, the service,
``calibrate`` and ``compare-modes``, with the edges stored on enrolment.

Whales are drawn flukes that differ only in the nicks of their trailing edge (plain dark shapes on a
white sky: little for SIFT, nothing for the tiny random embedding), so the edge is what tells them apart.
"""

from __future__ import annotations

import csv

import pytest
from helpers import drawn_fluke, jpeg_bytes, tiny_bundle

pytest.importorskip("onnx")
pytest.importorskip("fastapi")

NICKS = {
    "w0": ((90, 6, 8), (140, 4, 6), (260, 5, 10), (310, 7, 7)),
    "w1": ((110, 5, 9), (175, 6, 6), (235, 4, 7), (330, 5, 8)),
    "w2": ((70, 5, 7), (160, 6, 9), (250, 5, 6), (300, 4, 9)),
    "w3": ((100, 7, 6), (150, 5, 10), (280, 6, 8), (340, 4, 6)),
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from core.manifest import load_manifest
    from whaleid.workflows import build_gallery, calibrate

    root = tmp_path_factory.mktemp("edge-mode")
    b = tiny_bundle(root / "bundle", thresholds={"embedding": 0.5, "fused": 0.5}, seed=4)
    (root / "photos").mkdir()
    rows, queries = [], []
    for w, nicks in NICKS.items():
        for j, (scale, angle) in enumerate(((1.0, 0.0), (0.9, -3.0))):
            (root / "photos" / f"{w}_{j}.jpg").write_bytes(jpeg_bytes(drawn_fluke(nicks, scale, angle, seed=j)))
            rows.append((f"{w}_{j}.jpg", w))
        (root / "photos" / f"q_{w}.jpg").write_bytes(jpeg_bytes(drawn_fluke(nicks, 0.75, 4.0, seed=9)))
        queries.append((f"q_{w}.jpg", w))
    for name, data in (("gallery.csv", rows), ("queries.csv", queries)):
        with open(root / name, "w", newline="") as fh:
            csv.writer(fh).writerows([("image", "whale_id"), *data])
    stats = build_gallery(b, root / "photos", root / "gallery.csv", progress=False, local_features=True, edges=True)
    assert stats["photos"] == 8 and load_manifest(b).edge is not None
    rep = calibrate(b, root / "photos", root / "queries.csv", mode="edge_fused", progress=False)
    return b, root, rep


def test_edges_are_stored_and_calibration_learns_to_use_them(bundle):
    from core.manifest import load_manifest
    from index.bundle import open_bundle

    b, root, rep = bundle
    with open_bundle(b) as opened:
        edges = opened.gallery.store.edges_of(list(opened.gallery.answerable_names()))
    assert len(edges) == 8  # every drawn photo has an edge
    params = load_manifest(b).mode_params["edge_fused"]
    assert len(params) == 6 and params[4] > 0  # a closer edge (larger -distance) raises the score
    assert rep["top1_known"] == 1.0 and rep["map5"] == 1.0


def test_the_service_ranks_by_the_edge_and_explains_it(bundle):
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    b, root, _ = bundle
    with TestClient(create_app(Settings(bundle=b))) as c:
        assert "edge_fused" in c.get("/ready").json()["calibrated_modes"]
        for w in NICKS:
            data = (root / "photos" / f"q_{w}.jpg").read_bytes()
            r = c.post(
                "/identify",
                files={"file": ("q.jpg", data, "image/jpeg")},
                params={"scoring": "edge_fused", "explain": "true"},
            )
            body = r.json()
            first = body["predictions"][0]
            assert r.status_code == 200 and first["whale_id"] == w, (w, body["predictions"])
            assert body["trailing_edge"]["found"] and len(body["trailing_edge"]["points"]) > 100
            others = [p["evidence"]["edge_distance"] for p in body["predictions"][1:] if "evidence" in p]
            assert all(first["evidence"]["edge_distance"] < d for d in others)
            assert len(first["evidence"]["edge_points"]) > 100
        # a photo without a readable edge is still answered, and says why
        blank = jpeg_bytes(drawn_fluke(NICKS["w0"], 1.0, 0.0, size=(120, 80)))  # the fluke runs off the frame
        body = c.post(
            "/identify", files={"file": ("b.jpg", blank, "image/jpeg")}, params={"scoring": "edge_fused"}
        ).json()
        assert body["trailing_edge"]["found"] is False and body["trailing_edge"]["reason"] in (
            "cut_off",
            "not_found",
            "too_small",
        )
        assert all("edge_distance" not in p.get("evidence", {}) for p in body["predictions"])


def test_compare_modes_reports_the_three_cue_mode_beside_fused(bundle):
    from whaleid.workflows import compare_modes

    b, root, _ = bundle
    cmp = compare_modes(b, root / "photos", root / "queries.csv", progress=False)
    assert {"embedding", "local", "fused", "edge_fused"} <= set(cmp)
    assert cmp["edge_fused"]["top1_known"] == 1.0


@pytest.mark.slow
@pytest.mark.browser
def test_the_review_page_draws_both_edges(bundle, tmp_path):
    """The review page asks for the edges in edge_fused mode, draws the query's on its photo and lays it over
    each candidate's (a real Chromium against a real server)."""
    import importlib.util
    from pathlib import Path

    from helpers import REPO

    from service.process import ServeProcess

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists() or importlib.util.find_spec("playwright") is None:
        pytest.skip("needs Debian's chromium and the playwright package (pip install -e '.[dev]')")
    from playwright.sync_api import sync_playwright

    b, root, _ = bundle
    srv = ServeProcess(b, None, tmp_path / "server.log", {"WHALEID_BATCH_WAIT_MS": "5"}).start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(chromium), args=["--headless=new", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(srv.url + "/")
            page.wait_for_selector("#scoring option[value='edge_fused']", state="attached")
            page.select_option("#scoring", "edge_fused")
            page.set_input_files("#files", str(root / "photos" / "q_w2.jpg"))
            page.wait_for_selector(".edge-on-photo polyline", timeout=60_000)
            assert page.locator(".edge-overlay").count() >= 1
            assert page.locator(".cand").first.get_attribute("data-whale") == "w2"
            assert "trailing edge in blue" in page.locator("figure.query figcaption").first.inner_text()
            shots = REPO / "artifacts" / "screenshots"
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "edge-fused-review.png"), full_page=True)
            browser.close()
        assert not errors, errors
    finally:
        srv.stop()
