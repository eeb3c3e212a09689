"""The PostgreSQL gallery store: one catalogue shared by many service replicas.

The records are the SQLite store's (:mod:`index.store.sqlite`): identities, and one row per photo
with its embedding (``float32`` bytes), box, thumbnail and local features, all in the database
(``bytea``), so a replica needs nothing but the URL. The schema is versioned
(:mod:`index.store.pg_migrate`, ``whaleid store migrate URL``) and checked when a store opens.

Concurrency rules, enforced by the database:

* **One change at a time.** Every change is one transaction that first locks the single row of
  ``generation`` (``SELECT ... FOR UPDATE``) and raises it before committing. Changes from all
  replicas are therefore serialised in generation order, and each one reads the rows committed
  before it (READ COMMITTED takes a new snapshot per statement, after the lock was granted).
  A change waits for the lock at most ``busy_timeout_s`` (``lock_timeout``), then
  :class:`~core.errors.StoreBusyError`.
* **Two replicas enrolling the same whale id at once**: the second waits for the first, then
  finds the identity it created and adds to it; ``UNIQUE (whale_id)`` backs the rule.
* **The same photo at once**: the second finds it (``UNIQUE (identity_id, sha256)``) and reports
  it as a duplicate.
* **A delete racing an enrolment**: whichever locks first commits first. Enrol then delete: the
  delete removes the new photos too. Delete then enrol: the enrolment creates the identity afresh
  with a new id (ids come from sequences and are never reused).
* **Auto whale ids** (``next_auto_whale_id``) are handed out under the same lock: never twice.
* **The server unreachable, restarting or the connection lost**: the transaction is rolled back
  by the server (nothing half-written) and the call raises
  :class:`~index.store.postgres_errors.DatabaseUnavailableError` (503 with ``Retry-After``). A
  connection found dead is replaced on the next call; a read, or a change that failed before
  its first statement, is retried once on the new connection.

Durability: ``synchronous_commit`` stays ``on`` (the server's WAL is flushed before ``COMMIT``
returns); ``durable=False`` turns it off for this store's sessions.

Change feed: a committed change sends ``NOTIFY whaleid_gallery, '<generation>'``, and triggers
record the identities it touched in ``changed_identities`` (:meth:`PostgresGalleryStore.changes_since`),
so a replica re-reads only those.
:meth:`PostgresGalleryStore.subscribe` starts one listener thread per store that calls back on
each notification, and once after every (re)connection, since notifications sent while it was
disconnected are lost. A missed notification is also caught by the generation check before each
search (:meth:`index.gallery.Gallery.refresh`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from core.errors import UnknownIdentityError, UnknownImageError
from index.store.base import AddOutcome, NewImage, _now, check_recorded_model, flipped_id
from index.store.pg_migrate import SCHEMA_VERSION, check_schema
from index.store.postgres_catalogue import PostgresCatalogue, audit
from index.store.postgres_errors import redact, translate
from index.store.postgres_reads import PostgresReads

log = logging.getLogger(__name__)

#: the LISTEN/NOTIFY channel of gallery changes (payload: the new generation)
CHANNEL = "whaleid_gallery"
#: generations the change log (``changed_identities``) keeps; a replica further behind rebuilds
CHANGE_LOG_KEEP = 100_000


class _Retry(Exception):
    """A stale connection failed before anything was sent: reconnect and run again."""


class PostgresGalleryStore(PostgresCatalogue, PostgresReads):
    """A :class:`~index.store.GalleryStore` in a PostgreSQL database (see the module docstring).

    Thread-safe: reads share one autocommit connection, changes another, each under its own lock,
    so reads go on while a change waits for another replica's lock.

    Args:
        url: ``postgresql://user:password@host:port/database`` (libpq's URL or key=value form).
        dim: embedding dimension; must match the one recorded in the database.
        model_sha256: checksum of the model that produced the embeddings (recorded by the first
            store that opens the database, checked by every later one).
        durable: keep ``synchronous_commit`` on; False only for throw-away galleries.
        busy_timeout_s: how long a change waits for another replica's change, in seconds.
        connect_timeout_s: how long to wait for the server when (re)connecting, in seconds.

    Raises:
        SchemaVersionError: the database's schema is not this code's (run ``whaleid store migrate``).
        ManifestMismatchError: the database holds embeddings of another dimension or model.
        DatabaseUnavailableError: (and the other :class:`~core.errors.StorageError` types, from any
            method) the server cannot be reached, or another change held the lock too long.
    """

    def __init__(
        self,
        url: str,
        dim: int,
        model_sha256: str | None = None,
        durable: bool = True,
        busy_timeout_s: float = 5.0,
        connect_timeout_s: float = 3.0,
    ):
        self.url = url
        self.path = redact(url)
        self.dim = int(dim)
        self.busy_timeout_s = float(busy_timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.durable = bool(durable)
        self.last_change: tuple[int, int] | None = None
        self._rlock, self._wlock = threading.RLock(), threading.RLock()
        self._conns: dict[str, psycopg.Connection | None] = {"read": None, "write": None}
        self._callbacks: list[Callable[[int | None], None]] = []
        self._listener: threading.Thread | None = None
        self._closed = threading.Event()
        self._read(lambda c: check_schema(c, self.path))
        self._init_meta(model_sha256)

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=max(1, round(self.connect_timeout_s)),
            application_name="whaleid",
        )
        if not self.durable:
            conn.execute("SET synchronous_commit = off")
        return conn

    def _conn(self, role: str) -> psycopg.Connection:
        conn = self._conns[role]
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = self._conns[role] = self._connect()
        return conn

    def _read(self, fn):
        """``fn(connection)`` on the read connection; retried once on a fresh connection when the old
        one turned out dead (e.g. after a server restart). psycopg errors become typed errors."""
        with self._rlock:
            for attempt in (0, 1):
                try:
                    conn = self._conn("read")
                    return fn(conn)
                except psycopg.Error as exc:
                    if attempt == 0 and self._conns["read"] is not None and self._conns["read"].broken:
                        continue
                    raise translate(exc, self.path) from exc
        raise AssertionError("unreachable")

    def _write(self, fn):
        """``fn(connection, generation)`` in one transaction holding the ``generation`` row lock.

        ``fn`` returns ``(result, changed)``; when ``changed`` the generation is raised and a
        notification sent, both committed with the change. Retried once on a fresh connection when
        the old one died before the lock was granted (nothing was sent then).

        Raises:
            StoreBusyError: another change held the lock longer than ``busy_timeout_s``.
            DatabaseUnavailableError: the server cannot be reached (the change was rolled back).
        """
        with self._wlock:
            for attempt in (0, 1):
                try:
                    return self._write_once(fn)
                except _Retry as stale:
                    if attempt == 1:
                        raise translate(stale.__cause__, self.path) from stale.__cause__
                except psycopg.Error as exc:
                    raise translate(exc, self.path) from exc
        raise AssertionError("unreachable")

    def _write_once(self, fn):
        conn = self._conn("write")
        started = False
        try:
            with conn.transaction():
                # lock_timeout 0 would mean "wait forever": at least 1 ms
                conn.execute(f"SET LOCAL lock_timeout = '{max(1, round(self.busy_timeout_s * 1000))}ms'")
                gen = int(conn.execute("SELECT value FROM generation FOR UPDATE").fetchone()[0])
                started = True
                result, changed = fn(conn, gen)
                if changed:
                    conn.execute("UPDATE generation SET value = value + 1")
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(gen + 1)))
                    if (gen + 1) % 1000 == 0:
                        conn.execute(
                            "DELETE FROM changed_identities WHERE generation <= %s", (gen + 1 - CHANGE_LOG_KEEP,)
                        )
        except psycopg.Error as exc:
            if not started and conn.broken:
                raise _Retry() from exc
            raise
        if changed:
            self.last_change = (gen, gen + 1)  # read by Gallery (one writer thread at a time) after the call
        return result

    # -- meta --------------------------------------------------------------------------------

    def _init_meta(self, model_sha256: str | None) -> None:
        def init(conn, _gen):
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if "dim" not in rows:
                new = {"schema_version": SCHEMA_VERSION, "dim": self.dim, "next_auto_id": 1}
                if model_sha256:
                    new["model_sha256"] = model_sha256
                for key, value in new.items():
                    conn.execute("INSERT INTO meta (key, value) VALUES (%s, %s)", (key, str(value)))
                rows = {k: str(v) for k, v in new.items()}
            return rows, False

        rows = self._write(init)
        check_recorded_model(self.path, self.dim, rows["dim"], model_sha256, rows.get("model_sha256"))

    @property
    def generation(self) -> int:
        """A counter raised by every committed change (by any replica)."""
        return self._read(lambda c: int(c.execute("SELECT value FROM generation").fetchone()[0]))

    def meta(self, key: str) -> str | None:
        if key == "generation":
            return str(self.generation)
        row = self._read(lambda c: c.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone())
        return None if row is None else row[0]

    # -- changes -----------------------------------------------------------------------------

    def next_auto_whale_id(self) -> str:
        """A new readable whale id, ``whale-00001``, ``whale-00002``..., never handed out twice."""

        def pick(conn, _gen):
            n = int(conn.execute("SELECT value FROM meta WHERE key = 'next_auto_id' FOR UPDATE").fetchone()[0])
            while True:
                candidate = f"whale-{n:05d}"
                n += 1
                if conn.execute("SELECT 1 FROM identities WHERE whale_id = %s", (candidate,)).fetchone() is None:
                    break
            conn.execute("UPDATE meta SET value = %s WHERE key = 'next_auto_id'", (str(n),))
            return candidate, False

        return self._write(pick)

    def add_images(self, whale_id: str, images: Iterable[NewImage], flipped: bool = False) -> AddOutcome:
        """Add photos to an identity (created when absent); see :meth:`add_image_groups`."""
        return self.add_image_groups([(whale_id, images, flipped)])[0]

    def add_image_groups(
        self, groups: Sequence[tuple[str, Iterable[NewImage], bool]], actor: str | None = None
    ) -> list[AddOutcome]:
        """Add photos to several identities in one transaction: all or nothing.

        A photo whose sha256 the identity already holds is skipped and reported as a duplicate.

        Args:
            groups: ``(whale_id, images, flipped)`` per identity; embeddings ``(d,) float32``.

        Returns:
            One :class:`AddOutcome` per group, in order.

        Raises:
            ValueError: an embedding of another shape, or not finite.
        """
        groups = [(whale_id, list(images), bool(flipped)) for whale_id, images, flipped in groups]
        for _, images, _ in groups:
            for img in images:
                emb = np.asarray(img.embedding, dtype=np.float32).reshape(-1)
                if emb.shape != (self.dim,) or not np.isfinite(emb).all():
                    raise ValueError(f"embedding must be ({self.dim},) finite float32, got {emb.shape}")

        def add(conn, _gen):
            outcomes, changed = [], False
            for whale_id, images, flipped in groups:
                outcome, group_changed = self._add_group(conn, whale_id, images, flipped)
                outcomes.append(outcome)
                changed = changed or group_changed
                if outcome.added_ids and not flipped:
                    audit(conn, "enrol", actor, whale_id=whale_id, image_ids=outcome.added_ids)
            return outcomes, changed

        return self._write(add)

    def _add_group(self, conn, whale_id: str, images: list[NewImage], flipped: bool) -> tuple[AddOutcome, bool]:
        row = conn.execute("SELECT id FROM identities WHERE whale_id = %s", (whale_id,)).fetchone()
        created = row is None
        if created:
            row = conn.execute(
                "INSERT INTO identities (whale_id, flipped, created_at) VALUES (%s, %s, %s) RETURNING id",
                (whale_id, flipped, _now()),
            ).fetchone()
        ident = int(row[0])
        added, positions, dupes = [], [], []
        for pos, img in enumerate(images):
            existing = conn.execute(
                "SELECT id FROM images WHERE identity_id = %s AND sha256 = %s", (ident, img.sha256)
            ).fetchone()
            if existing:
                dupes.append(int(existing[0]))
                continue
            box = None if img.box_xyxy_px is None else json.dumps([round(float(v), 2) for v in img.box_xyxy_px])
            new = conn.execute(
                "INSERT INTO images (identity_id, sha256, source, box, embedding, added_at, thumbnail, local_features,"
                " metadata, phash, original, edge) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " RETURNING id",
                (
                    ident,
                    img.sha256,
                    img.source,
                    box,
                    np.asarray(img.embedding, dtype=np.float32).reshape(-1).tobytes(),
                    _now(),
                    img.thumbnail,
                    img.local_features,
                    Jsonb(img.metadata) if img.metadata else None,
                    img.phash,
                    img.original,
                    img.edge,
                ),
            ).fetchone()
            added.append(int(new[0]))
            positions.append(pos)
        return AddOutcome(ident, added, positions, dupes), bool(added) or created

    def remove_identity(self, whale_id: str, actor: str | None = None) -> list[int]:
        """Delete an identity, its mirror and their photos. Returns the deleted identity ids.

        Raises:
            UnknownIdentityError: no such identity.
        """

        def remove(conn, _gen):
            rows = conn.execute(
                "DELETE FROM identities WHERE whale_id = ANY(%s) RETURNING id, whale_id",
                ([whale_id, flipped_id(whale_id)],),
            ).fetchall()
            ids = dict((name, int(i)) for i, name in rows)
            if whale_id not in ids:
                raise UnknownIdentityError(whale_id)  # rolls back (the mirror alone is not removed)
            audit(conn, "delete_whale", actor, whale_id=whale_id)
            return [ids[whale_id]] + ([ids[flipped_id(whale_id)]] if flipped_id(whale_id) in ids else []), True

        return self._write(remove)

    def remove_image(self, whale_id: str, image_id: int, actor: str | None = None) -> tuple[int, str, bool]:
        """Delete one photo (and its mirror copy); an identity left without photos is deleted.

        Returns:
            ``(identity_id, sha256, identity_deleted)``.

        Raises:
            UnknownIdentityError, UnknownImageError.
        """

        def remove(conn, _gen):
            row = conn.execute("SELECT id FROM identities WHERE whale_id = %s", (whale_id,)).fetchone()
            if row is None:
                raise UnknownIdentityError(whale_id)
            ident = int(row[0])
            img = conn.execute(
                "DELETE FROM images WHERE id = %s AND identity_id = %s RETURNING sha256", (int(image_id), ident)
            ).fetchone()
            if img is None:
                raise UnknownImageError(whale_id, int(image_id))
            sha = img[0]
            mirror = conn.execute("SELECT id FROM identities WHERE whale_id = %s", (flipped_id(whale_id),)).fetchone()
            if mirror is not None:
                conn.execute("DELETE FROM images WHERE identity_id = %s AND sha256 = %s", (int(mirror[0]), sha))
            left = conn.execute("SELECT EXISTS (SELECT 1 FROM images WHERE identity_id = %s)", (ident,)).fetchone()[0]
            if not left:
                conn.execute("DELETE FROM identities WHERE whale_id = ANY(%s)", ([whale_id, flipped_id(whale_id)],))
            audit(conn, "delete_photo", actor, whale_id=whale_id, image_id=int(image_id), whale_deleted=not left)
            return (ident, sha, not left), True

        return self._write(remove)

    def changes_since(self, generation: int) -> tuple[int, set[int]] | None:
        """The identities changed after ``generation``, from the change log, in one consistent read.

        Returns:
            ``(current generation, identity ids changed in between)`` (deleted ones included), or None
            when the log no longer reaches back to ``generation`` (the caller rebuilds from the store).
        """

        def read(c):
            with c.transaction():
                c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                current = int(c.execute("SELECT value FROM generation").fetchone()[0])
                if generation >= current:
                    return current, set()
                oldest = c.execute("SELECT min(generation) FROM changed_identities").fetchone()[0]
                if generation < 0 or oldest is None or oldest > generation + 1:
                    return None
                rows = c.execute(
                    "SELECT DISTINCT identity_id FROM changed_identities WHERE generation > %s AND generation <= %s",
                    (generation, current),
                ).fetchall()
                return current, {int(r[0]) for r in rows}

        return self._read(read)

    # -- change feed -------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[int | None], None]) -> None:
        """Call ``callback(generation)`` from a listener thread after each change any replica commits.

        ``generation`` is the one the change committed, or None after the listener (re)connected
        (changes may have been missed meanwhile). A callback's exception is logged, not raised.
        """
        self._callbacks.append(callback)
        if self._listener is None:
            self._listener = threading.Thread(target=self._listen, name="whaleid-store-listener", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        backoff = 0.2
        while not self._closed.is_set():
            conn = None
            try:
                conn = self._connect()
                conn.execute(f"LISTEN {CHANNEL}")
                backoff = 0.2
                self._notify_all(None)
                while not self._closed.is_set():
                    for note in conn.notifies(timeout=0.5):
                        self._notify_all(int(note.payload))
            except psycopg.Error as exc:
                if not self._closed.is_set():
                    log.warning("gallery store %s: change feed lost (%s); reconnecting", self.path, exc)
                    self._closed.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
            finally:
                if conn is not None:
                    conn.close()

    def _notify_all(self, generation: int | None) -> None:
        for callback in list(self._callbacks):
            try:
                callback(generation)
            except Exception:  # a replica that cannot catch up now does on its next search
                log.warning("gallery store %s: change callback failed", self.path, exc_info=True)

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
        for role, lock in (("read", self._rlock), ("write", self._wlock)):
            with lock:
                conn, self._conns[role] = self._conns[role], None
                if conn is not None:
                    conn.close()
