"""The gallery store: identities and their photos' embeddings in SQLite, durable on commit.

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

import errno
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core.errors import (
    CorruptArtifactError,
    InsufficientStorageError,
    InvalidIdentityError,
    ManifestMismatchError,
    StorageError,
    StoreBusyError,
    UnknownIdentityError,
    UnknownImageError,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FLIP_SUFFIX = ":flipped"
NEW_WHALE = "new_whale"
_WHALE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")

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
"""


def flipped_id(whale_id: str) -> str:
    """The never-answered identity that holds the mirror images of ``whale_id``'s photos."""
    return whale_id + FLIP_SUFFIX


def is_flipped(whale_id: str) -> bool:
    return whale_id.endswith(FLIP_SUFFIX)


def validate_whale_id(whale_id: str) -> str:
    """Check a user-supplied whale id.

    Rules: 1 to 64 characters from letters, digits, ``_``, ``.`` and ``-``, starting with a letter
    or digit; not ``new_whale`` (that label means "not in the gallery").

    Raises:
        InvalidIdentityError: when the id breaks a rule.
    """
    if not isinstance(whale_id, str) or not _WHALE_ID.fullmatch(whale_id):
        raise InvalidIdentityError(
            "invalid whale_id: use 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    if whale_id == NEW_WHALE:
        raise InvalidIdentityError("invalid whale_id: 'new_whale' is reserved for whales not in the gallery")
    return whale_id


# SQLite primary result codes (https://www.sqlite.org/rescode.html) of faults that pass
_SQLITE_BUSY = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_FULL = {13}  # SQLITE_FULL
_SQLITE_TRANSIENT = {8, 10, 14, 15}  # SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN, SQLITE_PROTOCOL
#: how long one attempt to take the write lock waits inside SQLite, in seconds (the store's lock is
#: released between attempts, so reads go on while a change waits for another process)
WRITE_ATTEMPT_S = 0.1


def _sqlite_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return int(code) & 0xFF
    msg = str(exc).lower()
    if "locked" in msg or "busy" in msg:
        return 5
    if "disk is full" in msg:
        return 13
    if "disk i/o error" in msg:
        return 10
    if "readonly" in msg or "read-only" in msg:
        return 8
    if "unable to open" in msg:
        return 14
    return None


def storage_error(exc: sqlite3.Error | OSError, path: str | Path) -> Exception:
    """The typed error for a transient SQLite or OS fault, or ``exc`` itself when it is not one.

    Args:
        exc: what sqlite3 or the OS raised.
        path: the file concerned (logged, never shown to a client).

    Returns:
        :class:`StoreBusyError`, :class:`InsufficientStorageError` or :class:`StorageError` (with the
        original as ``__cause__`` once raised ``from`` it), else ``exc`` unchanged.
    """
    if isinstance(exc, OSError):
        kind = "full" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "transient"
    elif isinstance(exc, sqlite3.OperationalError):
        code = _sqlite_code(exc)
        kind = (
            "busy"
            if code in _SQLITE_BUSY
            else "full"
            if code in _SQLITE_FULL
            else "transient"
            if code in _SQLITE_TRANSIENT
            else None
        )
    else:
        kind = None
    if kind is None:
        return exc
    if kind != "busy":  # a busy store is retried (StoreBusyError is logged once the wait is over)
        log.warning("gallery store %s: %s (%s)", path, exc, kind)
    if kind == "busy":
        return StoreBusyError("gallery store busy: another process is changing it; nothing was stored, retry later")
    if kind == "full":
        return InsufficientStorageError("no space left on the gallery's disk: nothing was stored")
    return StorageError("gallery store unavailable (disk or file error): nothing was stored, retry later")


class _Cursor:
    """A sqlite3 cursor whose transient faults become typed errors."""

    def __init__(self, cur: sqlite3.Cursor, path: Path):
        self._cur, self._path = cur, path

    @property
    def lastrowid(self):
        return self._cur.lastrowid

    def fetchone(self):
        try:
            return self._cur.fetchone()
        except sqlite3.OperationalError as exc:
            raise storage_error(exc, self._path) from exc

    def fetchall(self):
        try:
            return self._cur.fetchall()
        except sqlite3.OperationalError as exc:
            raise storage_error(exc, self._path) from exc


class _Connection:
    """The store's sqlite3 connection; transient faults (busy, full, I/O) become typed errors."""

    def __init__(self, db: sqlite3.Connection, path: Path):
        self._db, self._path = db, path

    def execute(self, sql: str, params=()) -> _Cursor:
        try:
            return _Cursor(self._db.execute(sql, params), self._path)
        except sqlite3.OperationalError as exc:
            raise storage_error(exc, self._path) from exc

    def executescript(self, sql: str) -> None:
        try:
            self._db.executescript(sql)
        except sqlite3.OperationalError as exc:
            raise storage_error(exc, self._path) from exc

    def close(self) -> None:
        self._db.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class ImageRecord:
    """One gallery photo (without its blobs)."""

    image_id: int
    whale_id: str
    sha256: str
    source: str | None
    box_xyxy_px: list[float] | None
    added_at: str
    has_thumbnail: bool


@dataclass(frozen=True)
class IdentityRecord:
    """One identity and its photo count."""

    identity_id: int
    whale_id: str
    flipped: bool
    n_images: int
    created_at: str


@dataclass(frozen=True)
class AddOutcome:
    """What :meth:`GalleryStore.add_images` did."""

    identity_id: int
    added_ids: list[int]
    added_positions: list[int]
    duplicate_ids: list[int]


@dataclass(frozen=True)
class NewImage:
    """A photo to add: its embedding ``(d,) float32`` (L2-normalised) and what is kept with it."""

    sha256: str
    embedding: np.ndarray
    source: str | None = None
    box_xyxy_px: Sequence[float] | None = None
    thumbnail: bytes | None = None
    local_features: bytes | None = None


class GalleryStore:
    """SQLite store of identities and photo embeddings.

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
        if int(dim) != self.dim:
            raise ManifestMismatchError(
                f"gallery store {self.path} holds {dim}-d embeddings, but the model makes {self.dim}-d ones"
            )
        stored_sha = self._meta("model_sha256")
        if model_sha256 and stored_sha and stored_sha != model_sha256:
            raise ManifestMismatchError(
                f"gallery store {self.path} was built with another model (sha256 {stored_sha[:12]}...) than "
                f"the bundle's ({model_sha256[:12]}...); rebuild it with `whaleid build-gallery`"
            )

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

    def add_image_groups(self, groups: Sequence[tuple[str, Iterable[NewImage], bool]]) -> list[AddOutcome]:
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
                " local_features) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ident,
                    img.sha256,
                    img.source,
                    None if img.box_xyxy_px is None else json.dumps([round(float(v), 2) for v in img.box_xyxy_px]),
                    np.asarray(img.embedding, dtype=np.float32).reshape(-1).tobytes(),
                    _now(),
                    img.thumbnail,
                    img.local_features,
                ),
            )
            added.append(int(cur.lastrowid))
            positions.append(pos)
        return AddOutcome(ident, added, positions, dupes), bool(added) or row is None

    def remove_identity(self, whale_id: str) -> list[int]:
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
            self._bump()
        return ids

    def remove_image(self, whale_id: str, image_id: int) -> tuple[int, str, bool]:
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
            self._bump()
        return ident, sha, deleted

    # -- reads ---------------------------------------------------------------------------------

    def embeddings_of(self, identity_id: int) -> np.ndarray:
        """``(n, d) float32`` embeddings of one identity's photos (``n`` may be 0)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT embedding FROM images WHERE identity_id=? ORDER BY id", (int(identity_id),)
            ).fetchall()
        return self._stack(r[0] for r in rows)

    def _stack(self, blobs) -> np.ndarray:
        vecs = [np.frombuffer(b, dtype=np.float32) for b in blobs]
        if not vecs:
            return np.empty((0, self.dim), np.float32)
        return np.stack(vecs).astype(np.float32)

    def image_ids_of(self, identity_id: int) -> set[int]:
        """Ids of one identity's photos (empty when the identity is gone)."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM images WHERE identity_id=?", (int(identity_id),)).fetchall()
        return {int(r[0]) for r in rows}

    def embeddings_with_ids(self, identity_id: int) -> tuple[np.ndarray, np.ndarray]:
        """One identity's photos: ``(image_ids (n,) int64, embeddings (n, d) float32)``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, embedding FROM images WHERE identity_id=? ORDER BY id", (int(identity_id),)
            ).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64), self._stack(r[1] for r in rows)

    def photos_with_sha256(self, sha256: str) -> list[tuple[str, int]]:
        """``(whale_id, image_id)`` of the stored photos with these exact bytes (mirror identities excluded)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT i.whale_id, m.id FROM images m JOIN identities i ON i.id = m.identity_id "
                "WHERE m.sha256=? AND i.flipped=0 ORDER BY m.id",
                (sha256,),
            ).fetchall()
        return [(r[0], int(r[1])) for r in rows]

    def image_sha256(self, image_id: int) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT sha256 FROM images WHERE id=?", (int(image_id),)).fetchone()
        return None if row is None else row[0]

    def snapshot(self) -> tuple[int, dict[int, tuple[str, bool]], np.ndarray, np.ndarray, np.ndarray]:
        """One consistent read of the whole store, even while another process writes to it.

        Returns:
            ``(generation, identity_names(), *all_embeddings())`` as of one read transaction.
        """
        with self._lock:
            self._db.execute("BEGIN")  # a deferred read transaction: one WAL snapshot for all reads
            try:
                generation = int(self._meta("generation") or 0)
                names, embeddings = self.identity_names(), self.all_embeddings()
            finally:
                self._db.execute("COMMIT")
        return (generation, names, *embeddings)

    def stored_photos(self) -> set[tuple[str, str]]:
        """``(whale_id, sha256)`` of every stored photo (mirror identities excluded)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT i.whale_id, m.sha256 FROM images m JOIN identities i ON i.id = m.identity_id WHERE i.flipped=0"
            ).fetchall()
        return {(r[0], r[1]) for r in rows}

    def all_embeddings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every photo: ``(image_ids (n,) int64, identity_ids (n,) int64, embeddings (n, d) float32)``."""
        with self._lock:
            rows = self._db.execute("SELECT id, identity_id, embedding FROM images ORDER BY id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        idents = np.array([r[1] for r in rows], dtype=np.int64)
        return ids, idents, self._stack(r[2] for r in rows)

    def all_embeddings_of_images(self, image_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like :meth:`all_embeddings`, for the given photos only (in the order given)."""
        with self._lock:
            rows = (
                {
                    int(r[0]): r
                    for r in self._db.execute(
                        f"SELECT id, identity_id, embedding FROM images WHERE id IN ({','.join('?' * len(image_ids))})",
                        [int(i) for i in image_ids],
                    ).fetchall()
                }
                if image_ids
                else {}
            )
        picked = [rows[int(i)] for i in image_ids if int(i) in rows]
        return (
            np.array([r[0] for r in picked], dtype=np.int64),
            np.array([r[1] for r in picked], dtype=np.int64),
            self._stack(r[2] for r in picked),
        )

    def identity_names(self) -> dict[int, tuple[str, bool]]:
        """``identity_id -> (whale_id, flipped)`` for every identity."""
        with self._lock:
            rows = self._db.execute("SELECT id, whale_id, flipped FROM identities").fetchall()
        return {int(r[0]): (r[1], bool(r[2])) for r in rows}

    def count_identities(self, include_flipped: bool = False) -> int:
        sql = "SELECT COUNT(*) FROM identities" + ("" if include_flipped else " WHERE flipped=0")
        with self._lock:
            return int(self._db.execute(sql).fetchone()[0])

    def count_images(self, include_flipped: bool = False) -> int:
        sql = "SELECT COUNT(*) FROM images" + (
            "" if include_flipped else " WHERE identity_id IN (SELECT id FROM identities WHERE flipped=0)"
        )
        with self._lock:
            return int(self._db.execute(sql).fetchone()[0])

    def list_identities(self, offset: int = 0, limit: int = 100, prefix: str = "") -> list[IdentityRecord]:
        """Identities (flipped ones excluded) ordered by whale id, with photo counts, paged."""
        with self._lock:
            rows = self._db.execute(
                "SELECT i.id, i.whale_id, i.flipped, COUNT(m.id), i.created_at FROM identities i "
                "LEFT JOIN images m ON m.identity_id = i.id WHERE i.flipped=0 AND i.whale_id LIKE ? ESCAPE '\\' "
                "GROUP BY i.id ORDER BY i.whale_id LIMIT ? OFFSET ?",
                (_like_prefix(prefix), int(limit), int(offset)),
            ).fetchall()
        return [IdentityRecord(int(r[0]), r[1], bool(r[2]), int(r[3]), r[4]) for r in rows]

    def count_matching(self, prefix: str = "") -> int:
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT COUNT(*) FROM identities WHERE flipped=0 AND whale_id LIKE ? ESCAPE '\\'",
                    (_like_prefix(prefix),),
                ).fetchone()[0]
            )

    def images_of(self, whale_id: str) -> list[ImageRecord]:
        """The photos of one identity, oldest first. Raises UnknownIdentityError."""
        with self._lock:
            row = self._identity_row(whale_id)
            if row is None:
                raise UnknownIdentityError(whale_id)
            rows = self._db.execute(
                "SELECT id, sha256, source, box, added_at, thumbnail IS NOT NULL FROM images "
                "WHERE identity_id=? ORDER BY id",
                (int(row[0]),),
            ).fetchall()
        return [
            ImageRecord(int(r[0]), whale_id, r[1], r[2], json.loads(r[3]) if r[3] else None, r[4], bool(r[5]))
            for r in rows
        ]

    def image_blob(self, image_id: int, column: str) -> bytes | None:
        """The ``thumbnail`` or ``local_features`` blob of a photo (None when not stored)."""
        if column not in ("thumbnail", "local_features"):
            raise ValueError(f"unknown blob column {column!r}")
        with self._lock:
            row = self._db.execute(f"SELECT {column} FROM images WHERE id=?", (int(image_id),)).fetchone()
        return None if row is None else row[0]

    def image_owner(self, image_id: int) -> str | None:
        """The whale id a photo belongs to, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT i.whale_id FROM images m JOIN identities i ON i.id = m.identity_id WHERE m.id=?",
                (int(image_id),),
            ).fetchone()
        return None if row is None else row[0]

    def local_features_of(self, identity_ids: Sequence[int]) -> list[tuple[int, int, bytes | None]]:
        """``(image_id, identity_id, local_features blob)`` of every photo of the given identities."""
        if not identity_ids:
            return []
        marks = ",".join("?" * len(identity_ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, identity_id, local_features FROM images WHERE identity_id IN ({marks}) ORDER BY id",
                [int(i) for i in identity_ids],
            ).fetchall()
        return [(int(r[0]), int(r[1]), r[2]) for r in rows]

    def local_feature_owners(self) -> dict[int, int]:
        """``image_id -> identity_id`` of every photo that has local features (mirror identities never
        have any). One indexed scan; no blob is read."""
        with self._lock:
            rows = self._db.execute("SELECT id, identity_id FROM images WHERE local_features IS NOT NULL").fetchall()
        return {int(r[0]): int(r[1]) for r in rows}

    def local_features_of_images(self, image_ids: Sequence[int]) -> list[tuple[int, int, bytes | None]]:
        """``(image_id, identity_id, local_features blob)`` of the given photos (unknown ids are skipped)."""
        out: list[tuple[int, int, bytes | None]] = []
        ids = [int(i) for i in image_ids]
        for start in range(0, len(ids), 500):  # SQLite's host-parameter limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(
                    f"SELECT id, identity_id, local_features FROM images WHERE id IN ({marks}) ORDER BY id", chunk
                ).fetchall()
            out.extend((int(r[0]), int(r[1]), r[2]) for r in rows)
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"
