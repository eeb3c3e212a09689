"""The CLI workflows end to end on a tiny synthetic bundle: export, build-gallery, calibrate (all three
scoring modes), compare-modes, the detector, and the service's local/fused scoring with evidence."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from core.manifest import load_manifest
from whaleid.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


def cli(*args):
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def cli_json(*args):
    out = cli(*args)
    return json.loads(out[out.index("{") :])


@pytest.fixture(scope="module")
def synth_bundle(tmp_path_factory):
    from training.config import load_config
    from training.engine import train
    from training.export import export_bundle
    from training.synthetic import SyntheticSpec, make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth-bundle")
    data = make_synthetic_dataset(
        root / "data", SyntheticSpec(identities=12, new_whales=6, image_size=(96, 192), seed=3)
    )
    cfg = load_config(
        "configs/cpu-small.yaml",
        [
            f"run_dir={root / 'run'}",
            f"data.images={data / 'images'}",
            f"data.labels={data / 'train.csv'}",
            f"data.boxes={data / 'boxes.csv'}",
            "model.backbone=test_resnet",
            "model.input_size=[32, 64]",
            "model.embedding_dim=32",
            "optim.batch_size=8",
            'stages=[{"name": "s1", "epochs": 4, "min_images": 1}]',
        ],
    )
    train(cfg, progress=False)
    export_bundle(root / "run", root / "bundle")
    return root


def test_build_gallery_calibrate_evaluate(synth_bundle):
    data, bundle = synth_bundle / "data", synth_bundle / "bundle"
    with open(data / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    named = [r for r in rows if r["Id"] != "new_whale"]
    # enrol the first photo of each whale; the others are calibration queries
    first, rest = {}, []
    for r in named:
        if r["Id"] in first:
            rest.append(r)
        else:
            first[r["Id"]] = r
    (data / "enrol.csv").write_text("Image,Id\n" + "".join(f"{r['Image']},{r['Id']}\n" for r in first.values()))
    (data / "queries.csv").write_text(
        "Image,Id\n"
        + "".join(f"{r['Image']},{r['Id']}\n" for r in rest)
        + "".join(f"{r['Image']},new_whale\n" for r in rows if r["Id"] == "new_whale")
    )
    stats = cli_json(
        "build-gallery",
        bundle,
        "--images",
        data / "images",
        "--labels",
        data / "enrol.csv",
        "--boxes",
        data / "boxes.csv",
        "--reset",
        "--local-features",
    )
    assert stats["identities"] == 12 and stats["photos"] == 12
    assert load_manifest(bundle).local_features is not None
    rep = cli_json("calibrate", bundle, "--images", data / "images", "--labels", data / "queries.csv")
    assert rep["queries"] == len(rest) + 6 and rep["queries_new_whale"] == 6
    assert load_manifest(bundle).thresholds["embedding"].value == pytest.approx(rep["saved_threshold"])
    single = {}
    for mode in ("local", "fused"):
        rep = single[mode] = cli_json(
            "calibrate", bundle, "--images", data / "images", "--labels", data / "queries.csv", "--mode", mode
        )
        m = load_manifest(bundle)
        assert m.thresholds[mode].value == pytest.approx(rep["saved_threshold"])
        # each mode saves its own coefficients: local's calibration, fused's fusion
        saved = m.local_features.calibration if mode == "local" else m.local_features.fusion
        assert list(saved) == pytest.approx(rep["params"]) and len(rep["params"]) == (3 if mode == "local" else 4)
    # one pass calibrates several modes, with the figures and coefficients of one mode at a time
    from whaleid.workflows import calibrate_modes

    both = calibrate_modes(bundle, data / "images", data / "queries.csv", mode_names=("embedding", "local"))
    m = load_manifest(bundle)
    assert set(both) == {"embedding", "local"}
    assert (both["local"]["map5"], both["local"]["params"]) == (single["local"]["map5"], single["local"]["params"])
    for name, got in both.items():
        assert m.thresholds[name].value == pytest.approx(got["saved_threshold"])
    assert list(m.local_features.calibration) == pytest.approx(both["local"]["params"])
    evidence = data / "evidence.jsonl"
    cmp = cli_json(
        "compare-modes", bundle, "--images", data / "images", "--labels", data / "queries.csv",
        "--evidence-out", evidence,
    )  # fmt: skip
    assert {"embedding", "local", "fused"} <= set(cmp)
    records = [json.loads(line) for line in evidence.read_text().splitlines()]
    assert len(records) == cmp["local"]["queries"] == len(rest) + 6
    for r in records:  # the embedding's shortlist best first; verified whales with their inliers
        cosines = [c for _, c in r["embedding"]]
        assert cosines == sorted(cosines, reverse=True) and len(cosines) == min(50, 12)
        assert all(n >= 0 for _, n, _ in r["verified"]) and "lnbnn" in r
    # the whale with the most inliers is the truth for most known queries, as local's top-1 says
    known = [r for r in records if r["truth"] != "new_whale"]
    best = [max(r["verified"], key=lambda v: v[1])[0] if r["verified"] else None for r in known]
    assert sum(b == r["truth"] for b, r in zip(best, known, strict=True)) >= 0.5 * len(known)
    # synthetic flukes are views of one pattern: local matching finds most of them
    assert cmp["local"]["top1_known"] >= 0.5
    assert cmp["matcher"] == "lnbnn" and cmp["verify_k"] == 50
    lnbnn = cli_json(
        "compare-modes", bundle, "--images", data / "images", "--labels", data / "queries.csv",
        "--shortlist-k", "1",
    )  # fmt: skip
    cmp = cli_json(
        "compare-modes", bundle, "--images", data / "images", "--labels", data / "queries.csv",
        "--shortlist-k", "1", "--shortlist-k", "0", "--matcher", "brute_force",
    )  # fmt: skip
    assert cmp["matcher"] == "brute_force"
    # brute force: a shortlist of one whale can only answer the embedding's first whale; 12 whales < the
    # default shortlist of 50, so "every whale" is the default fused ranking
    assert cmp["fused@1"]["top1_known"] == cmp["embedding"]["top1_known"]
    assert cmp["fused@all"] == cmp["fused"] and cmp["shortlist_k"] == 50
    # LNBNN joins the whales it verified to the embedding's shortlist: one whale is no longer a ceiling
    assert lnbnn["fused@1"]["top1_known"] > cmp["fused@1"]["top1_known"]
    rep = cli_json(
        "calibrate", bundle, "--images", data / "images", "--labels", data / "queries.csv",
        "--mode", "fused", "--shortlist-k", "3",
    )  # fmt: skip
    assert load_manifest(bundle).local_features.shortlist_k == 3
    assert load_manifest(bundle).thresholds["fused"].value == pytest.approx(rep["saved_threshold"])
    ev = cli_json("evaluate", bundle, "--images", data / "images", "--labels", data / "queries.csv")
    assert ev["queries"] == len(rest) + 6
    # another FAISS index: rebuilt from the store, saved in the manifest; on 12 whales HNSW is exact
    args = ("build-gallery", bundle, "--images", data / "images", "--labels", data / "enrol.csv")
    stats = cli_json(*args, "--faiss-factory", "IDMap2,HNSW32")
    assert stats["duplicates"] == 12 and load_manifest(bundle).gallery.factory == "IDMap2,HNSW32"
    ev_hnsw = cli_json("evaluate", bundle, "--images", data / "images", "--labels", data / "queries.csv")
    assert (ev_hnsw["map5"], ev_hnsw["top1_known"]) == (ev["map5"], ev["top1_known"])
    (data / "missing.csv").write_text("Image,Id\nnot-there.jpg,w_x\n")
    res = runner.invoke(app, [str(a) for a in (*args[:-1], data / "missing.csv")])
    assert res.exit_code == 2 and "no photo was enrolled: all 1 labelled photos were missing" in res.output
    bad = runner.invoke(app, [str(a) for a in (*args, "--faiss-factory", "NoSuchIndex")])
    assert bad.exit_code != 0 and "NoSuchIndex" in bad.output
    assert load_manifest(bundle).gallery.factory == "IDMap2,HNSW32"
    cli_json(*args, "--faiss-factory", "IDMap2,Flat")


def test_service_local_and_fused_evidence(synth_bundle, monkeypatch, tmp_path):
    import shutil

    bundle = synth_bundle / "bundle"
    if load_manifest(bundle).local_features is None:
        pytest.skip("needs test_build_gallery_calibrate_evaluate first (same module)")
    shutil.copytree(bundle / "gallery", tmp_path / "gallery")
    monkeypatch.setenv("WHALEID_BUNDLE", str(bundle))
    monkeypatch.setenv("WHALEID_GALLERY_DIR", str(tmp_path / "gallery"))
    from service.main import create_app

    photo = next((synth_bundle / "data" / "images").iterdir()).read_bytes()
    with TestClient(create_app()) as c:
        assert c.get("/ready").json()["scoring_modes"] == ["embedding", "local", "fused"]
        for mode in ("local", "fused"):
            r = c.post(
                "/identify", files={"file": ("a.jpg", photo, "image/jpeg")}, params={"scoring": mode, "explain": "true"}
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["scoring"] == mode and "local" in body["timing_ms"]
            top = next(p for p in body["predictions"] if p["whale_id"] != "new_whale")
            ev = top["evidence"]
            assert ev["inliers"] >= 0 and "best_image_id" in ev
            if mode == "fused":
                assert "embedding_similarity" in ev and "fused_score" in ev
            pairs = np.asarray(ev.get("keypoint_pairs", []))
            assert pairs.size == 0 or pairs.shape[1:] == (2, 2)


def test_detector_train_export_detect(synth_bundle, tmp_path):
    import shutil

    data = synth_bundle / "data"
    bundle = tmp_path / "bundle"
    shutil.copytree(synth_bundle / "bundle", bundle, ignore=shutil.ignore_patterns("gallery"))
    out = cli_json(
        "train-detector",
        "--out",
        tmp_path / "det",
        "--images",
        data / "images",
        "--boxes",
        data / "boxes.csv",
        "--backbone",
        "test_resnet",
        "--input-h",
        32,
        "--input-w",
        64,
        "--epochs",
        5,
        "--batch-size",
        16,
    )
    val = out["val"]
    assert val["photos"] > 0 and 0 <= val["mean_iou"] <= 1 and 0 < val["full_frame_mean_iou"] < 1
    res = cli_json("export-detector", tmp_path / "det", "--bundle", bundle)
    assert res["max_abs_diff"] <= 1e-4
    m = load_manifest(bundle)
    assert m.detector is not None and m.tta.base == "detector"
    cli("detect-boxes", bundle, "--images", data / "images", "--out", tmp_path / "boxes.csv")
    with open(tmp_path / "boxes.csv", newline="") as fh:
        boxes = list(csv.DictReader(fh))
    assert len(boxes) == len(list((data / "images").iterdir()))
    for b in boxes[:20]:
        assert 0 <= float(b["x0"]) < float(b["x1"]) <= 192 and 0 <= float(b["y0"]) < float(b["y1"]) <= 96


def test_detector_boxes_are_on_the_upright_photo(synth_bundle, odd_images_dir, tmp_path):
    """An EXIF-rotated photo (stored 800x533, orientation 6): detected and TTA boxes lie on the upright 533x800."""
    import shutil

    from core.preprocess import load_image_file
    from index.detector import OnnxBoxDetector
    from whaleid.workflows import bundle_embedder

    data = synth_bundle / "data"
    bundle = tmp_path / "bundle"
    shutil.copytree(synth_bundle / "bundle", bundle, ignore=shutil.ignore_patterns("gallery"))
    cli(
        "train-detector",
        "--out",
        tmp_path / "det",
        "--images",
        data / "images",
        "--boxes",
        data / "boxes.csv",
        "--backbone",
        "test_resnet",
        "--input-h",
        32,
        "--input-w",
        64,
        "--epochs",
        1,
        "--batch-size",
        16,
    )
    cli("export-detector", tmp_path / "det", "--bundle", bundle)
    m = load_manifest(bundle)
    img = load_image_file(odd_images_dir / "cmyk_photo_exif_orient6.jpg")
    assert img.exif_transposed and img.pixels.shape[:2] == (800, 533)
    box = OnnxBoxDetector.from_bundle(bundle, m).detect([img.pixels])[0]
    assert 0 <= box[0] < box[2] <= 533 and 0 <= box[1] < box[3] <= 800
    boxes = bundle_embedder(bundle, m).boxes_for(img.pixels)
    assert boxes.shape == (5, 4) and (boxes[:, 2] <= 533).all() and (boxes[:, 3] <= 800).all()
    np.testing.assert_allclose(boxes[4], [0, 0, 533, 800])  # the policy's full-frame box, portrait


def test_serve_refuses_a_wrong_bundle_or_setting_in_one_line(synth_bundle, monkeypatch, tmp_path):
    res = runner.invoke(app, ["serve", str(tmp_path / "no-bundle")])
    assert res.exit_code == 2 and "error: cannot read manifest" in res.output
    assert "Traceback" not in res.output
    monkeypatch.setenv("WHALEID_MAX_UPLOAD_BYTES", "-5")
    res = runner.invoke(app, ["serve", str(synth_bundle / "bundle"), "--port", "1"])
    assert res.exit_code == 2 and "error: max_upload_bytes: Input should be greater than 0" in res.output
