"""HotSpotter's LNBNN descriptor index: votes by hand, RootSIFT by hand, the index kept in step with
the store, and the brute-force matcher as the reference on a small hand-made gallery."""

from __future__ import annotations

import math
import threading
from types import SimpleNamespace

import faiss
import numpy as np
import pytest
from test_local import QUERY, WARP, WARPED, texture, water

from core.manifest import LocalFeatureSpec
from index import modes
from index.gallery import Gallery
from index.lnbnn import ID_SHIFT, DescriptorIndex, auto_factory, lnbnn_votes, rootsift
from index.local import (
    LocalFeatureExtractor,
    LocalMatcher,
    calibrate_from_pairs,
    decode_features,
    fused_score,
    fused_scores,
    fusion_for_map5,
    local_score,
)
from index.store import NewImage

SPEC = LocalFeatureSpec()
BRUTE = SPEC.model_copy(update={"matcher": "brute_force"})


def did(image_id: int, keypoint: int) -> int:
    return (image_id << ID_SHIFT) + keypoint


def test_rootsift_by_hand():
    d = np.zeros((3, 128), np.uint8)
    d[0, 0] = 4  # one non-zero bin -> 1.0
    d[1, :4] = 9  # four equal bins: each sqrt(1/4) = 0.5
    out = rootsift(d)  # row 2 stays zero
    assert out.dtype == np.float32 and out.shape == (3, 128)
    assert out[0, 0] == 1.0 and out[0, 1:].sum() == 0
    np.testing.assert_allclose(out[1, :4], 0.5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(out[:2], axis=1), 1.0, atol=1e-6)
    assert not out[2].any()


def test_lnbnn_votes_by_hand():
    # k = 2: two voting neighbours, the third is the normaliser.
    dist = np.array(
        [
            [0.1, 0.3, 0.5],  # photo 1 gets 0.5-0.1 = 0.4, photo 2 gets 0.5-0.3 = 0.2
            [0.2, 0.25, 0.3],  # photo 2 twice: only its nearest votes, 0.3-0.2 = 0.1
            [0.6, 0.7, 0.4],  # normaliser nearer than the neighbours (approximate search): no vote
            [0.4, 1.0, 0.0],  # no normaliser (-1): sqrt(2) stands in; photo 3 gets sqrt(2)-0.4, the -1 none
        ]
    )
    ids = np.array(
        [
            [did(1, 0), did(2, 3), did(1, 5)],
            [did(2, 1), did(2, 2), did(3, 0)],
            [did(4, 0), did(4, 1), did(5, 0)],
            [did(3, 7), -1, -1],
        ]
    )
    photos, scores = lnbnn_votes(dist, ids, 2)
    assert photos.tolist() == [3, 1, 2]
    np.testing.assert_allclose(scores, [math.sqrt(2) - 0.4, 0.4, 0.2 + 0.1], atol=1e-12)
    with pytest.raises(ValueError):
        lnbnn_votes(dist, ids, 3)
    empty = lnbnn_votes(np.zeros((0, 3)), np.zeros((0, 3), np.int64), 2)
    assert empty[0].shape == (0,) and empty[1].shape == (0,)


def test_auto_factory_grows_with_the_gallery():
    assert auto_factory(1_999) == "IDMap2,Flat"
    assert auto_factory(2_008) == "IVF32,PQ64x4fs"  # sqrt(2008) = 44.8 -> 32 (2^5.49)
    assert auto_factory(100_000) == "IVF256,PQ64x4fs"  # sqrt(1e5) = 316 -> 256
    assert auto_factory(800_000) == "IVF1024,PQ64x4fs"  # sqrt(8e5) = 894 -> 1024
    assert auto_factory(2_000_000) == "IVF1024,PQ64x4fs"  # sqrt(2e6) = 1414 -> 1024 (2^10.47): still flat
    # past 1,024 flat lists: 2 sqrt(n) lists behind an HNSW coarse quantiser, at most 16,384
    assert auto_factory(2_200_000) == "IVF4096_HNSW32,PQ64x4fs"  # sqrt = 1483 (2^10.53); 2 sqrt = 2966 -> 2^11.53
    assert auto_factory(8_000_000) == "IVF4096_HNSW32,PQ64x4fs"  # 2 sqrt(8e6) = 5657 -> 4096 (2^12.47)
    assert auto_factory(40_000_000) == "IVF16384_HNSW32,PQ64x4fs"  # 2 sqrt(4e7) = 12649 -> 16384 (2^13.63)
    assert auto_factory(4_000_000_000) == "IVF16384_HNSW32,PQ64x4fs"  # 126,491 -> 131,072, capped


def _photo(sha: str, emb, pixels, extractor, box=None) -> NewImage:
    v = np.asarray(emb, np.float32)
    return NewImage(sha, v / np.linalg.norm(v), box_xyxy_px=box, local_features=extractor.encode_photo(pixels, box))


@pytest.fixture
def six_whales(tmp_path):
    """Six whales of one photo each (random textures, blank water); W3's photo is the query warped
    (rotated 15 degrees, scaled 0.8, cropped)."""
    extractor = LocalFeatureExtractor(SPEC)
    g = Gallery(tmp_path / "g", dim=4)
    e = np.eye(4, dtype=np.float32)
    pixels = {
        "W0": texture(300, 480, seed=2),
        "W1": texture(260, 500, seed=3),
        "W2": water(300, 480, seed=4),
        "W3": WARPED,
        "W4": texture(320, 460, seed=11),
        "W5": texture(300, 480, seed=12),
    }
    for i, (wid, px) in enumerate(pixels.items()):
        g.add(wid, [_photo(wid, e[i % 4] + 0.1 * e[(i + 1) % 4], px, extractor)])
    yield g, extractor, pixels
    g.close()


def _decode(image_id, blob):
    return decode_features(blob).descriptors


def test_votes_find_the_warped_copy_and_follow_the_store(six_whales, tmp_path):
    g, extractor, pixels = six_whales
    index = DescriptorIndex(g.store, _decode, "auto", k=4)
    query = extractor.extract(QUERY)
    votes = index.votes(query.descriptors)
    counts = {w: len(extractor.extract(px)) for w, px in pixels.items()}
    assert counts["W0"] == SPEC.n_keypoints and counts["W2"] < 20  # blank water has a few keypoints
    assert len(index) == 6 and index.n_descriptors == sum(counts.values())
    assert index.built_factory == auto_factory(index.n_descriptors) and index.built_factory.startswith("IVF")
    w3 = g.store.identity_id("W3")
    assert votes.identity_ids[0] == w3
    assert votes.scores[0] > 5 * votes.scores[1]  # the true photo dominates the votes

    # another process deletes W3 and adds W6 (the query itself): the index follows the store
    other = Gallery(tmp_path / "g", dim=4)
    other.remove_identity("W3")
    other.add("W6", [_photo("W6", np.ones(4), QUERY, extractor)])
    other.close()
    votes = index.votes(query.descriptors)
    w6 = g.store.identity_id("W6")
    assert w3 not in votes.identity_ids.tolist() and votes.identity_ids[0] == w6
    assert len(index) == 6 and index.n_descriptors == sum(counts.values()) - counts["W3"] + len(query)

    # an empty query or an empty gallery gives no votes, not an error
    assert len(index.votes(np.zeros((0, 128), np.uint8)).image_ids) == 0


def test_ivf_pq_factory_trains_once_it_can_and_removes_by_id_range(six_whales):
    g, extractor, _ = six_whales
    # 2,000 descriptors: enough to train 8 lists (39 each), too few for 64 (exact search meanwhile)
    big = DescriptorIndex(g.store, _decode, "IVF64,PQ16x4fs", k=2, nprobe=8)
    big.votes(extractor.extract(QUERY).descriptors)
    assert big.built_factory == "IDMap2,Flat"
    index = DescriptorIndex(g.store, _decode, "IVF8,PQ64x4fs", k=4, nprobe=8)
    votes = index.votes(extractor.extract(QUERY).descriptors)
    total = index.n_descriptors
    assert index.built_factory == "IVF8,PQ64x4fs" and 2000 <= total < 2020  # 5 x 400 + a few on water
    assert votes.identity_ids[0] == g.store.identity_id("W3")
    size = index.memory_bytes()
    assert total * 40 <= size < total * 40 + 200_000  # 32-byte codes + 8-byte ids, plus quantisers
    g.remove_identity("W3")
    votes = index.votes(extractor.extract(QUERY).descriptors)
    assert index.n_descriptors == total - SPEC.n_keypoints  # W3's 400 are gone
    assert set(votes.identity_ids.tolist()) <= {g.store.identity_id(w) for w in ("W0", "W1", "W2", "W4", "W5")}
    with pytest.raises(ValueError, match="invalid FAISS factory"):
        DescriptorIndex(g.store, _decode, "IVF8,NotAnIndex")


def test_hnsw_coarse_quantiser_builds_searches_and_counts_its_graph(six_whales):
    """The factory ``auto`` takes past 2,048 lists, at a size this test can train (16 lists)."""
    g, extractor, _ = six_whales
    flat = DescriptorIndex(g.store, _decode, "IVF16,PQ64x4fs", k=4, nprobe=4)
    hnsw = DescriptorIndex(g.store, _decode, "IVF16_HNSW32,PQ64x4fs", k=4, nprobe=4)
    query = extractor.extract(QUERY).descriptors
    a, b = flat.votes(query), hnsw.votes(query)
    assert hnsw.built_factory == "IVF16_HNSW32,PQ64x4fs"
    assert a.identity_ids[0] == b.identity_ids[0] == g.store.identity_id("W3")
    # the same codes and ids; the HNSW graph over 16 centroids adds its neighbour slots (int32) and offsets
    graph = faiss.downcast_index(faiss.extract_index_ivf(hnsw._index).quantizer).hnsw
    assert hnsw.memory_bytes() - flat.memory_bytes() == graph.neighbors.size() * 4 + graph.offsets.size() * 8 > 0
    total, w3 = hnsw.n_descriptors, g.store.identity_id("W3")
    g.remove_identity("W3")  # removal by id range works behind the graph too
    assert w3 not in hnsw.votes(query).identity_ids.tolist() and hnsw.n_descriptors == total - SPEC.n_keypoints


def test_saved_index_is_adopted_brought_in_step_and_rebuilt_when_it_does_not_fit(six_whales, tmp_path, caplog):
    g, extractor, _ = six_whales
    query = extractor.extract(QUERY).descriptors
    path = tmp_path / "cache" / "descriptors.faiss"
    first = DescriptorIndex(g.store, _decode, "auto", k=4, path=path, fingerprint="sift/400/512")
    want = first.votes(query)
    assert first.origin == "built" and path.is_file() and path.with_name("descriptors.faiss.json").is_file()
    assert first.save() is None  # nothing changed since the build wrote it

    again = DescriptorIndex(g.store, _decode, "auto", k=4, path=path, fingerprint="sift/400/512")
    got = again.votes(query)
    assert again.origin == "loaded" and again.built_factory == first.built_factory
    np.testing.assert_array_equal(got.image_ids, want.image_ids)
    np.testing.assert_allclose(got.scores, want.scores)

    # the store moves on while nobody runs: the next start adopts the file and adds only the new photo
    g.add("W6", [_photo("W6", np.ones(4), QUERY, extractor)])
    later = DescriptorIndex(g.store, _decode, "auto", k=4, path=path, fingerprint="sift/400/512")
    votes = later.votes(query)
    assert later.origin == "loaded" and votes.identity_ids[0] == g.store.identity_id("W6")
    assert later.n_descriptors == first.n_descriptors + len(query)
    assert later.save() == path  # the grown index replaces the file

    # other descriptors (another extractor setting) or a damaged file: rebuilt, never an error
    other = DescriptorIndex(g.store, _decode, "auto", k=4, path=path, fingerprint="sift/800/512")
    assert other.votes(query).identity_ids[0] == g.store.identity_id("W6") and other.origin == "built"
    path.write_bytes(b"not a faiss index")
    broken = DescriptorIndex(g.store, _decode, "auto", k=4, path=path, fingerprint="sift/800/512")
    with caplog.at_level("WARNING", logger="index.lnbnn"):
        assert broken.votes(query).identity_ids[0] == g.store.identity_id("W6")
    assert broken.origin == "built" and "unreadable" in caplog.text


def _rank(mode, gallery, matcher, query, shortlist=(), k=5, explain=False, embedding=None):
    """A scoring mode's ranking through the registry, as the service runs it."""
    manifest = SimpleNamespace(local_features=matcher.spec)
    m = modes.get(mode)
    ev = modes.gather(gallery, shortlist, embedding, matcher, query, m.match_scope(manifest))
    return modes.rank(m, ev, manifest, k, explain)


def test_lnbnn_and_brute_force_rank_the_same(six_whales):
    """The brute-force matcher is the reference: with verification of only the 2 best-voted photos
    (of 6), LNBNN names the same whale first, with the same inliers and evidence."""
    g, extractor, _ = six_whales
    lnbnn = LocalMatcher(g, SPEC.model_copy(update={"verify_k": 2}))
    brute = LocalMatcher(g, BRUTE)
    for pixels, truth in ((QUERY, "W3"), (texture(300, 480, seed=12), "W5")):
        query = extractor.extract(pixels)
        want = _rank("local", g, brute, query, explain=True)
        got = _rank("local", g, lnbnn, query, explain=True)
        assert want[0].whale_id == got[0].whale_id == truth
        assert got[0].inliers == want[0].inliers and got[0].image_id == want[0].image_id
        np.testing.assert_array_equal(got[0].pairs, want[0].pairs)
        assert got[0].lnbnn > 0 and want[0].lnbnn is None
        assert all(e.inliers <= 8 for e in got[1:])  # nobody else matches
    # the evidence of the warped copy: gallery point = WARP(query point)
    pairs = _rank("local", g, lnbnn, extractor.extract(QUERY), k=1, explain=True)[0].pairs
    predicted = pairs[:, 0] @ WARP[:, :2].T + WARP[:, 2]
    assert np.median(np.linalg.norm(predicted - pairs[:, 1], axis=1)) < 1.5


def test_fused_joins_lnbnn_candidates_to_a_shortlist_that_missed_the_whale(six_whales):
    g, extractor, _ = six_whales
    query = extractor.extract(QUERY)
    w3 = g.store.identity_id("W3")
    embedding = np.array([0.0, 1.0, 0.0, 0.0], np.float32)  # nearest to W1 and W5, orthogonal to W3
    [shortlist] = g.search(embedding, k=2)
    assert w3 not in [h.identity_id for h in shortlist]
    brute = _rank("fused", g, LocalMatcher(g, BRUTE), query, shortlist)
    assert "W3" not in [e.whale_id for e in brute]  # the weak shortlist hides the whale
    fused = _rank("fused", g, LocalMatcher(g, SPEC), query, shortlist, embedding=embedding)
    assert fused[0].whale_id == "W3" and fused[0].inliers >= 60
    # its cosine is the centroid's, as the embedding search would have scored it
    assert fused[0].cosine == pytest.approx(g.similarities(embedding, [w3])[w3], abs=1e-6)


def test_lnbnn_evidence_in_the_scores_and_calibration_by_hand():
    # local: sigmoid(a * log1p(inliers) + b + c * lnbnn); log1p(3) = log 4
    assert local_score(3, (1.0, -3.0, 2.0), lnbnn=0.5) == pytest.approx(1 / (1 + math.exp(-(math.log(4) - 2.0))))
    assert local_score(3, (1.0, -3.0), lnbnn=0.5) == pytest.approx(1 / (1 + math.exp(-(math.log(4) - 3.0))))
    # fused: sigmoid(w_e * cos + w_l * log1p(inliers) + bias + w_v * lnbnn)
    want = 1 / (1 + math.exp(-(2.0 * 0.5 + math.log(4) - 4.0 + 3.0 * 0.25)))
    assert fused_score(0.5, 3, (2.0, 1.0, -4.0, 3.0), lnbnn=0.25) == pytest.approx(want)
    # the calibration fits one evidence log1p(inliers) + weight * lnbnn: c = a * weight, w_v = w_l * weight
    rng = np.random.default_rng(0)
    same = rng.random(400) < 0.3
    inliers = np.where(same, rng.integers(5, 60, 400), rng.integers(0, 12, 400))
    lnbnn = np.where(same, rng.uniform(0.2, 2.0, 400), rng.uniform(0.0, 0.4, 400))
    cos = np.where(same, rng.uniform(0.3, 0.9, 400), rng.uniform(0.0, 0.5, 400))
    cal = calibrate_from_pairs(inliers, same, cos, lnbnn=lnbnn, lnbnn_weight=4.0)
    a, b, c = cal.calibration
    assert a > 0 and c == pytest.approx(4.0 * a)
    w_e, w_l, bias, w_v = cal.fusion
    assert w_e > 0 and w_l > 0 and w_v == pytest.approx(4.0 * w_l)
    plain = calibrate_from_pairs(inliers, same, cos)
    assert len(plain.calibration) == 2 and len(plain.fusion) == 3
    spec = LocalFeatureSpec(calibration=cal.calibration, fusion=cal.fusion)  # fits the manifest
    assert spec.calibration == cal.calibration and spec.fusion == cal.fusion


def test_fused_weight_is_chosen_for_the_ranking_by_hand():
    """Three queries worked by hand. Q0 (whale A): A has cosine 0.9 and no inliers, B cosine 0.1 and 3
    inliers (e = log 4 = 1.386): A leads once 0.9 w > 0.1 w + 1.386, i.e. w > 1.73. Q1 (whale C): C has
    cosine 0.2 and 20 inliers (e = log 21 = 3.045), D cosine 0.8: C leads while 0.6 w < 3.045, w < 5.07.
    Q2 is a new whale (E: cosine 0.3, 1 inlier; F: cosine 0.2). The smallest weight of the grid that ranks
    both known whales first is 2.0 (1.5 puts B before A); new_whale then goes first for Q2 at a threshold
    between its best score 0.6 + log 2 = 1.29 and the known queries' 1.8 and 3.44: MAP@5 1."""
    cos = [0.9, 0.1, 0.2, 0.8, 0.3, 0.2]
    inliers = [0, 3, 20, 0, 1, 0]
    same = [True, False, True, False, False, False]
    query = [0, 0, 1, 1, 2, 2]
    fusion, w, map5 = fusion_for_map5(cos, inliers, same, query, [False, False, True])
    assert (w, map5) == (2.0, 1.0)
    a = fusion[1]
    assert len(fusion) == 3 and a > 0 and fusion[0] == pytest.approx(2.0 * a)
    # the scores rank as the weight does: A above B for Q0, C above D for Q1
    z = fused_scores(cos, inliers, fusion)
    assert z[0] > z[1] and z[2] > z[3]
    # with LNBNN scores the evidence is log1p(inliers) + 4 lnbnn, and w_v = 4 a
    fusion4, w4, _ = fusion_for_map5(cos, inliers, same, query, [False, False, True], lnbnn=[0.0] * 6)
    assert w4 == 2.0 and len(fusion4) == 4 and fusion4[3] == pytest.approx(4.0 * fusion4[1])
    with pytest.raises(ValueError, match="genuine and impostor"):
        fusion_for_map5(cos, inliers, [False] * 6, query, [False, False, True])
    with pytest.raises(ValueError, match="query indices"):
        fusion_for_map5(cos, inliers, same, [0, 0, 1, 1, 2, 3], [False, False, True])


def test_queries_do_not_wait_behind_a_sync_in_progress(six_whales, tmp_path):
    g, extractor, _ = six_whales
    index = DescriptorIndex(g.store, _decode, "auto", k=4)
    query = extractor.extract(QUERY)
    assert index.votes(query.descriptors).identity_ids[0] == g.store.identity_id("W3")
    g.add("W6", [_photo("W6", np.ones(4), QUERY, extractor)])  # the store moves on
    index._mutate.acquire()  # as if another thread were rebuilding for minutes
    try:
        result = {}
        worker = threading.Thread(target=lambda: result.update(v=index.votes(query.descriptors)))
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive()  # answered from the index as it is
        assert g.store.identity_id("W6") not in result["v"].identity_ids.tolist()
    finally:
        index._mutate.release()
    assert index.votes(query.descriptors).identity_ids[0] == g.store.identity_id("W6")
