"""``whaleid quickstart`` without training (issue 16, issue 23 item 1): the starter model is copied, the
photos are split by whale, the gallery is enrolled and both scoring modes are calibrated, and no
training run is made. A tiny torch-free stand-in plays the starter model."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import tiny_bundle
from typer.testing import CliRunner

from core.manifest import load_manifest
from whaleid.cli import app

pytest.importorskip("onnx")
pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from training.synthetic import SyntheticSpec, make_synthetic_dataset

    return make_synthetic_dataset(
        tmp_path_factory.mktemp("data"), SyntheticSpec(identities=8, photos_per_identity=(2, 3), new_whales=3, seed=5)
    )


def test_quickstart_serves_the_starter_model_without_training(tmp_path, synthetic):
    from index.gallery import Gallery

    starter = tiny_bundle(tmp_path / "starter", thresholds={"embedding": 0.9})
    home = tmp_path / "qs"
    args = ["quickstart", "--no-serve", "--home", home, "--starter", starter, "--images", synthetic / "images"]
    args += ["--labels", synthetic / "train.csv", "--boxes", synthetic / "boxes.csv"]
    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert not (home / "run").exists()  # nothing was trained
    assert "[2/5] the starter model" in res.output and "no training here" in res.output
    assert "[5/5] serve on http://127.0.0.1:8000" in res.output

    bundle = home / "bundle"
    manifest = load_manifest(bundle)
    assert manifest.model_version == "tiny-linear-test"
    assert (bundle / "model.onnx").read_bytes() == (starter / "model.onnx").read_bytes()
    # both modes calibrated on the validation photos; the starter's own 0.9 replaced; the better is the default
    emb, fused = manifest.thresholds["embedding"], manifest.thresholds["fused"]
    assert emb.rule == fused.rule == "max_map5" and None not in (emb.val_map5, fused.val_map5)
    assert (
        manifest.local_features is not None
        and manifest.local_features.shortlist_k == 50
        and manifest.local_features.matcher == "lnbnn"
    )
    n_val = len((home / "split" / "calibration.csv").read_text().splitlines()) - 1
    assert manifest.scoring == ("embedding" if emb.val_map5 > fused.val_map5 + 1 / n_val else "fused")
    rule = "(fused unless the embedding's MAP@5 is higher by more than one photo's worth"
    assert f"default scoring: {manifest.scoring} {rule}" in res.output
    # the split is the CPU configs' split by whale (seed 0): every named whale with 2+ photos loses one
    # photo to validation, the gallery holds the rest
    split = json.loads((home / "split" / "split.json").read_text())
    rows = list(csv.DictReader((synthetic / "train.csv").read_text().splitlines()))
    named = [r for r in rows if r["Id"] != "new_whale"]
    gallery_csv = list(csv.DictReader((home / "split" / "gallery.csv").read_text().splitlines()))
    assert len(gallery_csv) == len(split["train"]) and {r["image"] for r in gallery_csv}.isdisjoint(
        r[0] for r in split["val_closed"]
    )
    assert len(split["train"]) + len(split["val_closed"]) + len(split["val_open"]) == len(named)
    # at the end every named photo is enrolled, the validation photos too
    store = Gallery.for_manifest(bundle / manifest.gallery.folder, manifest)
    try:
        assert {n for n, flipped in store.store.identity_names().values() if not flipped} == {r["Id"] for r in named}
        assert store.store.count_images() == len(named)
    finally:
        store.close()
    # the starter itself is never written to
    assert load_manifest(starter).thresholds["embedding"].value == 0.9 and not (starter / "gallery").exists()


def test_set_without_train_is_refused_before_any_work(tmp_path, synthetic):
    starter = tiny_bundle(tmp_path / "starter")
    home = tmp_path / "qs"
    args = ["quickstart", "--no-serve", "--home", home, "--starter", starter, "--images", synthetic / "images"]
    args += ["--labels", synthetic / "train.csv", "--set", "stages.0.epochs=1"]
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 2 and "add --train" in res.output
    assert not (home / "bundle").exists()


def test_a_missing_starter_model_says_what_to_do(monkeypatch):
    from core.errors import ConfigError
    from whaleid import starter

    monkeypatch.setattr(starter, "STARTER_FOLDER", "no-such-starter-folder")
    monkeypatch.setattr(starter, "PACKAGED_FOLDER", "no-such-starter-folder")
    with pytest.raises(ConfigError, match="pass --starter BUNDLE, or --train"):
        starter.starter_bundle()


def _with_detector(bundle, payload: bytes = b"not a real network: copy_detector never runs it"):
    from core.fileio import sha256_file
    from core.manifest import DetectorSpec
    from core.preprocess import PreprocessSpec

    (bundle / "detector.onnx").write_bytes(payload)
    spec = DetectorSpec(
        sha256=sha256_file(bundle / "detector.onnx"),
        architecture="mobilenetv2_035",
        preprocess=PreprocessSpec(input_size=(96, 192)),
        val_mean_iou=0.8,
    )
    load_manifest(bundle).with_detector(spec).save(bundle)
    return spec


def test_the_starter_detector_travels_with_the_copy_and_into_a_fine_tuned_bundle(tmp_path):
    from core.errors import ManifestError
    from whaleid.starter import copy_detector, copy_starter

    starter = tiny_bundle(tmp_path / "starter")
    spec = _with_detector(starter)
    copied = copy_starter(starter, tmp_path / "served")
    assert copied.detector == spec and load_manifest(tmp_path / "served").tta.base == "detector"
    assert (tmp_path / "served" / "detector.onnx").read_bytes() == (starter / "detector.onnx").read_bytes()

    trained = tiny_bundle(tmp_path / "trained", seed=1)  # as `export` writes it: no detector, full-frame boxes
    before = load_manifest(trained)
    assert before.detector is None and before.tta.base == "full_frame"
    assert copy_detector(starter, trained) is True
    m = load_manifest(trained)
    assert m.detector == spec and m.tta.base == "detector" and m.model_version == "tiny-linear-test"
    assert m.tta.boxes == before.tta.boxes and m.model == before.model  # its own boxes, now around the fluke
    assert (trained / "detector.onnx").read_bytes() == (starter / "detector.onnx").read_bytes()

    assert copy_detector(tiny_bundle(tmp_path / "plain"), tiny_bundle(tmp_path / "other")) is False
    (starter / "detector.onnx").write_bytes(b"changed after the manifest was written")
    with pytest.raises(ManifestError, match="does not match the checksum"):
        copy_detector(starter, tiny_bundle(tmp_path / "third"))
    assert load_manifest(tmp_path / "third").detector is None and not (tmp_path / "third" / "detector.onnx").exists()
