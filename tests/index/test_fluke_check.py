"""The not-a-fluke check: the gallery's leave-one-identity-out reference by hand, and the verdicts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from index.fluke_check import PHOTO_MODEL, FlukeChecker, leave_identity_out_similarities, photo_statistics

# three whales in 2-d: A = two photos at (1, 0); B at (0, 1); C at (0.6, 0.8)
EMB = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], np.float32)
IDS = np.array([1, 1, 2, 3])


def test_leave_identity_out_by_hand():
    # centroids A (1, 0), B (0, 1), C (0.6, 0.8); each photo's best *other* whale:
    # A photos: B 0, C 0.6 -> 0.6; B: A 0, C 0.8 -> 0.8; C: A 0.6, B 0.8 -> 0.8
    sims = leave_identity_out_similarities(EMB, IDS, per_photo=False)
    np.testing.assert_allclose(sims, [0.6, 0.6, 0.8, 0.8], atol=1e-6)
    # by photos instead of centroids: the same here (A's photos are equal)
    by_photo = leave_identity_out_similarities(EMB, IDS, per_photo=True)
    np.testing.assert_allclose(by_photo, [0.6, 0.6, 0.8, 0.8], atol=1e-6)
    # one whale only: no reference
    assert leave_identity_out_similarities(EMB[:2], IDS[:2], per_photo=False).size == 0


def test_centroid_is_the_normalised_mean():
    # whale A's photos at 0 and 90 degrees: centroid (0.7071, 0.7071); B's photo (1, 0) sees it at 0.7071
    emb = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    sims = leave_identity_out_similarities(emb, np.array([1, 1, 2]), per_photo=False)
    np.testing.assert_allclose(sims, [1.0, 0.0, np.sqrt(0.5)], atol=1e-6)


@dataclass
class Hit:
    whale_id: str
    score: float
    identity_id: int = 0


class FakeStore:
    def __init__(self, emb, ids):
        self.emb, self.ids = emb, ids

    def count_images(self):
        return len(self.ids)

    def all_embeddings(self):
        return np.arange(len(self.ids)), self.ids, self.emb

    def identity_names(self):
        return {int(i): (f"w{i}", False) for i in set(self.ids.tolist())}


@dataclass
class FakeGallery:
    store: FakeStore
    scoring: str = "centroid"


@pytest.fixture
def checker():
    # reference [0.6, 0.6, 0.8, 0.8]: its 1 % quantile is 0.6, minus the 0.05 margin -> flag below 0.55
    gallery = FakeGallery(FakeStore(EMB, IDS))
    return FlukeChecker(gallery, quantile=0.01, margin=0.05, min_photos=4, photo_model=None)


def test_verdicts(checker):
    photo = np.zeros((300, 600, 3), np.uint8)
    assert checker.reference() == (pytest.approx(0.55), 4)
    far = checker.check(photo, [Hit("w1", 0.50)])
    assert (far.looks_like_fluke, far.reason) == (False, "unlike_gallery")
    assert far.as_dict() == {
        "reason": "unlike_gallery",
        "gallery_similarity": 0.5,
        "min_similarity": 0.55,
        "reference_photos": 4,
        "min_side_px": 300,
        "photo_distance": None,
        "max_photo_distance": None,
    }
    assert checker.check(photo, [Hit("w1", 0.56)]).looks_like_fluke
    # a gallery photo itself (same bytes) is a fluke by definition
    assert checker.check(photo, [Hit("w1", 0.10)], exact=True).looks_like_fluke
    tiny = checker.check(np.zeros((20, 40, 3), np.uint8), [Hit("w1", 0.9)])
    assert (tiny.looks_like_fluke, tiny.reason, tiny.min_side_px) == (False, "too_small", 20)


def test_too_small_a_gallery_flags_nothing_as_unlike():
    small = FlukeChecker(FakeGallery(FakeStore(EMB, IDS)), min_photos=10, photo_model=None)
    assert small.reference() == (None, 0)
    assert small.check(np.zeros((300, 600, 3), np.uint8), [Hit("w1", -1.0)]).looks_like_fluke


def test_reference_follows_a_growing_gallery(checker):
    assert checker.reference()[1] == 4
    store = checker.gallery.store
    # a fifth photo is within 10 % of 4? no (25 %): the reference is recomputed
    store.emb = np.vstack([EMB, [[0, 1]]]).astype(np.float32)
    store.ids = np.append(IDS, 2)
    assert checker.reference()[1] == 5


def test_photo_statistics_by_hand():
    # left half pure red (saturation 255, value 255), right half white (saturation 0, value 255)
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :100] = (255, 0, 0)
    img[:, 100:] = 255
    sat, white, top, lap, colours = photo_statistics(img)
    assert sat == pytest.approx(0.5, abs=0.01)
    assert white == pytest.approx(0.5, abs=0.01)
    assert top == pytest.approx(0.5, abs=0.01)
    assert colours == 2
    assert 0 < lap < 0.05  # edges only along the middle column


def test_a_flat_image_is_unlike_fluke_photos_and_a_real_fluke_is_not(flukes_dir):
    from core.preprocess import decode_image

    checker = FlukeChecker(FakeGallery(FakeStore(EMB, IDS)), min_photos=10)  # no gallery reference
    flat = checker.check(np.full((300, 600, 3), 128, np.uint8), [Hit("w1", 0.9)])
    assert (flat.looks_like_fluke, flat.reason) == (False, "unlike_fluke_photos")
    assert flat.photo_distance > PHOTO_MODEL["max_distance"]
    real = decode_image((flukes_dir / "images" / "0000e88ab.jpg").read_bytes()).pixels
    verdict = checker.check(real, [Hit("w1", 0.9)])
    assert verdict.looks_like_fluke and verdict.photo_distance < PHOTO_MODEL["max_distance"]
