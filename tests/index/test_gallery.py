"""The gallery on hand-made vectors whose answers can be worked out by hand."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from core.errors import (
    CorruptArtifactError,
    InvalidIdentityError,
    ManifestMismatchError,
    UnknownIdentityError,
    UnknownImageError,
)
from index.gallery import INDEX_FILE, STORE_FILE, Gallery
from index.store import NewImage
from index.vectors import VectorIndex

E = np.eye(4, dtype=np.float32)
S2 = np.float32(1 / np.sqrt(2))


def img(vec, sha):
    v = np.asarray(vec, np.float32)
    return NewImage(sha256=sha, embedding=v / np.linalg.norm(v))


def build(tmp_path, scoring="centroid", factory="IDMap2,Flat"):
    g = Gallery(tmp_path / "g", dim=4, factory=factory, embedding_scoring=scoring)
    g.add("A", [img(E[0], "a0"), img(E[1], "a1")])  # centroid (1, 1, 0, 0) / sqrt 2
    g.add("B", [img(E[2], "b0")])  # centroid e2
    g.add("C", [img(E[0] + E[2], "c0")])  # centroid (1, 0, 1, 0) / sqrt 2
    return g


def names(hits):
    return [h.whale_id for h in hits]


def test_centroid_search_by_hand(tmp_path):
    g = build(tmp_path)
    assert len(g) == 3
    [hits] = g.search(E[0], k=5)
    # cos(e0, A) = cos(e0, C) = 1/sqrt2 (a tie, ordered by whale id), cos(e0, B) = 0
    assert names(hits) == ["A", "C", "B"]
    np.testing.assert_allclose([h.score for h in hits], [S2, S2, 0.0], atol=1e-6)
    [hits] = g.search(E[2], k=2)
    assert names(hits) == ["B", "C"]
    np.testing.assert_allclose([h.score for h in hits], [1.0, S2], atol=1e-6)
    np.testing.assert_allclose(g.centroid("A"), [S2, S2, 0, 0], atol=1e-6)


def test_image_max_scores_best_photo(tmp_path):
    g = build(tmp_path, scoring="image_max")
    [hits] = g.search(E[0], k=3)
    # A's photo e0 matches exactly (1.0), C's photo scores 1/sqrt2, B's 0
    assert names(hits) == ["A", "C", "B"]
    np.testing.assert_allclose([h.score for h in hits], [1.0, S2, 0.0], atol=1e-6)
    assert g.n_vectors == 4


@pytest.mark.parametrize("scoring", ["centroid", "image_max"])
def test_add_remove_and_duplicates(tmp_path, scoring):
    g = build(tmp_path, scoring=scoring)
    res = g.add("B", [img(E[3], "b1"), img(E[2], "b0")])  # b0 again: same sha -> not added twice
    assert len(res.image_ids) == 1 and len(res.duplicate_image_ids) == 1 and res.images_total == 2
    [hits] = g.search(E[3], k=1)
    assert names(hits) == ["B"]
    if scoring == "centroid":  # B's centroid is now (e2 + e3) / sqrt 2
        assert hits[0].score == pytest.approx(float(S2), abs=1e-6)
    g.remove_image("B", res.image_ids[0])
    [hits] = g.search(E[3], k=3)
    assert all(h.score == pytest.approx(0.0, abs=1e-6) for h in hits)
    g.remove_identity("A")
    assert sorted(g.whale_ids()) == ["B", "C"]
    [hits] = g.search(E[1], k=5)
    assert "A" not in names(hits) and len(hits) == 2
    # removing the last photo of an identity removes the identity
    only = g.store.images_of("C")[0].image_id
    assert g.remove_image("C", only) is True
    assert g.whale_ids() == ["B"]
    with pytest.raises(UnknownIdentityError):
        g.remove_identity("A")
    with pytest.raises(UnknownImageError):
        g.remove_image("B", 999)


def test_flipped_identities_are_never_answered(tmp_path):
    g = Gallery(tmp_path / "g", dim=4)
    g.add("A", [img(E[0], "a0")], flipped=[img(E[1], "a0")])
    g.add("B", [img(E[2], "b0")], flipped=[img(E[3], "b0")])
    assert len(g) == 2 and g.n_vectors == 4
    [hits] = g.search(E[1], k=5)  # nearest is A:flipped (score 1), which is skipped
    assert names(hits) == ["A", "B"]
    assert hits[0].score == pytest.approx(0.0, abs=1e-6)
    g.remove_identity("A")  # takes its mirror with it
    assert g.n_vectors == 2


def test_whale_id_rules(tmp_path):
    g = Gallery(tmp_path / "g", dim=4)
    for bad in ["", "new_whale", "a b", "x" * 65, "../etc", "w:flipped"]:
        with pytest.raises(InvalidIdentityError):
            g.add(bad, [img(E[0], "z")])
    assert g.store.next_auto_whale_id() == "whale-00001"
    g.add("whale-00002", [img(E[0], "z")])
    assert g.store.next_auto_whale_id() == "whale-00003"


@pytest.mark.parametrize("factory", ["IDMap2,Flat", "HNSW32", "IVF2,Flat"])
def test_round_trip_same_top5(tmp_path, factory):
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(300, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    g = Gallery(tmp_path / "g", dim=16, factory=factory)
    for i in range(60):
        g.add(f"w{i:03d}", [NewImage(f"s{i}-{j}", vecs[i * 5 + j]) for j in range(5)])
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    before = g.search(queries, 5)
    g.save()
    g.close()
    again = Gallery(tmp_path / "g", dim=16, factory=factory)
    after = again.search(queries, 5)
    assert [names(h) for h in before] == [names(h) for h in after]
    # the reloaded index came from the snapshot, not from a rebuild
    assert (tmp_path / "g" / INDEX_FILE).exists()
    if factory != "HNSW32":  # exact search: the same as brute force over the centroids
        cents = np.stack([again.centroid(f"w{i:03d}") for i in range(60)])
        brute = np.argsort(-(queries @ cents.T), axis=1)[:, :5]
        assert [names(h) for h in after] == [[f"w{i:03d}" for i in row] for row in brute]


def test_stale_snapshot_is_rebuilt_from_the_store(tmp_path):
    g = build(tmp_path)
    g.save()
    g.add("D", [img(E[3], "d0")])  # changes the store after the snapshot
    g.close()
    again = Gallery(tmp_path / "g", dim=4)
    [hits] = again.search(E[3], k=1)
    assert names(hits) == ["D"]


def test_truncated_files_name_the_file(tmp_path):
    g = build(tmp_path)
    g.save()
    g.close()
    index_path = tmp_path / "g" / INDEX_FILE
    data = index_path.read_bytes()
    index_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptArtifactError, match=INDEX_FILE) as info:
        Gallery(tmp_path / "g", dim=4)
    assert info.value.path == index_path
    index_path.unlink()
    store_path = tmp_path / "g" / STORE_FILE
    # checkpoint the WAL into the main file, then cut the file short
    con = sqlite3.connect(store_path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = store_path.read_bytes()
    store_path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptArtifactError, match=STORE_FILE):
        Gallery(tmp_path / "g", dim=4)


def test_store_refuses_other_dimension_or_model(tmp_path):
    Gallery(tmp_path / "g", dim=4, model_sha256="a" * 64).close()
    with pytest.raises(ManifestMismatchError, match="4-d"):
        Gallery(tmp_path / "g", dim=8)
    with pytest.raises(ManifestMismatchError, match="another model"):
        Gallery(tmp_path / "g", dim=4, model_sha256="b" * 64)


def test_vector_index_checks_input():
    vi = VectorIndex(4)
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        vi.upsert([1], np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        vi.upsert([1], np.full((1, 4), np.nan, np.float32))
    scores, ids = vi.search(E[0], 2)  # empty index: id -1 means no result
    assert ids.tolist() == [[-1, -1]]
    with pytest.raises(ValueError, match="FAISS factory"):
        VectorIndex(4, "NoSuchIndex42")


def test_searches_run_while_enrolling(tmp_path):
    g = build(tmp_path)
    expected = names(g.search(E[2], k=3)[0])
    errors = []

    def searcher():
        for _ in range(200):
            got = names(g.search(E[2], k=3)[0])
            if got[:1] != expected[:1]:
                errors.append(got)

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(30):
        g.add(f"n{i}", [img(E[1] + 0.01 * i * E[3], f"n{i}")])
    for t in threads:
        t.join()
    assert not errors
    assert len(g) == 33


def serving_and_cli(tmp_path, refresh_interval_s):
    """The gallery a server holds open, and a second one on the same folder (another process) that
    has enrolled whale D (photo e3) and is still open."""
    server = build(tmp_path)
    server.refresh_interval_s = refresh_interval_s
    cli = Gallery(tmp_path / "g", dim=4)
    cli.add("D", [img(E[3], "d0")])
    return server, cli


def test_changes_from_another_process_are_picked_up_and_never_hidden_by_a_snapshot(tmp_path):
    """The service and `whaleid build-gallery` may open one gallery folder at once (two Gallery objects
    here, as two processes would): neither may hide the other's whales."""
    # no periodic check: only the generation bookkeeping is tested
    server, cli = serving_and_cli(tmp_path, refresh_interval_s=3600.0)
    cli.save()
    cli.close()
    assert "D" not in server.whale_ids()  # not checked yet
    # the server snapshots its index at shutdown, without D: the snapshot must be tagged stale
    server.save()
    server.close()
    reopened = Gallery(tmp_path / "g", dim=4)
    [hits] = reopened.search(E[3], k=1)
    assert names(hits) == ["D"] and hits[0].score == pytest.approx(1.0)
    reopened.close()


def test_own_change_after_another_process_changed_the_store_reloads_everything(tmp_path):
    server, cli = serving_and_cli(tmp_path, refresh_interval_s=3600.0)
    cli.close()
    server.add("E", [img(E[1] + E[3], "e0")])  # generation moved by 2: the server reloads, D included
    assert server.whale_ids() == ["A", "B", "C", "D", "E"]
    [hits] = server.search(E[3], k=2)
    assert names(hits) == ["D", "E"]
    np.testing.assert_allclose([h.score for h in hits], [1.0, S2], atol=1e-6)
    server.close()


def test_periodic_refresh_finds_a_whale_enrolled_elsewhere(tmp_path):
    server, other = serving_and_cli(tmp_path, refresh_interval_s=0.0)
    other.remove_identity("B")
    other.close()
    [hits] = server.search(E[3], k=5)
    assert names(hits) == ["D", "A", "C"]  # B is gone; A and C score 0 against e3, ordered by id
    assert server.refresh() is False  # nothing new since
    server.close()
