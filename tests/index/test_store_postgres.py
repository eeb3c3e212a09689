"""The PostgreSQL store's own rules (the shared contract is ``test_store_contract.py``): replicas racing
each other, a lock held too long, the server going away and coming back, the schema check and the
change feed. Real servers only (``tests/pg_cluster.py``); skipped with the reason when PostgreSQL or
psycopg is missing."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from core.errors import StorageError, StoreBusyError, UnknownIdentityError

DIM = 4
E = np.eye(DIM, dtype=np.float32)


def img(sha: str, vec=E[0]):
    from index.store import NewImage

    return NewImage(sha, np.asarray(vec, np.float32))


@pytest.fixture
def url(tmp_path):
    from pg_cluster import database_for

    return database_for(tmp_path)


@pytest.fixture
def open_(url):
    from index.store import open_store

    opened = []

    def make(**kw):
        s = open_store(url, DIM, **kw)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def _together(*fns):
    """Run the functions in threads released at the same instant; return their results (or errors)."""
    start, out = threading.Barrier(len(fns)), [None] * len(fns)

    def run(i, fn):
        start.wait()
        try:
            out[i] = fn()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_two_replicas_enrolling_the_same_whale_and_photo_at_once(open_):
    a, b = open_(), open_()
    g0 = a.generation
    # 2 x 15 enrolments into the same new whale, each replica with its own photos plus one shared photo
    res = _together(
        lambda: [a.add_images("W", [img(f"a{i}"), img("same")]) for i in range(15)],
        lambda: [b.add_images("W", [img(f"b{i}"), img("same")]) for i in range(15)],
    )
    assert not any(isinstance(r, Exception) for r in res), res
    assert a.count_identities() == 1 and {o.identity_id for r in res for o in r} == {a.identity_id("W")}
    shas = [r.sha256 for r in a.images_of("W")]
    assert sorted(shas) == sorted([f"a{i}" for i in range(15)] + [f"b{i}" for i in range(15)] + ["same"])
    added_same = [o for r in res for o in r if 1 in o.added_positions]
    assert len(added_same) == 1  # the shared photo was stored by exactly one enrolment
    assert a.generation == g0 + 30  # every enrolment added a photo: one generation each, none lost


def test_auto_whale_ids_are_never_handed_out_twice(open_):
    a, b = open_(), open_()
    res = _together(
        lambda: [a.next_auto_whale_id() for _ in range(20)], lambda: [b.next_auto_whale_id() for _ in range(20)]
    )
    ids = res[0] + res[1]
    assert len(set(ids)) == 40 and sorted(ids) == [f"whale-{n:05d}" for n in range(1, 41)]


def test_a_delete_racing_enrolments_leaves_no_half_identity(open_):
    a, b = open_(), open_()
    a.add_images("W", [img("first")])

    def enrol():
        return [a.add_images("W", [img(f"x{i}")]).identity_id for i in range(20)]

    def delete():
        done = 0
        for _ in range(20):
            try:
                b.remove_identity("W")
                done += 1
            except UnknownIdentityError:
                pass
        return done

    ids, deletes = _together(enrol, delete)
    assert not isinstance(ids, Exception) and not isinstance(deletes, Exception) and deletes >= 1
    # whatever the interleaving: an identity exists iff it holds photos, and no photo lost its identity
    names = a.identity_names()
    owners = set(a.all_embeddings()[1].tolist())
    assert owners == set(names) and all(a.image_ids_of(i) for i in names)
    runs = [k for k, _ in itertools.groupby(ids)]  # the ids in the order the enrolments saw them
    assert len(runs) == len(set(runs))  # once deleted, an id never comes back, whatever the interleaving
    if a.has_identity("W"):
        b.remove_identity("W")
    again = a.add_images("W", [img("after")]).identity_id
    assert again not in ids and again > max(ids)  # re-created after a delete with a new id, never an old one


def test_a_change_waits_for_a_lock_held_too_long_then_is_busy_while_reads_go_on(open_, url):
    import psycopg

    store = open_(busy_timeout_s=0.3)
    store.add_images("W", [img("a")])
    with psycopg.connect(url) as other:  # another replica in the middle of a long change
        other.execute("SELECT value FROM generation FOR UPDATE")
        t0 = time.monotonic()
        with pytest.raises(StoreBusyError):
            store.add_images("W", [img("b")])
        assert 0.25 < time.monotonic() - t0 < 3
        assert [r.sha256 for r in store.images_of("W")] == ["a"]  # reads are not blocked
        other.rollback()
    store.add_images("W", [img("b")])
    assert [r.sha256 for r in store.images_of("W")] == ["a", "b"]


def test_an_old_schema_is_refused_with_the_command_that_fixes_it(monkeypatch):
    from pg_cluster import shared_cluster

    cluster = shared_cluster()  # skips with the reason when PostgreSQL or psycopg is missing: import after it
    from index.store import open_store, pg_migrate
    from index.store.postgres_errors import SchemaVersionError

    url = cluster.create_database("old_schema", migrate=False)
    with pytest.raises(SchemaVersionError, match="whaleid store migrate"):
        open_store(url, DIM)
    files, first_gap = pg_migrate.migration_files(), threading.Lock()

    def slow_between_files():  # the first run to reach a gap between two files pauses there, where a lock per
        for i, item in enumerate(files):  # file let the other run in to apply the rest
            if i == 1 and first_gap.acquire(blocking=False):
                time.sleep(0.5)
            yield item

    monkeypatch.setattr(pg_migrate, "migration_files", slow_between_files)
    every = list(range(1, pg_migrate.SCHEMA_VERSION + 1))
    assert len(every) >= 2
    runs = _together(lambda: pg_migrate.migrate(url), lambda: pg_migrate.migrate(url))
    assert runs in ([every, []], [[], every])  # one run applies every file, the other waits and finds them done
    open_store(url, DIM).close()


def test_the_change_feed_wakes_another_replica_and_survives_a_server_restart(tmp_path):
    from pg_cluster import PgCluster

    cluster = PgCluster()  # its own server: this test stops it; skips first when PostgreSQL or psycopg is missing
    from index.store import open_store
    from index.store.postgres_errors import DatabaseUnavailableError

    try:
        url = cluster.create_database("feed")
        writer, reader = open_store(url, DIM), open_store(url, DIM)
        seen: list[tuple[float, int | None]] = []
        reader.subscribe(lambda g: seen.append((time.monotonic(), g)))
        _wait(lambda: seen, 5)  # the listener connected (it calls back once with None)
        t0 = time.monotonic()
        writer.add_images("W", [img("a")])
        _wait(lambda: any(g == writer.generation for _, g in seen), 2)
        assert [t for t, g in seen if g is not None][0] - t0 < 1.0

        cluster.stop()  # the database goes away: typed 503-able errors, nothing half-written
        with pytest.raises(DatabaseUnavailableError) as err:
            writer.add_images("W", [img("b")])
        assert isinstance(err.value, StorageError) and err.value.retry_after_s == 2
        with pytest.raises(DatabaseUnavailableError):
            reader.images_of("W")
        n = len(seen)
        cluster.start()
        # the same handles work again (their dead connections are replaced) ...
        assert [r.sha256 for r in writer.images_of("W")] == ["a"]
        writer.add_images("W", [img("b")])
        # ... and the listener reconnected: a None (changes may have been missed), then each new generation
        _wait(lambda: None in [g for _, g in seen[n:]], 10)
        writer.add_images("W", [img("c")])
        _wait(lambda: any(g == writer.generation for _, g in seen[n:]), 1)
        writer.close()
        reader.close()
    finally:
        cluster.remove()


def test_catalogue_operations_racing_enrolments_stay_whole(open_):
    a, b = open_(), open_()
    s0 = a.add_images("S", [img("s0")]).added_ids[0]
    a.add_images("T", [img("t0"), img("s0")])

    def enrol_into_source():
        return [a.add_image_groups([("S", [img(f"s{i}")], False)], actor="ka")[0].identity_id for i in range(1, 15)]

    ids, merged = _together(enrol_into_source, lambda: b.merge_identities("S", "T", actor="kb"))
    assert not isinstance(ids, Exception) and not isinstance(merged, Exception)
    # the enrolments before the merge moved with it; those after re-created S under a new id
    t_shas = {r.sha256 for r in a.images_of("T")}
    s_shas = {r.sha256 for r in a.images_of("S")} if a.has_identity("S") else set()
    assert t_shas | s_shas == {"t0", "s0"} | {f"s{i}" for i in range(1, 15)} and not (t_shas & s_shas)
    assert merged.duplicate_image_ids == [s0]  # T held the same photo: dropped, not doubled
    if s_shas:
        assert a.identity_id("S") > merged.removed_identity_ids[0]
    log = a.audit_log(limit=100)
    assert [e.operation for e in log].count("merge") == 1 and {e.actor for e in log} == {"ka", "kb", None}
    assert a.count_audit() == len(log) == 2 + 14 + 1

    moved = a.move_images("T", [a.images_of("T")[0].image_id], "U")
    assert moved.created and [r.sha256 for r in a.images_of("U")] == ["t0"]
    assert a.rename_identity("U", "V") == moved.target_identity_id and not a.has_identity("U")
    a.update_metadata("V", moved.moved_image_ids[0], {"date": "2024-07-01", "place": None})
    assert a.images_of("V")[0].metadata == {"date": "2024-07-01"}


def _wait(cond, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s")
        time.sleep(0.01)


def _index_state(gallery):
    """What a gallery's in-memory index holds: names, photo owners, and each FAISS vector."""
    vecs = {int(i): np.round(gallery._vectors.vector(int(i)), 6).tolist() for i in gallery._vectors.ids}
    return gallery._generation, dict(gallery._names), dict(gallery._image_owner), vecs


@pytest.mark.parametrize("scoring", ["centroid", "image_max"])
def test_a_replica_catches_up_from_the_change_log_without_a_rebuild(url, tmp_path, caplog, scoring):
    import logging

    from index.gallery import Gallery

    a = Gallery(tmp_path / "a", DIM, embedding_scoring=scoring, store_url=url)
    b = Gallery(tmp_path / "b", DIM, embedding_scoring=scoring, store_url=url)
    for g in (a, b):
        g.store._callbacks.clear()  # this test drives b's catch-up itself (no listener wake-ups)
    a.add("W1", [img("a", E[0]), img("b", E[1])], flipped=[img("a", E[3])])
    a.add("W2", [img("c", E[2])])
    a.add("W3", [img("d", E[1] + E[2])])
    b.refresh(force=True)  # b in step; then photos move between identities b already holds
    a.rename("W2", "W2b")
    a.merge("W3", "W1")
    moved = a.store.images_of("W1")[0].image_id
    a.move("W1", [moved], "W4")
    a.update_metadata("W4", moved, {"location": "Azores"})
    a.remove_identity("W2b")
    with caplog.at_level(logging.DEBUG, logger="index.gallery"):
        assert b.refresh(force=True)
    assert any("caught up to generation" in r.message for r in caplog.records)  # no full rebuild
    fresh = Gallery(tmp_path / "c", DIM, embedding_scoring=scoring, store_url=url)  # built from scratch
    assert _index_state(b) == _index_state(fresh)
    # the replica that made the changes holds the same vectors (it names no emptied mirror identity)
    assert _index_state(a)[2:] == _index_state(fresh)[2:]
    # W1:flipped lost its only photo to W4:flipped: the emptied mirror identity is deleted
    assert sorted(name for name, _ in b._names.values()) == ["W1", "W4", "W4:flipped"]
    for g in (a, b, fresh):
        g.close()


def test_the_change_log_says_when_it_no_longer_reaches_back(open_, url):
    import psycopg

    store = open_()
    first = store.add_images("W1", [img("a")])
    g1 = store.generation
    second = store.add_images("W2", [img("b")])
    store.add_images("W1", [img("c")])
    assert store.changes_since(g1) == (g1 + 2, {first.identity_id, second.identity_id})
    assert store.changes_since(store.generation) == (store.generation, set())
    with psycopg.connect(url) as conn:  # what pruning does to old generations
        conn.execute("DELETE FROM changed_identities WHERE generation <= %s", (g1 + 1,))
    assert store.changes_since(g1) is None and store.changes_since(g1 + 1) == (g1 + 2, {first.identity_id})
