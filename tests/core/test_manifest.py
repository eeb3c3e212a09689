from __future__ import annotations

import json

import pytest

from core.boxes import TTAPolicy
from core.errors import ManifestError, ManifestMismatchError
from core.manifest import (
    Manifest,
    ModelSpec,
    ThresholdSpec,
    check_embedding_dim,
    check_input_shape,
    load_manifest,
)
from core.preprocess import PreprocessSpec


def make_manifest(**kw) -> Manifest:
    return Manifest(
        model_version="test-1",
        model=ModelSpec(sha256="0" * 64, architecture="densenet121", embedding_dim=512),
        preprocess=PreprocessSpec(input_size=(64, 128)),
        tta=TTAPolicy.default(),
        thresholds={"embedding": ThresholdSpec(value=0.42, rule="max_map5", val_map5=0.5)},
        **kw,
    )


def test_round_trip(tmp_path):
    m = make_manifest()
    path = m.save(tmp_path)
    assert path.name == "manifest.json"
    loaded = load_manifest(tmp_path)
    assert loaded == m
    assert loaded.preprocess.input_size == (64, 128)
    assert loaded.threshold_for() == pytest.approx(0.42)
    assert loaded.gallery.factory == "IDMap2,Flat"
    assert len(loaded.tta.boxes) == 5


def test_unknown_version_is_refused_with_a_clear_message(tmp_path):
    data = make_manifest().model_dump(mode="json")
    data["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"format_version 99.*supported: \[1\]"):
        load_manifest(tmp_path)


def test_typo_and_non_manifest_are_refused(tmp_path):
    data = make_manifest().model_dump(mode="json")
    data["tresholds"] = {}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="tresholds"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ManifestError, match="not a whaleid bundle manifest"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(tmp_path / "missing")


def test_mismatch_checks():
    m = make_manifest()
    check_embedding_dim(m, 512, "gallery")
    with pytest.raises(ManifestMismatchError, match="gallery has embedding dimension 256"):
        check_embedding_dim(m, 256, "gallery")
    check_input_shape(m, ("batch", 3, 64, 128))
    with pytest.raises(ManifestMismatchError, match="axis 2"):
        check_input_shape(m, ("batch", 3, 128, 128))


def test_missing_threshold_for_mode():
    with pytest.raises(ManifestError, match="local"):
        make_manifest().threshold_for("local")
