"""``gallery.enrol_boxes``: enrolled photos through the first TTA boxes only, queries through all of them.

Checked by hand against the network run on the single crop: ``build-gallery``, ``POST /gallery`` and the
catalogue's enrolment all store the same vector for a photo, and a query still sends every box.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from helpers import jpeg_bytes, texture, tiny_bundle, view

from core.boxes import TTABox, TTAPolicy
from core.manifest import load_manifest
from core.preprocess import PreprocessSpec, crops_to_batch, decode_image
from index.embedder import PhotoEmbedder
from index.vectors import l2_normalize


class CountingNet:
    """A fake network: per-channel means of each crop (3-d), recording its batch sizes."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        return batch.mean(axis=(2, 3)).astype(np.float32) + np.float32(3.0)


def test_first_keeps_the_leading_boxes_and_crops():
    policy = TTAPolicy.default()
    one = policy.first(1)
    assert one.boxes == (TTABox(),) and one.fallback == (TTABox(),)  # the base box / the full frame
    two = policy.first(2)
    assert two.boxes == policy.boxes[:2] and two.fallback == policy.fallback[:2] and two.base == policy.base
    assert policy.first(None) is policy and policy.first(5) is policy and policy.first(9) is policy


def test_enrolment_embedder_sends_one_crop_a_photo_and_matches_the_crop_alone():
    net = CountingNet()
    spec = PreprocessSpec(input_size=(8, 16))
    full = PhotoEmbedder(net, spec, TTAPolicy.default(), batch_boxes=30)
    enrol = full.for_enrolment(1)
    assert full.for_enrolment(None) is full and enrol.batch_boxes == 30 and enrol.embed_fn is net
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 255, (30, 40, 3), dtype=np.uint8) for _ in range(4)]
    got = list(enrol.embed_many([(im, None) for im in imgs]))
    assert net.calls == [4]  # four photos, one crop each, one call
    for im, e in zip(imgs, got, strict=True):
        assert e.boxes.tolist() == [[0.0, 0.0, 40.0, 30.0]]  # the full frame
        by_hand = net(crops_to_batch(im, e.boxes, spec))[0]
        np.testing.assert_allclose(e.embedding, by_hand / np.linalg.norm(by_hand), atol=1e-6)
    net.calls.clear()
    full.embed(imgs[0])
    assert net.calls == [5]  # a query keeps the five fixed crops


@pytest.fixture
def bundle_one_box(tmp_path):
    pytest.importorskip("onnx")
    bundle = tiny_bundle(tmp_path / "bundle", seed=5)
    m = load_manifest(bundle)
    m.model_copy(update={"gallery": m.gallery.model_copy(update={"enrol_boxes": 1})}).save(bundle)
    return bundle


def _single_crop_embedding(bundle, data: bytes) -> np.ndarray:
    """The tiny network run by hand on the photo's full frame: the vector an enrolment must store."""
    from index.embedder import OnnxModel

    m = load_manifest(bundle)
    px = decode_image(data).pixels
    h, w = px.shape[:2]
    out = OnnxModel(bundle / "model.onnx")(crops_to_batch(px, np.array([[0, 0, w, h]], np.float32), m.preprocess))
    return l2_normalize(out)[0]


def _stored(bundle, gallery_dir, whale_id: str) -> np.ndarray:
    from index.gallery import Gallery

    g = Gallery.for_manifest(gallery_dir, load_manifest(bundle))
    try:
        return g.store.embeddings_of(g.store.identity_id(whale_id))
    finally:
        g.close()


def test_build_gallery_and_post_gallery_store_the_single_crop_embedding(bundle_one_box, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app
    from whaleid.workflows import build_gallery

    photos = tmp_path / "photos"
    photos.mkdir()
    a, b = jpeg_bytes(view(texture(1), 1)), jpeg_bytes(view(texture(2), 2))
    (photos / "a.jpg").write_bytes(a)
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "whale_id"), ("a.jpg", "w1")])
    build_gallery(bundle_one_box, photos, tmp_path / "labels.csv", progress=False)
    gallery_dir = bundle_one_box / "gallery"
    np.testing.assert_allclose(
        _stored(bundle_one_box, gallery_dir, "w1")[0], _single_crop_embedding(bundle_one_box, a), atol=1e-5
    )

    with TestClient(create_app(Settings(bundle=bundle_one_box))) as c:
        r = c.post("/gallery", files=[("files", ("b.jpg", b, "image/jpeg"))], data={"whale_id": "w2"})
        assert r.status_code == 201, r.text
        q = c.post("/identify", files={"file": ("q.jpg", b, "image/jpeg")})
        assert q.status_code == 200
    np.testing.assert_allclose(
        _stored(bundle_one_box, gallery_dir, "w2")[0], _single_crop_embedding(bundle_one_box, b), atol=1e-5
    )
