"""The starter model shipped in ``starter/``: a valid bundle without a gallery, small enough to commit,
with the [-1, 1] normalisation of its ImageNet weights, that embeds a photo through onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from core.fileio import sha256_file
from core.manifest import load_manifest
from whaleid.starter import starter_bundle

pytest.importorskip("onnxruntime")


def test_the_starter_bundle_is_complete_small_and_embeds_a_photo():
    from whaleid.workflows import bundle_embedder

    bundle = starter_bundle()
    manifest = load_manifest(bundle)
    assert sha256_file(bundle / "model.onnx") == manifest.model.sha256
    assert manifest.detector is not None and sha256_file(bundle / manifest.detector.file) == manifest.detector.sha256
    assert sum(f.stat().st_size for f in bundle.iterdir()) <= 20_000_000  # the network and the detector together
    assert (bundle / "MODEL_CARD.md").is_file() and not (bundle / "gallery").exists()
    assert manifest.model.architecture == "tf_efficientnet_lite0" and manifest.model.embedding_dim == 512
    assert tuple(manifest.preprocess.mean) == tuple(manifest.preprocess.std) == (0.5, 0.5, 0.5)
    assert manifest.training["fine_tunable"] is True and manifest.training["pretrained"] == "pip:efficientnet-lite0"
    assert len(manifest.tta.boxes) == 5 and manifest.gallery.enrol_boxes == 1  # queries 5 boxes, enrolment 1
    assert manifest.tta.base == "detector"  # the boxes surround the detected fluke
    pixels = np.random.default_rng(0).integers(0, 256, (200, 400, 3), dtype=np.uint8)
    (out,) = bundle_embedder(bundle, manifest).embed_many([(pixels, None)])
    assert out.embedding.shape == (512,) and out.embedding.dtype == np.float32
    assert abs(float(np.linalg.norm(out.embedding)) - 1.0) < 1e-5


def test_the_starter_initialises_a_network_for_fine_tuning():
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from training.config import ModelConfig
    from training.model import build_embedding_net

    bundle = starter_bundle()
    manifest = load_manifest(bundle)
    cfg = ModelConfig(
        backbone="tf_efficientnet_lite0",
        input_size=list(manifest.preprocess.input_size),
        mean=[0.5] * 3,
        std=[0.5] * 3,
        init_from=str(bundle),
    )
    net = build_embedding_net(cfg).eval()  # strict: every tensor of the network is in model.onnx
    import onnxruntime as ort

    x = np.random.default_rng(1).normal(size=(2, 3, *manifest.preprocess.input_size)).astype(np.float32)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x})[0], want, atol=1e-4)


def test_the_starter_detector_finds_the_fluke_in_photos_it_was_not_trained_on(flukes_dir):
    from core.boxes import box_iou
    from core.preprocess import load_image_file
    from index.detector import OnnxBoxDetector

    bundle = starter_bundle()
    manifest = load_manifest(bundle)
    assert manifest.detector.preprocess.mean == (0.5, 0.5, 0.5)  # the ImageNet Lite0 stages' [-1, 1] inputs
    detector = OnnxBoxDetector.from_bundle(bundle, manifest)
    images = flukes_dir / "playground2018" / "images"
    # two of the detector's 260 held-out photos; the boxes are playground2018/boxes.csv's (1st place's masks)
    truth = {"00467ae9.jpg": (90, 116, 931, 464), "00acb5a9.jpg": (17, 34, 561, 200)}
    photos = [load_image_file(images / name).pixels for name in truth]
    found = detector.detect(photos)
    iou = box_iou(found, np.array(list(truth.values()), np.float32))
    assert found.shape == (2, 4) and iou.min() > 0.85, (found, iou)  # measured 0.922 and 0.963
    full = box_iou(np.array([[0, 0, 1000, 667], [0, 0, 571, 245]], np.float32), np.array(list(truth.values())))
    assert full.max() < 0.7  # the full frame, what the starter used before, is much worse on these
