"""``whaleid quickstart`` steps 1 to 4 on a tiny synthetic set with a tiny model (serving is tested in
tests/service): the bundle, its gallery and a new_whale threshold chosen as the service sees photos."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from core.manifest import load_manifest
from whaleid.cli import app
from whaleid.quickstart import calibration_subset

pytestmark = pytest.mark.slow


def test_quickstart_builds_a_servable_bundle(tmp_path):
    from index.gallery import Gallery
    from training.synthetic import SyntheticSpec, make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", SyntheticSpec(identities=10, new_whales=4, seed=5))
    home = tmp_path / "qs"
    args = ["quickstart", "--no-serve", "--home", home, "--images", data / "images"]
    args += ["--labels", data / "train.csv", "--boxes", data / "boxes.csv", "--train"]
    for o in (
        "model.backbone=test_resnet",
        "model.pretrained=false",  # neither the ImageNet Lite0 nor the starter model: a tiny network
        "model.init_from=null",
        "model.input_size=[32, 64]",
        "model.embedding_dim=32",
        "optim.batch_size=8",
        'stages=[{"name": "s1", "epochs": 2, "min_images": 1}]',
    ):
        args += ["--set", o]
    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "[5/5] serve on http://127.0.0.1:8000" in res.output and "curl -F file=@" in res.output

    bundle = home / "bundle"
    manifest = load_manifest(bundle)
    assert manifest.model.embedding_dim == 32 and tuple(manifest.preprocess.input_size) == (32, 64)
    # the fine-tuned network keeps the starter's fluke detector: TTA boxes around the detected fluke
    from whaleid.starter import starter_bundle

    assert manifest.detector == load_manifest(starter_bundle()).detector and manifest.tta.base == "detector"
    assert "the starter's fluke detector kept" in res.output
    # the threshold was re-chosen on the validation photos without boxes (calibrate), not copied
    # from training, whose evaluation used the photos' boxes
    run_eval = json.loads((home / "run" / "eval.json").read_text())
    emb, fused = manifest.thresholds["embedding"], manifest.thresholds["fused"]
    assert emb.rule == fused.rule == "max_map5" and None not in (emb.val_map5, fused.val_map5)
    # local features on; fused at its defaults (50 whales joined by LNBNN); the better mode is the default
    assert (
        manifest.local_features is not None
        and manifest.local_features.shortlist_k == 50
        and manifest.local_features.matcher == "lnbnn"
    )
    n_val = len((home / "split" / "calibration.csv").read_text().splitlines()) - 1
    best = "embedding" if emb.val_map5 > fused.val_map5 + 1 / n_val else "fused"  # fused unless clearly beaten
    assert manifest.scoring == best
    n_all = len((home / "split" / "queries.csv").read_text().splitlines()) - 1
    subset = f"{n_val} photos" if n_val >= n_all else f"{n_val} of the {n_all} validation photos, drawn at random"
    assert (
        f"validation as served ({subset}): MAP@5 {emb.val_map5:.3f} with the embedding alone (new_whale "
        f"threshold {emb.value:.3f}), {fused.val_map5:.3f} fused with SIFT + RANSAC (threshold {fused.value:.3f}); "
        f"default scoring: {best}"
    ) in res.output
    queries = list(csv.DictReader((home / "split" / "queries.csv").read_text().splitlines()))
    assert len(queries) == run_eval["queries"]
    # every named whale of the labels is enrolled, the validation photos included
    rows = list(csv.DictReader((data / "train.csv").read_text().splitlines()))
    named = {r["Id"] for r in rows if r["Id"] != "new_whale"}
    gallery = Gallery.for_manifest(bundle / manifest.gallery.folder, manifest)
    try:
        assert {n for n, flipped in gallery.store.identity_names().values() if not flipped} == named
        assert gallery.store.count_images() == sum(1 for r in rows if r["Id"] != "new_whale")
    finally:
        gallery.close()

    # a second run serves the existing bundle without rebuilding it
    again = CliRunner().invoke(app, [str(a) for a in args[:4]], catch_exceptions=False)
    assert again.exit_code == 0 and "exists: serving it" in again.output


def testcalibration_subset_is_seeded_and_keeps_order(tmp_path):
    src = tmp_path / "q.csv"
    src.write_text("image,whale_id\n" + "".join(f"{i:03d}.jpg,w{i}\n" for i in range(10)))
    a = calibration_subset(src, tmp_path / "a.csv", limit=4).read_text().splitlines()
    b = calibration_subset(src, tmp_path / "b.csv", limit=4).read_text().splitlines()
    assert a == b and a[0] == "image,whale_id" and len(a) == 5
    assert a[1:] == sorted(a[1:])  # file order kept
    assert calibration_subset(src, tmp_path / "c.csv", limit=50).read_text() == src.read_text()
