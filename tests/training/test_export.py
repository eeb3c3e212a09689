"""The bundle reproduces torch: ONNX outputs, gallery centroids and MAP@5 (real photos)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.manifest import load_manifest
from index.embedder import PhotoEmbedder
from index.evaluate import evaluate_embedder
from index.gallery import Gallery
from index.labels import Photo, Split
from training.evaluate import torch_embed_fn
from training.export import ExportError, load_run, verification_batch, verify_onnx
from whaleid.workflows import bundle_embedder

pytestmark = pytest.mark.slow


def _run_dir(bundle: Path) -> Path:
    return Path(load_manifest(bundle).training["run_dir"])


def test_export_was_verified_against_torch(real_bundle):
    m = load_manifest(real_bundle)
    diffs = m.training["onnx_max_abs_diff"]
    assert set(diffs) == {"1", "2", "7"} and max(diffs.values()) <= 1e-4
    assert m.model.architecture == "resnet18" and m.model.embedding_dim == 128 and m.model.head == "arcface"
    cfg, model, _ = load_run(_run_dir(real_bundle))
    inputs = verification_batch(cfg, _run_dir(real_bundle), 7)
    assert inputs.shape == (7, 3, 64, 128)
    with pytest.raises(ExportError, match="differs from torch"):
        verify_onnx(model, real_bundle / "model.onnx", inputs, atol=1e-12)


def _torch_embedder(bundle: Path) -> PhotoEmbedder:
    m = load_manifest(bundle)
    _, model, _ = load_run(_run_dir(bundle))
    return PhotoEmbedder(torch_embed_fn(model, torch.device("cpu")), m.preprocess, m.tta)


def test_bundle_gallery_matches_torch_centroids(real_bundle, real_subset, tmp_path):
    from index.build import build_gallery

    m = load_manifest(real_bundle)
    onnx_gallery = Gallery.for_manifest(real_bundle / "gallery", m)
    torch_gallery = Gallery(tmp_path / "torch", m.model.embedding_dim, durable=False)
    build_gallery(
        torch_gallery,
        _torch_embedder(real_bundle),
        real_subset["images"],
        [(img, w, None) for img, w in real_subset["gallery_rows"]],
        thumbnails=False,
        progress=False,
    )
    whales = sorted({w for _, w in real_subset["gallery_rows"]})
    cos = np.array([float(onnx_gallery.centroid(w) @ torch_gallery.centroid(w)) for w in whales])
    assert len(cos) == 40 and cos.min() >= 0.9999, cos.min()


def test_evaluate_bundle_matches_torch_map5(real_bundle, real_subset):
    rows = real_subset["gallery_rows"]
    by_whale: dict[str, list[str]] = {}
    for img, w in rows:
        by_whale.setdefault(w, []).append(img)
    split = Split(
        train=[Photo(img, w) for w, imgs in by_whale.items() for img in imgs[:2]],
        val_closed=[Photo(imgs[2], w) for w, imgs in by_whale.items()],
        val_open=[Photo(img, w) for w, imgs in real_subset["spare"].items() for img in imgs],
    )
    images = real_subset["images"]
    t_rep, t_final = evaluate_embedder(_torch_embedder(real_bundle), images, split, flipped=False, progress=False)
    m = load_manifest(real_bundle)
    o_rep, o_final = evaluate_embedder(bundle_embedder(real_bundle, m), images, split, flipped=False, progress=False)
    assert t_rep.queries == o_rep.queries == 60
    assert abs(t_rep.map5 - o_rep.map5) <= 0.005, (t_rep.map5, o_rep.map5)
    same = sum([w for w, _ in a[2]] == [w for w, _ in b[2]] for a, b in zip(t_final, o_final, strict=True))
    assert same >= 58  # the same top-5 for (almost) every query
