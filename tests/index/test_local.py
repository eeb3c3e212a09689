"""Local-feature matching on hand-made textures whose geometry is known exactly.

No real photo is used: the "fluke" is a random multi-scale texture, its gallery copy is the same
texture rotated by 15 degrees, scaled by 0.8 and cropped, so every true correspondence is known.
"""

from __future__ import annotations

import math
import threading
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from core.errors import CorruptArtifactError
from core.manifest import LocalFeatureSpec
from index import modes
from index.gallery import Gallery
from index.local import (
    LocalCalibration,
    LocalFeatureExtractor,
    LocalFeatures,
    LocalMatcher,
    calibrate_from_pairs,
    decode_features,
    encode_features,
    fit_logistic,
    fused_score,
    fused_scores,
    local_score,
    local_scores,
    match,
)
from index.store import NewImage

SPEC = LocalFeatureSpec()
E = np.eye(4, dtype=np.float32)
#: by hand: sigmoid(log1p(3) - 3) = 1 / (1 + e^3 / 4) = 4 / (4 + e^3)
P_LOG4_MINUS_3 = 4.0 / (4.0 + math.exp(3.0))


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """``(h, w, 3) uint8`` random texture: coarse blobs plus fine grain (a high-texture pattern)."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.random((max(h // 8, 2), max(w // 8, 2))), (w, h), interpolation=cv2.INTER_CUBIC)
    img = img + 0.5 * cv2.GaussianBlur(rng.random((h, w)), (0, 0), 2.0)
    img = 255.0 * (img - img.min()) / (img.max() - img.min())
    return np.repeat(img.astype(np.uint8)[:, :, None], 3, axis=2)


def water(h: int, w: int, seed: int) -> np.ndarray:
    """Blank water: smooth low-contrast noise around a blue-grey."""
    rng = np.random.default_rng(seed)
    smooth = cv2.GaussianBlur(rng.standard_normal((h, w)), (0, 0), 12.0)
    grey = np.clip(110.0 + 4.0 * smooth / smooth.std(), 0, 255).astype(np.uint8)
    return np.stack([grey - 20, grey, grey + 20], axis=2)


QUERY = texture(300, 480, seed=1)
#: query photo pixels -> gallery photo pixels: rotate 15 degrees and scale 0.8 about the centre, then
#: crop 20 px off the left and 10 px off the top.
WARP = cv2.getRotationMatrix2D((240.0, 150.0), 15.0, 0.8) - np.array([[0, 0, 20.0], [0, 0, 10.0]])
WARPED = cv2.warpAffine(QUERY, WARP, (440, 280), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def extractor() -> LocalFeatureExtractor:
    return LocalFeatureExtractor(SPEC)


@pytest.fixture(scope="module")
def query(extractor) -> LocalFeatures:
    return extractor.extract(QUERY)


def test_transformed_copy_matches_and_unrelated_do_not(extractor, query):
    copy = extractor.extract(WARPED)
    assert len(query) == len(copy) == SPEC.n_keypoints
    assert query.descriptors.dtype == np.uint8 and query.keypoints.dtype == np.float32
    res = match(query, copy, SPEC)
    assert res.inliers >= 150 and res.matches >= res.inliers  # 217 measured
    assert res.pairs.shape == (res.inliers, 2, 2) and res.pairs.dtype == np.float32
    # the pairs are in photo pixels: the gallery point is the query point moved by WARP
    predicted = res.pairs[:, 0] @ WARP[:, :2].T + WARP[:, 2]
    assert np.median(np.linalg.norm(predicted - res.pairs[:, 1], axis=1)) < 1.5
    assert match(query, extractor.extract(WARPED), SPEC.model_copy(update={"geometry": "affine"})).inliers >= 60

    for other in (texture(300, 480, seed=2), texture(260, 500, seed=3), water(300, 480, seed=4)):
        assert match(query, extractor.extract(other), SPEC).inliers <= 8


def test_keypoints_are_in_photo_pixels_of_the_boxed_crop(extractor, query):
    canvas = water(400, 600, seed=5)
    canvas[30:330, 40:520] = QUERY
    boxed = extractor.extract(canvas, (40, 30, 520, 330))
    # same crop pixels, same keypoints, shifted by the box's corner
    np.testing.assert_allclose(boxed.keypoints, query.keypoints + np.float32([40, 30]), atol=1e-3)
    np.testing.assert_array_equal(boxed.descriptors, query.descriptors)
    assert boxed.crop_size_px == (512, 320)  # 480x300 resized to 512 wide
    np.testing.assert_allclose(boxed.crop_points(), query.crop_points(), atol=1e-3)


@pytest.mark.parametrize(
    "pixels",
    [
        np.full((300, 480, 3), 128, np.uint8),  # uniform grey
        np.zeros((1, 1, 3), np.uint8),
        np.zeros((2, 940, 3), np.uint8),  # a 940x2 strip
        texture(2, 940, seed=6),
        texture(940, 2, seed=7),  # tall: the resized height is capped
    ],
    ids=["grey", "1x1", "940x2", "940x2-textured", "2x940-textured"],
)
def test_photo_without_keypoints_gives_empty_features_and_a_low_score(extractor, query, pixels):
    f = extractor.extract(pixels)
    assert f.keypoints.shape == (0, 2) and f.descriptors.shape == (0, 128)
    assert f.crop_size_px[1] <= 2 * SPEC.crop_width_px
    for a, b in ((query, f), (f, query), (f, f)):
        res = match(a, b, SPEC)
        assert (res.inliers, res.matches, res.pairs.shape) == (0, 0, (0, 2, 2))
    # 0 inliers: p = sigmoid(a * log1p(0) + b) = sigmoid(-3) = 1 / (1 + e^3)
    assert local_score(0, SPEC.calibration) == pytest.approx(1.0 / (1.0 + math.exp(3.0)), abs=1e-12)
    assert decode_features(encode_features(f)).keypoints.shape == (0, 2)


def test_malformed_pixels_and_box_raise_value_error(extractor):
    with pytest.raises(ValueError, match="uint8"):
        extractor.extract(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="x1 > x0"):
        extractor.extract(QUERY, (50, 10, 20, 40))
    with pytest.raises(ValueError, match="sift"):
        LocalFeatureExtractor(SPEC.model_copy(update={"detector": "orb"}))


def test_encode_decode_round_trip_is_exact(extractor, query):
    blob = extractor.encode_photo(QUERY)
    assert blob == LocalFeatureExtractor.encode(query)
    assert len(blob) == 64 + 400 * (8 + 128) + 4
    back = LocalFeatureExtractor.decode(blob)
    np.testing.assert_array_equal(back.keypoints, query.keypoints)
    np.testing.assert_array_equal(back.descriptors, query.descriptors)
    np.testing.assert_array_equal(back.crop_to_photo, query.crop_to_photo)
    assert back.crop_size_px == query.crop_size_px
    assert not back.descriptors.flags.writeable  # shared by the matcher's cache


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b"garbage",
        lambda b: b"",
        lambda b: b[:-100],  # truncated
        lambda b: b[:200] + bytes([b[200] ^ 1]) + b[201:],  # one flipped bit: crc32 fails
        lambda b: b"XXXX" + b[4:],  # wrong magic
        lambda b: b + b"\x00",
    ],
    ids=["garbage", "empty", "truncated", "bit-flip", "magic", "trailing"],
)
def test_decode_of_bad_bytes_raises_corrupt_artifact(query, mangle):
    blob = mangle(encode_features(query))
    with pytest.raises(CorruptArtifactError, match="gallery.sqlite image 7"):
        decode_features(blob, "gallery.sqlite image 7")


def test_two_orientations_of_one_point_count_once():
    """SIFT gives a point with two dominant orientations two keypoints at one place: matched to a
    gallery point that is doubled the same way, that is one correspondence, one inlier, not two."""
    rng = np.random.default_rng(7)
    points = np.array([[20, 30], [200, 40], [60, 180], [220, 190], [120, 100], [150, 20]], np.float32)
    desc = rng.integers(0, 256, (7, 128)).astype(np.uint8)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # point 0 twice (its two orientations: two descriptors); the gallery photo shifted by (10, 5) px
    query = LocalFeatures(np.vstack([points, points[:1]]), desc, identity, (256, 256))
    gallery = LocalFeatures(np.vstack([points, points[:1]]) + np.float32([10, 5]), desc, identity, (256, 256))
    result = match(query, gallery, SPEC)
    # 7 descriptor matches, 6 distinct (query, gallery) locations, all on the shift
    assert (result.inliers, result.matches) == (6, 6)
    assert len(np.unique(result.pairs.reshape(len(result.pairs), 4), axis=0)) == 6
    np.testing.assert_allclose(result.pairs[:, 1] - result.pairs[:, 0], np.tile([10.0, 5.0], (6, 1)))


def test_scores_by_hand():
    assert local_score(3, (1.0, -3.0)) == pytest.approx(P_LOG4_MINUS_3, abs=1e-12)
    assert local_score(0, (2.0, 0.0)) == pytest.approx(0.5, abs=1e-12)
    # 4 * 0.5 + log1p(3) - 5 = log 4 - 3
    assert fused_score(0.5, 3, (4.0, 1.0, -5.0)) == pytest.approx(P_LOG4_MINUS_3, abs=1e-12)
    assert fused_score(1.0, 0, (4.0, 1.0, -5.0)) == pytest.approx(1.0 / (1.0 + math.e), abs=1e-12)
    np.testing.assert_allclose(local_scores([0, 3], (1.0, -3.0)), [1 / (1 + math.exp(3)), P_LOG4_MINUS_3])
    np.testing.assert_allclose(fused_scores([0.5, 1.0], [3, 0], (4.0, 1.0, -5.0)), [P_LOG4_MINUS_3, 1 / (1 + math.e)])
    # extreme logits stay finite
    assert fused_score(-1.0, 0, (1000.0, 0.0, 0.0)) == 0.0 and local_score(1e6, (100.0, 0.0)) == 1.0


def test_fit_logistic_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40_000, 2))
    truth = np.array([2.0, -1.0, 0.5])
    y = (rng.random(len(X)) < 1.0 / (1.0 + np.exp(-(X @ truth[:2] + truth[2])))).astype(int)
    np.testing.assert_allclose(fit_logistic(X, y, l2=1e-6), truth, atol=0.08)
    # a separable set stays finite thanks to the penalty, and still separates
    Xs = np.array([[0.0], [1.0], [2.0], [3.0]])
    coef = fit_logistic(Xs, [0, 0, 1, 1])
    assert np.isfinite(coef).all() and coef[0] > 0 and -coef[1] / coef[0] == pytest.approx(1.5, abs=1e-6)
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic(Xs, [1, 1, 1, 1])


def test_calibrate_from_pairs_recovers_local_and_fused_coefficients():
    rng = np.random.default_rng(1)
    n = 40_000
    inliers = rng.integers(0, 60, n)
    cosine = rng.uniform(-0.2, 0.9, n)
    logit = 3.0 * cosine + 1.5 * np.log1p(inliers) - 6.0
    same = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    cal = calibrate_from_pairs(inliers, same, cosine, l2=1e-6)
    assert isinstance(cal, LocalCalibration) and cal.pairs == n and cal.genuine == int(same.sum())
    np.testing.assert_allclose(cal.fusion, (3.0, 1.5, -6.0), atol=0.25)
    a, _b = cal.calibration
    assert a > 1.0  # inliers alone still predict a match
    assert calibrate_from_pairs(inliers, same).fusion is None
    spec = LocalFeatureSpec(calibration=cal.calibration, fusion=cal.fusion)  # fits the manifest
    assert spec.fusion == cal.fusion


def _photo(sha: str, emb, pixels: np.ndarray, extractor: LocalFeatureExtractor, box=None) -> NewImage:
    v = np.asarray(emb, np.float32)
    return NewImage(
        sha256=sha,
        embedding=v / np.linalg.norm(v),
        box_xyxy_px=box,
        local_features=extractor.encode_photo(pixels, box),
    )


@pytest.fixture
def gallery(tmp_path, extractor):
    """A: embedding twin of the query, unrelated photo. B: weaker embedding, its photo is the warped
    query placed in a larger frame at (60, 25) and boxed. C: unrelated on both counts."""
    canvas = water(360, 560, seed=8)
    canvas[25:305, 60:500] = WARPED
    g = Gallery(tmp_path / "g", dim=4)
    g.add("A", [_photo("a0", E[0], texture(300, 480, seed=2), extractor)])
    g.add("B", [_photo("b0", E[0] + E[1], canvas, extractor, box=(60, 25, 500, 305))])
    g.add(
        "C",
        [_photo("c0", E[1], texture(260, 500, seed=3), extractor), _photo("c1", E[2], water(300, 480, 9), extractor)],
    )
    yield g
    g.close()


BRUTE = SPEC.model_copy(update={"matcher": "brute_force"})


def _rank(mode, gallery, matcher, query, shortlist, spec, k=5, explain=False, embedding=None):
    """A scoring mode's ranking through the registry, as the service runs it (only the manifest's
    local-feature section is read by the built-in modes)."""
    manifest = SimpleNamespace(local_features=spec)
    m = modes.get(mode)
    ev = modes.gather(gallery, shortlist, embedding, matcher, query, m.match_scope(manifest))
    return modes.rank(m, ev, manifest, k, explain)


def test_rank_fused_and_local_put_the_matching_photo_first(gallery, query):
    [shortlist] = gallery.search(E[0], k=SPEC.shortlist_k)
    assert [h.whale_id for h in shortlist] == ["A", "B", "C"]  # the embedding prefers A
    assert [e.whale_id for e in _rank("embedding", gallery, None, None, shortlist, BRUTE)] == ["A", "B", "C"]
    matcher = LocalMatcher(gallery, BRUTE)
    fused = _rank("fused", gallery, matcher, query, shortlist, BRUTE, explain=True)
    assert [e.whale_id for e in fused][0] == "B"
    b = fused[0]
    assert b.inliers >= 60 and b.cosine == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert b.score == b.fused_score == pytest.approx(fused_score(b.cosine, b.inliers, SPEC.fusion), abs=1e-12)
    assert b.local_score == pytest.approx(local_score(b.inliers, SPEC.calibration), abs=1e-12)
    assert b.image_id == gallery.store.images_of("B")[0].image_id
    # explanation pairs in photo pixels: gallery point = WARP(query point) + the frame offset (60, 25)
    predicted = b.pairs[:, 0] @ WARP[:, :2].T + WARP[:, 2] + np.array([60.0, 25.0])
    assert b.pairs.shape == (b.inliers, 2, 2)
    assert np.median(np.linalg.norm(predicted - b.pairs[:, 1], axis=1)) < 1.5
    assert all(e.inliers <= 8 for e in fused[1:])
    assert [e.score for e in fused] == sorted((e.score for e in fused), reverse=True)

    local = _rank("local", gallery, matcher, query, shortlist, BRUTE)
    assert [e.whale_id for e in local][0] == "B" and local[0].pairs is None
    assert local[0].score == local[0].local_score and local[0].cosine is None
    info = matcher.cache_info()
    assert info["misses"] == 4 and info["hits"] == 4  # each photo decoded once, then cached


def test_pure_rankers_with_hand_set_coefficients(gallery, query):
    [shortlist] = gallery.search(E[0], k=3)
    matcher = LocalMatcher(gallery, SPEC)
    matches = matcher.score_identities(query, [h.identity_id for h in shortlist])
    c_id = gallery.store.identity_id("C")
    assert matches[c_id].photos == 2  # C was compared through both photos
    manifest = SimpleNamespace(local_features=SPEC)
    names = {h.identity_id: h.whale_id for h in shortlist}
    ev = modes.Evidence(names, shortlist, matches)
    # embedding only: the fusion reduces to the embedding ranking
    assert [e.whale_id for e in modes.rank("fused", ev, manifest, params=(10.0, 0.0, 0.0))] == ["A", "B", "C"]
    # a local weight of 0 would keep A; with the default 1 B wins
    assert [e.whale_id for e in modes.rank("fused", ev, manifest, params=(4.0, 1.0, -5.0))][0] == "B"
    del names[c_id]  # an identity that may not be answered is skipped
    ev = modes.Evidence(names, shortlist, matches)
    assert [e.whale_id for e in modes.rank("local", ev, manifest, params=(1.0, -3.0))] == ["B", "A"]


class _FakeStore:
    """Stands in for ``GalleryStore``: image 7 of identity 1, whose blob can be swapped."""

    path = "fake.sqlite"

    def __init__(self, blob: bytes):
        self.blob = blob

    def local_features_of(self, identity_ids):
        return [(7, 1, self.blob)] if 1 in identity_ids else []


class _FakeGallery:
    def __init__(self, blob: bytes):
        self.store = _FakeStore(blob)


def test_cache_is_keyed_by_image_id_and_blob_checksum(extractor, query):
    # Stores created before ids became AUTOINCREMENT reuse the largest image id after a deletion:
    # the same id with another blob must not be served from the cache.
    g = _FakeGallery(extractor.encode_photo(texture(300, 480, seed=10)))
    matcher = LocalMatcher(g, SPEC, cache_size=8)
    first = matcher.score_identities(query, [1])[1]
    assert matcher.score_identities(query, [1])[1].inliers == first.inliers
    assert matcher.cache_info() == {"size": 1, "capacity": 8, "hits": 1, "misses": 1}
    g.store.blob = extractor.encode_photo(WARPED)
    second = matcher.score_identities(query, [1])[1]
    assert first.image_id == second.image_id == 7
    assert first.inliers <= 8 and second.inliers >= 60
    assert matcher.cache_info()["misses"] == 2
    no_cache = LocalMatcher(g, SPEC, cache_size=0)
    assert no_cache.score_identities(query, [1])[1].inliers == second.inliers
    assert no_cache.cache_info()["size"] == 0


def test_missing_or_corrupt_blobs_count_as_no_keypoints(tmp_path, query):
    g = Gallery(tmp_path / "g", dim=4)
    g.add("A", [NewImage(sha256="a0", embedding=E[0], local_features=None)])
    g.add("B", [NewImage(sha256="b0", embedding=E[1], local_features=b"garbage")])
    matcher = LocalMatcher(g, SPEC)
    ids = [g.store.identity_id("A"), g.store.identity_id("B")]
    out = matcher.score_identities(query, ids)
    assert out[ids[0]].photos == 0 and out[ids[0]].image_id is None and out[ids[0]].inliers == 0
    assert out[ids[1]].photos == 1 and out[ids[1]].inliers == 0
    assert matcher.corrupt_image_ids == {g.store.images_of("B")[0].image_id}
    g.close()


def test_extractor_and_parallel_matcher_are_thread_safe(gallery, extractor, query):
    images = [QUERY, WARPED, texture(300, 480, seed=2), water(300, 480, seed=4)]
    serial = [extractor.encode_photo(img) for img in images]
    results: dict[int, list[bytes]] = {}

    def work(t: int) -> None:
        results[t] = [extractor.encode_photo(img) for img in images]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == serial for r in results.values())

    [shortlist] = gallery.search(E[0], k=3)
    ids = [h.identity_id for h in shortlist]
    pooled = LocalMatcher(gallery, SPEC, workers=2)
    try:
        got = pooled.score_identities(query, ids)
    finally:
        pooled.close()
    want = LocalMatcher(gallery, SPEC).score_identities(query, ids)
    assert {i: (m.inliers, m.image_id) for i, m in got.items()} == {i: (m.inliers, m.image_id) for i, m in want.items()}
