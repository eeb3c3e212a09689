"""The gallery store under faults that pass: another process holding the write lock, a full disk."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from core.errors import InsufficientStorageError, StorageError, StoreBusyError
from index.store import NewImage, SQLiteGalleryStore, storage_error


def _img(seed: int, dim: int = 4) -> NewImage:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return NewImage(f"sha{seed}", v / np.linalg.norm(v), f"p{seed}.jpg")


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


def hold_write_lock(path, seconds: float) -> subprocess.Popen:
    """A second process that holds the store's write lock for ``seconds`` (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"locked"
    return proc


def test_a_change_waits_for_another_process_then_fails_busy_and_reads_go_on(tmp_path):
    store = SQLiteGalleryStore(tmp_path / "g.sqlite", dim=4, busy_timeout_s=0.8)
    store.add_images("w1", [_img(1)])
    holder = hold_write_lock(store.path, 4.0)
    try:
        reads: list[float] = []
        waiting = threading.Event()

        def read_while_the_change_waits():
            waiting.wait(5)
            time.sleep(0.2)
            for _ in range(5):
                t0 = time.perf_counter()
                assert store.count_images() == 1 and store.images_of("w1")[0].source == "p1.jpg"
                reads.append(time.perf_counter() - t0)

        reader = threading.Thread(target=read_while_the_change_waits)
        reader.start()
        t0 = time.perf_counter()
        waiting.set()
        with pytest.raises(StoreBusyError) as info:
            store.add_images("w2", [_img(2)])
        waited = time.perf_counter() - t0
        reader.join(10)
        assert 0.8 <= waited < 2.0, waited  # the busy timeout, not sqlite3's default 5 s
        assert info.value.code == "store_busy" and info.value.retry_after_s == 1
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        # reads were served while the change waited (the store's lock is released between attempts)
        assert len(reads) == 5 and max(reads) < 0.5, reads
        assert not store.has_identity("w2") and store.count_images() == 1  # nothing half-stored
    finally:
        holder.wait(10)
    out = store.add_images("w2", [_img(2)])  # the lock is free again
    assert len(out.added_ids) == 1 and store.count_images() == 2
    store.close()


def test_a_change_that_outlasts_the_lock_succeeds(tmp_path):
    store = SQLiteGalleryStore(tmp_path / "g.sqlite", dim=4, busy_timeout_s=5.0)
    holder = hold_write_lock(store.path, 1.0)
    t0 = time.perf_counter()
    out = store.add_images("w1", [_img(1)])
    assert 0.5 < time.perf_counter() - t0 < 4.0
    holder.wait(10)
    assert out.added_ids and store.count_images() == 1
    store.close()


@pytest.mark.parametrize(
    ("message", "kind", "code"),
    [
        ("database is locked", StoreBusyError, "store_busy"),
        ("database or disk is full", InsufficientStorageError, "insufficient_storage"),
        ("disk I/O error", StorageError, "store_unavailable"),
        ("attempt to write a readonly database", StorageError, "store_unavailable"),
    ],
)
def test_transient_sqlite_faults_become_typed_errors(message, kind, code):
    err = storage_error(sqlite3.OperationalError(message), "/x/gallery.sqlite")
    assert type(err) is kind and err.code == code
    assert "/x/" not in err.detail  # no server path for a client


def test_other_sqlite_errors_are_left_alone():
    exc = sqlite3.OperationalError("no such table: images")
    assert storage_error(exc, "g.sqlite") is exc
    full = storage_error(OSError(28, "No space left on device"), "g.sqlite")
    assert isinstance(full, InsufficientStorageError)


class _FailingMirrorInsert:
    """Wraps the store's connection: creating a mirror identity fails like a disk I/O error."""

    def __init__(self, db):
        self._db = db

    def execute(self, sql, params=()):
        if sql.startswith("INSERT INTO identities") and str(params[0]).endswith(":flipped"):
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, params)

    def __getattr__(self, name):
        return getattr(self._db, name)


def test_a_whale_and_its_mirror_images_are_stored_together_or_not_at_all(tmp_path):
    from index.gallery import Gallery

    g = Gallery(tmp_path / "g", dim=4)
    g.add("w0", [_img(0)])
    g.store._db = _FailingMirrorInsert(g.store._db)
    with pytest.raises(sqlite3.OperationalError):
        g.add("w1", [_img(1), _img(2)], flipped=[_img(11), _img(12)])
    assert not g.store.has_identity("w1") and g.store.count_images(include_flipped=True) == 1
    assert g.whale_ids() == ["w0"] and g.store.generation == 1
    g.store._db = g.store._db._db
    res = g.add("w1", [_img(1), _img(2)], flipped=[_img(11), _img(12)])
    assert len(res.image_ids) == 2 and g.store.count_images(include_flipped=True) == 5
    assert g.store.generation == 2  # one change, one generation
    assert [h.whale_id for h in g.search(_img(1).embedding, k=2)[0]] == ["w1", "w0"]
