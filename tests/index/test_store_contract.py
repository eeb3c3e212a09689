"""The gallery store's contract (:class:`index.store.GalleryStore`), run against every backend.

A new backend adds one entry to ``BACKENDS`` (a factory opening a store at a fresh location and
reopening it) and must pass this whole suite. Backend-specific faults (SQLite's write lock, its error
codes) are tested beside the backend (``test_store_faults.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import UnknownIdentityError, UnknownImageError
from index.store import GalleryStore, NewImage, flipped_id, open_store

DIM = 4


def _sqlite(folder, **kw):
    return open_store(folder / "g.sqlite", DIM, **kw)


def _postgres(folder, **kw):
    from pg_cluster import database_for  # a throw-away cluster; skips with the reason when absent

    return open_store(database_for(folder), DIM, **kw)


BACKENDS = {"sqlite": _sqlite, "postgres": _postgres}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path):
    """``open(**kw)`` opens the same store again (a second handle, as another replica or a restart)."""
    opened = []

    def open_(**kw):
        s = BACKENDS[request.param](tmp_path, **kw)
        opened.append(s)
        return s

    yield open_
    for s in opened:
        s.close()


def img(sha: str, vec, **kw) -> NewImage:
    v = np.asarray(vec, np.float32)
    return NewImage(sha, v / np.linalg.norm(v), **kw)


E = np.eye(DIM, dtype=np.float32)


def test_is_a_gallery_store(backend):
    store = backend()
    assert isinstance(store, GalleryStore) and store.dim == DIM and store.last_change is None


def test_add_skips_duplicates_and_raises_the_generation(backend):
    store = backend()
    g0 = store.generation
    out = store.add_images("W1", [img("a", E[0], source="a.jpg", box_xyxy_px=[1, 2, 3, 4]), img("b", E[1])])
    assert store.generation > g0 and len(out.added_ids) == 2 and out.added_positions == [0, 1]
    again = store.add_images("W1", [img("b", E[1]), img("c", E[2])])
    assert again.identity_id == out.identity_id and len(again.added_ids) == 1 and again.added_positions == [1]
    assert again.duplicate_ids == [out.added_ids[1]]
    recs = store.images_of("W1")
    assert [r.sha256 for r in recs] == ["a", "b", "c"] and recs[0].source == "a.jpg"
    assert recs[0].box_xyxy_px == [1, 2, 3, 4] and not recs[0].has_thumbnail
    ids, embs = store.embeddings_with_ids(out.identity_id)
    np.testing.assert_allclose(embs, E[:3], atol=1e-7)
    assert ids.tolist() == [r.image_id for r in recs] and ids.dtype == np.int64 and embs.dtype == np.float32


def test_a_second_handle_sees_every_change_and_ids_are_never_reused(backend):
    a = backend()
    first = a.add_images("W1", [img("a", E[0]), img("b", E[1])])
    b = backend()  # another process or replica on the same store
    assert b.images_of("W1")[0].sha256 == "a" and b.generation == a.generation
    a.remove_image("W1", first.added_ids[1])
    assert [r.sha256 for r in b.images_of("W1")] == ["a"]
    later = a.add_images("W2", [img("c", E[2])])
    assert later.added_ids[0] > max(first.added_ids)  # the deleted id does not come back
    ident_w1 = a.identity_id("W1")
    a.remove_identity("W1")
    assert not b.has_identity("W1")
    assert a.add_images("W1", [img("a", E[0])]).identity_id > max(ident_w1, later.identity_id)


def test_groups_are_stored_together_with_their_mirror(backend):
    store = backend()
    out = store.add_image_groups([("W1", [img("a", E[0])], False), (flipped_id("W1"), [img("a", E[3])], True)])
    assert len(out) == 2 and store.identity_names()[out[1].identity_id] == (flipped_id("W1"), True)
    assert store.count_identities() == 1 and store.count_identities(include_flipped=True) == 2
    assert store.count_images() == 1 and store.count_images(include_flipped=True) == 2
    assert store.photos_with_sha256("a") == [("W1", out[0].added_ids[0])]  # never the mirror
    assert store.stored_photos() == {("W1", "a")}
    # removing the whale removes its mirror too
    assert sorted(store.remove_identity("W1")) == sorted(o.identity_id for o in out)
    assert store.count_identities(include_flipped=True) == 0


def test_remove_image_deletes_an_emptied_identity_and_names_unknowns(backend):
    store = backend()
    out = store.add_images("W1", [img("a", E[0])])
    with pytest.raises(UnknownImageError):
        store.remove_image("W1", out.added_ids[0] + 100)
    with pytest.raises(UnknownIdentityError):
        store.remove_image("nobody", out.added_ids[0])
    ident, sha, deleted = store.remove_image("W1", out.added_ids[0])
    assert (ident, sha, deleted) == (out.identity_id, "a", True) and not store.has_identity("W1")
    with pytest.raises(UnknownIdentityError):
        store.images_of("W1")
    with pytest.raises(UnknownIdentityError):
        store.remove_identity("W1")


def test_listing_paging_and_auto_ids(backend):
    store = backend()
    for w in ("b-2", "a-1", "b-1", "c"):
        store.add_images(w, [img(w, E[0])])
    store.add_images(flipped_id("a-1"), [img("m", E[1])], flipped=True)
    page = store.list_identities(offset=1, limit=2)
    assert [r.whale_id for r in page] == ["b-1", "b-2"] and all(r.n_images == 1 for r in page)
    assert [r.whale_id for r in store.list_identities(prefix="b-")] == ["b-1", "b-2"]
    assert store.count_matching("b-") == 2 and store.count_matching() == 4
    first = store.next_auto_whale_id()
    store.add_images(first, [img("x", E[2])])
    assert first == "whale-00001" and store.next_auto_whale_id() == "whale-00002"


def test_snapshot_and_embeddings_agree(backend):
    store = backend()
    a = store.add_images("W1", [img("a", E[0]), img("b", E[1])])
    b = store.add_images("W2", [img("c", E[2])])
    gen, names, image_ids, identity_ids, embs = store.snapshot()
    assert gen == store.generation and names == store.identity_names()
    assert image_ids.tolist() == [*a.added_ids, *b.added_ids]
    assert identity_ids.tolist() == [a.identity_id, a.identity_id, b.identity_id]
    np.testing.assert_allclose(embs, E[:3], atol=1e-7)
    sel = store.all_embeddings_of_images([b.added_ids[0], a.added_ids[0]])
    assert sel[0].tolist() == [b.added_ids[0], a.added_ids[0]]
    assert store.image_ids_of(a.identity_id) == set(a.added_ids)
    assert store.embeddings_of(b.identity_id).shape == (1, DIM)
    assert store.image_owner(b.added_ids[0]) == "W2" and store.image_sha256(b.added_ids[0]) == "c"


def test_blobs_and_local_features(backend):
    store = backend()
    out = store.add_images("W1", [img("a", E[0], thumbnail=b"JPEG", local_features=b"WLF1xyz"), img("b", E[1])])
    a, b = out.added_ids
    assert store.image_blob(a, "thumbnail") == b"JPEG" and store.image_blob(b, "thumbnail") is None
    assert store.image_blob(a, "local_features") == b"WLF1xyz"
    assert store.images_of("W1")[0].has_thumbnail
    both = [(a, out.identity_id, b"WLF1xyz"), (b, out.identity_id, None)]
    assert sorted(store.local_features_of([out.identity_id])) == both
    assert store.local_feature_owners() == {a: out.identity_id}
    assert sorted(store.local_features_of_images([b, a, 999])) == both  # the unknown id is skipped


def test_model_and_dimension_are_recorded(backend):
    from core.errors import ManifestMismatchError

    store = backend(model_sha256="m1")
    store.add_images("W1", [img("a", E[0])])
    assert store.meta("dim") == str(DIM) and store.meta("model_sha256") == "m1"
    with pytest.raises(ManifestMismatchError):
        backend(model_sha256="m2")


def test_catalogue_operations(backend):
    from core.errors import IdentityConflictError, InvalidRequestError

    store = backend()
    a = store.add_image_groups(
        [
            ("A", [img("a", E[0], original=b"A-bytes", phash="00000000000000ff")], False),
            (flipped_id("A"), [img("a", E[3])], True),
        ],
        actor="key:abc",
    )[0]
    store.add_images("B", [img("b", E[1], metadata={"location": "Tonga", "taken_at": "2021-09-10"})])
    assert store.rename_identity("A", "A2", actor="key:abc") == a.identity_id
    assert store.has_identity(flipped_id("A2")) and not store.has_identity("A")
    with pytest.raises(IdentityConflictError):
        store.rename_identity("A2", "B")
    with pytest.raises(InvalidRequestError):
        store.merge_identities("B", "B")
    out = store.merge_identities("A2", "B")
    assert (
        out.moved_image_ids == a.added_ids and not store.has_identity("A2") and not store.has_identity(flipped_id("A2"))
    )
    assert {r.sha256 for r in store.images_of(flipped_id("B"))} == {"a"}
    moved = store.move_images("B", a.added_ids, "C")
    assert moved.created and not moved.source_deleted and [r.sha256 for r in store.images_of("C")] == ["a"]
    b_id = store.images_of("B")[0].image_id
    store.update_metadata("B", b_id, {"notes": "left nick", "location": None})
    assert store.images_of("B")[0].metadata == {"taken_at": "2021-09-10", "notes": "left nick"}
    assert store.photo_metadata() == [(b_id, store.identity_id("B"), {"taken_at": "2021-09-10", "notes": "left nick"})]
    assert store.photo_hashes() == [(a.added_ids[0], "C", "00000000000000ff")]
    assert store.original_of(a.added_ids[0]) == b"A-bytes" and store.original_of(b_id) is None
    rows = list(store.export_rows())
    assert [(w, r.sha256, o) for w, r, o in rows] == [("C", "a", b"A-bytes"), ("B", "b", None)]
    assert rows[0][1].has_original and not rows[1][1].has_original
    log = store.audit_log()
    assert [e.operation for e in log] == ["edit_metadata", "move_photos", "merge", "rename", "enrol", "enrol"]
    assert log[3].actor == "key:abc" and log[3].details == {"whale_id": "A", "new_whale_id": "A2"}
    assert store.count_audit() == 6 and [e.operation for e in store.audit_log(offset=4, limit=1)] == ["enrol"]


def test_trailing_edges_are_stored_per_photo(backend):
    store = backend()
    a = store.add_images("A", [img("a", E[0], edge=b"WTE1-a"), img("b", E[1])])
    c = store.add_images("C", [img("c", E[2], edge=b"WTE1-c")])
    assert store.edges_of([a.identity_id]) == [(a.added_ids[0], a.identity_id, b"WTE1-a")]
    assert sorted(store.edges_of([a.identity_id, c.identity_id])) == sorted(
        [(a.added_ids[0], a.identity_id, b"WTE1-a"), (c.added_ids[0], c.identity_id, b"WTE1-c")]
    )
    assert store.edges_of([]) == [] and store.edges_of([999]) == []
