"""The SQLite gallery store: identities and their photos' embeddings, durable on commit.

One row per gallery photo: image id, whale id, sha256 of the photo's bytes, the box used (pixels on
the upright photo), the embedding (``float32`` bytes), the time added, and optionally a JPEG
thumbnail and the photo's local features. The store is the source of truth; the FAISS index of
:mod:`index.gallery` is rebuilt from it when its snapshot is stale.

Durability: WAL journal with ``synchronous=FULL``, so a committed transaction is fsynced before
``commit()`` returns; a ``kill -9`` afterwards loses nothing. Ids are ``AUTOINCREMENT``: an image
or identity id is never reused after a deletion (thumbnail URLs stay cacheable).

Another process may hold the write lock (``whaleid build-gallery`` while the service runs): a change
waits for it up to ``busy_timeout_s``, without blocking this store's reads meanwhile, then fails with
:class:`~core.errors.StoreBusyError`. Transient SQLite faults become typed errors too: a full disk
:class:`~core.errors.InsufficientStorageError`, an I/O error, a read-only or vanished file
:class:`~core.errors.StorageError`. A failed change is rolled back whole.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from core.errors import (
    CorruptArtifactError,
    StorageError,
    StoreBusyError,
    UnknownIdentityError,
    UnknownImageError,
)
from index.store.base import (
    AddOutcome,
    NewImage,
    _now,
    check_recorded_model,
    flipped_id,
)
from index.store.sqlite_catalogue import SQLiteCatalogue
from index.store.sqlite_errors import WRITE_ATTEMPT_S, _Connection
from index.store.sqlite_reads import SQLiteReads

log = logging.getLogger(__name__)

#: 1: identities and images; 2: photo metadata, perceptual hash and original bytes, the audit log;
#: 3: the trailing-edge descriptor of a photo.
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    whale_id TEXT NOT NULL UNIQUE,
    flipped INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    sha256 TEXT NOT NULL,
    source TEXT,
    box TEXT,
    embedding BLOB NOT NULL,
    added_at TEXT NOT NULL,
    thumbnail BLOB,
    local_features BLOB,
    UNIQUE (identity_id, sha256)
);
CREATE INDEX IF NOT EXISTS images_identity ON images(identity_id);
CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    operation TEXT NOT NULL,
    actor TEXT,
    details TEXT NOT NULL
);
"""
#: Columns schemas 2 and 3 added to ``images`` (a schema-1 file gains them, empty, when opened).
_V2_IMAGE_COLUMNS = {"metadata": "TEXT", "phash": "TEXT", "original": "BLOB", "edge": "BLOB"}


class SQLiteGalleryStore(SQLiteCatalogue, SQLiteReads):
    """SQLite store of identities and photo embeddings (a :class:`~index.store.GalleryStore`).

    Thread-safe: every call takes the store's lock (SQLite calls are short).

    Args:
        path: the ``.sqlite`` file (created with its folder when absent).
        dim: embedding dimension; must match the one recorded in the file.
        model_sha256: checksum of the model that produced the embeddings; when given and the file
            records another one, opening fails (the embeddings would not be comparable).
        durable: fsync every commit (``synchronous=FULL``); False only for throw-away galleries
            such as training's validation gallery.
        busy_timeout_s: how long a change waits for another connection's write lock, in seconds.

    Raises:
        CorruptArtifactError: the file is not a readable SQLite database or fails ``quick_check``.
        ManifestMismatchError: the file holds embeddings of another dimension or model.
        StorageError: (and its subclasses, from any method) a transient fault: the write lock stayed
            taken past ``busy_timeout_s`` (``StoreBusyError``), a full disk (``InsufficientStorageError``),
            an I/O error or a read-only file.
    """

    def __init__(
        self,
        path: str | Path,
        dim: int,
        model_sha256: str | None = None,
        durable: bool = True,
        busy_timeout_s: float = 5.0,
    ):
        self.path = Path(path)
        self.dim = int(dim)
        self.busy_timeout_s = float(busy_timeout_s)
        self._lock = threading.RLock()
        self.last_change: tuple[int, int] | None = None  # (generation before, after) of the last change
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            raw = sqlite3.connect(
                str(self.path),
                check_same_thread=False,
                isolation_level=None,
                timeout=WRITE_ATTEMPT_S,
            )
            self._db = _Connection(raw, self.path)
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=" + ("FULL" if durable else "OFF"))
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            self._db.executescript(_SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(images)").fetchall()}
            for column, kind in _V2_IMAGE_COLUMNS.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE images ADD COLUMN {column} {kind}")
        except sqlite3.DatabaseError as exc:
            raise CorruptArtifactError(self.path, f"not a readable gallery store ({exc})") from exc
        self._init_meta(model_sha256)

    # -- meta --------------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, str(value)))

    def _init_meta(self, model_sha256: str | None) -> None:
        with self._write():
            dim = self._meta("dim")
            if dim is None:
                self._set_meta("schema_version", SCHEMA_VERSION)
                self._set_meta("dim", self.dim)
                self._set_meta("generation", 0)
                self._set_meta("next_auto_id", 1)
                if model_sha256:
                    self._set_meta("model_sha256", model_sha256)
                return
            self._set_meta("schema_version", SCHEMA_VERSION)  # schema 1 files were migrated above
        check_recorded_model(self.path, self.dim, dim, model_sha256, self._meta("model_sha256"))

    @property
    def generation(self) -> int:
        """A counter raised by every committed change (used to tell a stale index snapshot)."""
        with self._lock:
            return int(self._meta("generation") or 0)

    def meta(self, key: str) -> str | None:
        with self._lock:
            return self._meta(key)

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def _write(self):
        """A write transaction (``BEGIN IMMEDIATE``) under the store's lock, committed on success.

        Waits for another connection's write lock up to ``busy_timeout_s``, in attempts of
        ``WRITE_ATTEMPT_S`` with the store's lock released in between (reads go on meanwhile).

        Raises:
            StoreBusyError: the write lock was still taken after ``busy_timeout_s``.
        """
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            self._lock.acquire()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                break
            except StoreBusyError:
                self._lock.release()
                if time.monotonic() >= deadline:
                    log.warning("gallery store %s: write lock still taken after %.1f s", self.path, self.busy_timeout_s)
                    raise
                time.sleep(0.05)
            except BaseException:
                self._lock.release()
                raise
        try:
            try:
                yield self._db
            except BaseException:
                self._rollback_quietly()
                raise
            try:
                self._db.execute("COMMIT")  # fsynced (synchronous=FULL) before returning
            except BaseException:
                self._rollback_quietly()
                raise
        finally:
            self._lock.release()

    def _rollback_quietly(self) -> None:
        # SQLite may have rolled the transaction back already (e.g. after SQLITE_FULL)
        with suppress(sqlite3.Error, StorageError):
            self._db.execute("ROLLBACK")

    def _audit(self, operation: str, actor: str | None, **details) -> None:
        """One audit entry, inside the change's own transaction."""
        self._db.execute(
            "INSERT INTO audit(at, operation, actor, details) VALUES (?, ?, ?, ?)",
            (_now(), operation, actor, json.dumps(details, sort_keys=True)),
        )

    def _bump(self) -> None:
        self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
        new = int(self._meta("generation") or 0)
        self.last_change = (new - 1, new)  # read by Gallery (one writer thread at a time) after the call

    # -- identities ----------------------------------------------------------------------------

    def _identity_row(self, whale_id: str):
        return self._db.execute("SELECT id, flipped FROM identities WHERE whale_id=?", (whale_id,)).fetchone()

    def identity_id(self, whale_id: str) -> int:
        """The integer id of ``whale_id`` (used as its FAISS id). Raises UnknownIdentityError."""
        with self._lock:
            row = self._identity_row(whale_id)
        if row is None:
            raise UnknownIdentityError(whale_id)
        return int(row[0])

    def has_identity(self, whale_id: str) -> bool:
        with self._lock:
            return self._identity_row(whale_id) is not None

    def next_auto_whale_id(self) -> str:
        """A new readable whale id, ``whale-00001``, ``whale-00002``..., never used in this store."""
        with self._write():
            n = int(self._meta("next_auto_id") or 1)
            while True:
                candidate = f"whale-{n:05d}"
                n += 1
                if self._identity_row(candidate) is None:
                    break
            self._set_meta("next_auto_id", n)
        return candidate

    def add_images(self, whale_id: str, images: Iterable[NewImage], flipped: bool = False) -> AddOutcome:
        """Add photos to an identity (created when absent) in one durable transaction.

        A photo whose sha256 is already stored for this identity is skipped (not added twice).

        Args:
            whale_id: the identity; for flipped identities use :func:`flipped_id`.
            images: photos with their embeddings ``(d,) float32``.
            flipped: whether the identity is a never-answered mirror identity.

        Returns:
            The identity id, the new image ids with the positions in ``images`` they came from,
            and the ids of the photos that were already stored.
        """
        return self.add_image_groups([(whale_id, images, flipped)])[0]

    def add_image_groups(
        self, groups: Sequence[tuple[str, Iterable[NewImage], bool]], actor: str | None = None
    ) -> list[AddOutcome]:
        """Add photos to several identities in one durable transaction: all or nothing (a whale's
        photos and their mirror images under ``<whale_id>:flipped`` are stored together or not at all).

        Args:
            groups: ``(whale_id, images, flipped)`` per identity, as for :meth:`add_images`.

        Returns:
            One :class:`AddOutcome` per group, in order.
        """
        groups = [(whale_id, list(images), bool(flipped)) for whale_id, images, flipped in groups]
        for _, images, _ in groups:
            for img in images:
                emb = np.asarray(img.embedding, dtype=np.float32).reshape(-1)
                if emb.shape != (self.dim,) or not np.isfinite(emb).all():
                    raise ValueError(f"embedding must be ({self.dim},) finite float32, got {emb.shape}")
        outcomes, changed = [], False
        with self._write():
            for whale_id, images, flipped in groups:
                outcome, group_changed = self._add_group(whale_id, images, flipped)
                outcomes.append(outcome)
                changed = changed or group_changed
                if outcome.added_ids and not flipped:
                    self._audit("enrol", actor, whale_id=whale_id, image_ids=outcome.added_ids)
            if changed:
                self._bump()
        return outcomes

    def _add_group(self, whale_id: str, images: list[NewImage], flipped: bool) -> tuple[AddOutcome, bool]:
        """One identity's part of :meth:`add_image_groups` (inside its transaction)."""
        row = self._identity_row(whale_id)
        if row is None:
            cur = self._db.execute(
                "INSERT INTO identities(whale_id, flipped, created_at) VALUES (?, ?, ?)",
                (whale_id, int(flipped), _now()),
            )
            ident = int(cur.lastrowid)
        else:
            ident = int(row[0])
        added, positions, dupes = [], [], []
        for pos, img in enumerate(images):
            existing = self._db.execute(
                "SELECT id FROM images WHERE identity_id=? AND sha256=?", (ident, img.sha256)
            ).fetchone()
            if existing:
                dupes.append(int(existing[0]))
                continue
            cur = self._db.execute(
                "INSERT INTO images(identity_id, sha256, source, box, embedding, added_at, thumbnail,"
                " local_features, metadata, phash, original, edge) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ident,
                    img.sha256,
                    img.source,
                    None if img.box_xyxy_px is None else json.dumps([round(float(v), 2) for v in img.box_xyxy_px]),
                    np.asarray(img.embedding, dtype=np.float32).reshape(-1).tobytes(),
                    _now(),
                    img.thumbnail,
                    img.local_features,
                    json.dumps(img.metadata) if img.metadata else None,
                    img.phash,
                    img.original,
                    img.edge,
                ),
            )
            added.append(int(cur.lastrowid))
            positions.append(pos)
        return AddOutcome(ident, added, positions, dupes), bool(added) or row is None

    def remove_identity(self, whale_id: str, actor: str | None = None) -> list[int]:
        """Delete an identity and all its photos. Returns the deleted identity ids (it and its mirror).

        Raises:
            UnknownIdentityError: no such identity.
        """
        with self._write():
            row = self._identity_row(whale_id)
            if row is None:
                raise UnknownIdentityError(whale_id)
            ids = [int(row[0])]
            mirror = self._identity_row(flipped_id(whale_id))
            if mirror is not None:
                ids.append(int(mirror[0]))
            for ident in ids:
                self._db.execute("DELETE FROM images WHERE identity_id=?", (ident,))
                self._db.execute("DELETE FROM identities WHERE id=?", (ident,))
            self._audit("delete_whale", actor, whale_id=whale_id)
            self._bump()
        return ids

    def remove_image(self, whale_id: str, image_id: int, actor: str | None = None) -> tuple[int, str, bool]:
        """Delete one photo (and its mirror copy, if any); an identity left without photos is deleted.

        Returns:
            ``(identity_id, sha256, identity_deleted)``.

        Raises:
            UnknownIdentityError, UnknownImageError.
        """
        with self._write():
            row = self._identity_row(whale_id)
            if row is None:
                raise UnknownIdentityError(whale_id)
            ident = int(row[0])
            img = self._db.execute(
                "SELECT sha256 FROM images WHERE id=? AND identity_id=?", (int(image_id), ident)
            ).fetchone()
            if img is None:
                raise UnknownImageError(whale_id, int(image_id))
            sha = img[0]
            self._db.execute("DELETE FROM images WHERE id=?", (int(image_id),))
            mirror = self._identity_row(flipped_id(whale_id))
            if mirror is not None:
                self._db.execute("DELETE FROM images WHERE identity_id=? AND sha256=?", (int(mirror[0]), sha))
            left = self._db.execute("SELECT COUNT(*) FROM images WHERE identity_id=?", (ident,)).fetchone()[0]
            deleted = left == 0
            if deleted:
                self._db.execute("DELETE FROM identities WHERE id=?", (ident,))
                if mirror is not None:
                    self._db.execute("DELETE FROM images WHERE identity_id=?", (int(mirror[0]),))
                    self._db.execute("DELETE FROM identities WHERE id=?", (int(mirror[0]),))
            self._audit("delete_photo", actor, whale_id=whale_id, image_id=int(image_id), whale_deleted=deleted)
            self._bump()
        return ident, sha, deleted

    # -- reads ---------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()


def recorded_dim(path: str | Path) -> int:
    """The embedding dimension an SQLite gallery store records, read without opening it for writing (no
    bundle needed: ``whaleid reindex`` learns the old model's dimension from its store).

    Raises:
        CorruptArtifactError: not a readable gallery store, or one that records no dimension.
    """
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM meta WHERE key='dim'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise CorruptArtifactError(path, f"not a readable gallery store ({exc})") from None
    if row is None:
        raise CorruptArtifactError(path, "the store records no embedding dimension")
    return int(row[0])
