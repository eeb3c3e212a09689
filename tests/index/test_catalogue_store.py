"""Identity operations in the store (issue 18): mirrors follow their whale, and a kill -9 in the middle of
merges and moves leaves the catalogue as before or after an operation, never between."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from index.store import NewImage, flipped_id, open_store

DIM = 4


def img(sha: str, seed: int) -> NewImage:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return NewImage(sha, v / np.linalg.norm(v))


def test_merge_and_move_carry_the_mirror_photos(tmp_path):
    store = open_store(tmp_path / "g.sqlite", DIM)
    for wid, shas in (("A", ["a1", "a2", "ab"]), ("B", ["b1", "ab"])):
        store.add_image_groups(
            [(wid, [img(s, i) for i, s in enumerate(shas)], False), (flipped_id(wid), [img(s, 9) for s in shas], True)]
        )
    out = store.merge_identities("A", "B", actor="test")
    assert len(out.moved_image_ids) == 2 and len(out.duplicate_image_ids) == 1  # "ab": B has it already
    names = {n for n, _ in store.identity_names().values()}
    assert names == {"B", flipped_id("B")}
    mirror = store.identity_id(flipped_id("B"))
    assert {r.sha256 for r in store.images_of(flipped_id("B"))} == {"a1", "a2", "b1", "ab"}
    assert store.count_images(include_flipped=True) == 8
    moved = [r.image_id for r in store.images_of("B") if r.sha256 in ("a1", "a2")]
    res = store.move_images("B", moved, "C", actor="test")
    assert res.created and not res.source_deleted
    assert {r.sha256 for r in store.images_of(flipped_id("C"))} == {"a1", "a2"}
    assert {r.sha256 for r in store.images_of(flipped_id("B"))} == {"b1", "ab"}
    assert store.identity_id(flipped_id("B")) == mirror
    store.rename_identity("C", "D")
    assert store.has_identity(flipped_id("D")) and not store.has_identity(flipped_id("C"))
    ops = [e.operation for e in store.audit_log()]
    assert ops[:3] == ["rename", "move_photos", "merge"] and store.count_audit() == 5  # 2 enrolments first
    store.close()


WORKER = textwrap.dedent(
    """
    import sys
    from index.store import open_store
    store = open_store(sys.argv[1], 4)
    a_ids = None
    print("ready", flush=True)
    while True:
        ids = [r.image_id for r in store.images_of("A")]
        store.merge_identities("A", "B")
        store.move_images("B", ids, "A")
    """
)


@pytest.mark.parametrize("delay_s", [0.4, 0.9, 1.7])
def test_kill_9_during_merges_and_moves_leaves_before_or_after(tmp_path, delay_s):
    path = tmp_path / "g.sqlite"
    store = open_store(path, DIM)
    store.add_images("A", [img(f"a{i}", i) for i in range(6)])
    store.add_images("B", [img(f"b{i}", 10 + i) for i in range(6)])
    store.close()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(path)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    store = open_store(path, DIM)
    a = {r.sha256 for r in store.images_of("A")} if store.has_identity("A") else set()
    b = {r.sha256 for r in store.images_of("B")}
    every = {f"a{i}" for i in range(6)} | {f"b{i}" for i in range(6)}
    # after a merge: A gone, B holds all 12; after a move back: A holds its 6, B its 6; nothing between
    assert (a, b) in ((set(), every), ({f"a{i}" for i in range(6)}, {f"b{i}" for i in range(6)})), (a, b)
    assert store.count_images() == 12 and store.count_identities() == (1 if not a else 2)
    ops = [e.operation for e in store.audit_log(limit=store.count_audit())]
    assert ops.count("merge") - ops.count("move_photos") == (1 if not a else 0)  # each change audited once
    assert ops.count("merge") >= 1  # the worker got through at least one operation
    store.close()


def test_a_mirror_emptied_by_a_move_is_deleted(tmp_path):
    store = open_store(tmp_path / "g.sqlite", DIM)
    store.add_image_groups([("A", [img("a1", 1), img("a2", 2)], False), (flipped_id("A"), [img("a1", 3)], True)])
    a1 = next(r.image_id for r in store.images_of("A") if r.sha256 == "a1")
    out = store.move_images("A", [a1], "B")
    assert not out.source_deleted and [r.sha256 for r in store.images_of("A")] == ["a2"]
    assert not store.has_identity(flipped_id("A"))  # its only mirror photo moved with a1
    assert [r.sha256 for r in store.images_of(flipped_id("B"))] == ["a1"]
    store.close()
