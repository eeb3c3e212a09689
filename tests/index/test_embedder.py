"""PhotoEmbedder: TTA boxes as one batch, aggregation, mirror boxes."""

from __future__ import annotations

import numpy as np
import pytest

from core.boxes import TTAPolicy
from core.preprocess import PreprocessSpec, load_image_file
from index.embedder import PhotoEmbedder, aggregate_tta, mirror_boxes


class CountingNet:
    """A fake network: embedding = per-channel means of the input (3-d), records its batch sizes."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        return batch.mean(axis=(2, 3)).astype(np.float32) + np.float32(3.0)


def test_five_tta_boxes_are_one_batch_of_five():
    net = CountingNet()
    emb = PhotoEmbedder(net, PreprocessSpec(input_size=(16, 32)), TTAPolicy.default("detector"))
    img = np.random.default_rng(0).integers(0, 255, (60, 120, 3), dtype=np.uint8)
    out = emb.embed(img, base_box=(10, 10, 90, 50))
    assert net.calls == [5]
    assert out.boxes.shape == (5, 4) and out.embedding.shape == (3,)
    assert np.linalg.norm(out.embedding) == pytest.approx(1.0, abs=1e-6)
    net.calls.clear()
    emb.embed(img, flipped=True)  # photo and mirror image: still one call, of 10
    assert net.calls == [10]


def test_embed_many_packs_photos_and_keeps_order():
    net = CountingNet()
    emb = PhotoEmbedder(net, PreprocessSpec(input_size=(8, 16)), TTAPolicy.default(), batch_boxes=12)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (30, 40, 3), dtype=np.uint8) for _ in range(5)]
    many = list(emb.embed_many([(im, None) for im in imgs]))
    assert net.calls == [10, 10, 5]  # two photos (10 boxes) fit in 12, five photos in three calls
    for im, got in zip(imgs, many, strict=True):
        np.testing.assert_allclose(got.embedding, emb.embed(im).embedding, atol=1e-6)


def test_aggregate_is_mean_of_normalised_then_renormalised():
    e = np.array([[3.0, 0.0], [0.0, 1.0]], np.float32)
    # normalised rows (1, 0) and (0, 1); mean (0.5, 0.5); renormalised (0.7071, 0.7071)
    np.testing.assert_allclose(aggregate_tta(e), [2**-0.5, 2**-0.5], atol=1e-6)


def test_mirror_boxes_by_hand():
    np.testing.assert_allclose(mirror_boxes(np.array([[10, 5, 30, 20]]), 100), [[70, 5, 90, 20]])


def test_exif_rotated_photo_gets_boxes_on_the_upright_image(odd_images_dir):
    img = load_image_file(odd_images_dir / "cmyk_photo_exif_orient6.jpg")  # stored 800x533, upright 533x800
    emb = PhotoEmbedder(CountingNet(), PreprocessSpec(input_size=(8, 16)), TTAPolicy.default())
    boxes = emb.boxes_for(img.pixels)
    np.testing.assert_allclose(boxes[0], [0, 0, 533, 800])  # the full upright frame, portrait
    assert (boxes[:, 2] <= 533).all() and (boxes[:, 3] <= 800).all()
