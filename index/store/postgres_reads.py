"""The read queries of :class:`index.store.postgres.PostgresGalleryStore` (a mixin: it needs the
store's ``_read(fn)`` runner and ``dim``). Each query is one autocommit statement, except
:meth:`PostgresReads.snapshot`, one ``REPEATABLE READ`` transaction."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from core.errors import UnknownIdentityError
from index.store.base import RECORD_COLUMNS, IdentityRecord, ImageRecord, image_record

#: photos per query when every embedding is read (a chunk's embeddings travel as one bytea: 40 MB at 512-d)
CHUNK = 20_000


class PostgresReads:
    """Read-only queries of the PostgreSQL store."""

    def _rows(self, sql: str, params=()) -> list[tuple]:
        return self._read(lambda c: c.execute(sql, params).fetchall())

    def _one(self, sql: str, params=()):
        return self._read(lambda c: c.execute(sql, params).fetchone())

    def _stack(self, blobs) -> np.ndarray:
        vecs = [np.frombuffer(b, dtype=np.float32) for b in blobs]
        if not vecs:
            return np.empty((0, self.dim), np.float32)
        return np.stack(vecs).astype(np.float32)

    # -- identities ----------------------------------------------------------------------------

    def identity_id(self, whale_id: str) -> int:
        """The integer id of ``whale_id`` (its FAISS id). Raises UnknownIdentityError."""
        row = self._one("SELECT id FROM identities WHERE whale_id = %s", (whale_id,))
        if row is None:
            raise UnknownIdentityError(whale_id)
        return int(row[0])

    def has_identity(self, whale_id: str) -> bool:
        return self._one("SELECT 1 FROM identities WHERE whale_id = %s", (whale_id,)) is not None

    def identity_names(self) -> dict[int, tuple[str, bool]]:
        """``identity_id -> (whale_id, flipped)`` for every identity."""
        return {int(r[0]): (r[1], bool(r[2])) for r in self._rows("SELECT id, whale_id, flipped FROM identities")}

    def count_identities(self, include_flipped: bool = False) -> int:
        return int(self._one("SELECT COUNT(*) FROM identities" + ("" if include_flipped else " WHERE NOT flipped"))[0])

    def count_images(self, include_flipped: bool = False) -> int:
        sql = "SELECT COUNT(*) FROM images" + (
            "" if include_flipped else " WHERE identity_id IN (SELECT id FROM identities WHERE NOT flipped)"
        )
        return int(self._one(sql)[0])

    def list_identities(self, offset: int = 0, limit: int = 100, prefix: str = "") -> list[IdentityRecord]:
        """Identities (mirrors excluded) ordered by whale id (byte order, as SQLite), with photo counts."""
        rows = self._rows(
            "SELECT i.id, i.whale_id, i.flipped, COUNT(m.id), i.created_at FROM identities i "
            "LEFT JOIN images m ON m.identity_id = i.id WHERE NOT i.flipped AND starts_with(i.whale_id, %s) "
            'GROUP BY i.id ORDER BY i.whale_id COLLATE "C" LIMIT %s OFFSET %s',
            (prefix, int(limit), int(offset)),
        )
        return [IdentityRecord(int(r[0]), r[1], bool(r[2]), int(r[3]), r[4]) for r in rows]

    def count_matching(self, prefix: str = "") -> int:
        """Identities (mirrors excluded) whose whale id starts with ``prefix``."""
        return int(
            self._one("SELECT COUNT(*) FROM identities WHERE NOT flipped AND starts_with(whale_id, %s)", (prefix,))[0]
        )

    # -- photos ----------------------------------------------------------------------------------

    def images_of(self, whale_id: str) -> list[ImageRecord]:
        """One identity's photos, oldest first. Raises UnknownIdentityError."""

        def read(c):
            row = c.execute("SELECT id FROM identities WHERE whale_id = %s", (whale_id,)).fetchone()
            if row is None:
                return None
            return c.execute(
                f"SELECT {RECORD_COLUMNS} FROM images WHERE identity_id = %s ORDER BY id", (int(row[0]),)
            ).fetchall()

        rows = self._read(read)
        if rows is None:
            raise UnknownIdentityError(whale_id)
        return [image_record(whale_id, r) for r in rows]

    def image_ids_of(self, identity_id: int) -> set[int]:
        return {int(r[0]) for r in self._rows("SELECT id FROM images WHERE identity_id = %s", (int(identity_id),))}

    def image_owner(self, image_id: int) -> str | None:
        row = self._one(
            "SELECT i.whale_id FROM images m JOIN identities i ON i.id = m.identity_id WHERE m.id = %s",
            (int(image_id),),
        )
        return None if row is None else row[0]

    def image_sha256(self, image_id: int) -> str | None:
        row = self._one("SELECT sha256 FROM images WHERE id = %s", (int(image_id),))
        return None if row is None else row[0]

    def image_blob(self, image_id: int, column: str) -> bytes | None:
        """The ``thumbnail`` or ``local_features`` blob of a photo (None when not stored)."""
        if column not in ("thumbnail", "local_features"):
            raise ValueError(f"unknown blob column {column!r}")
        row = self._one(f"SELECT {column} FROM images WHERE id = %s", (int(image_id),))
        return None if row is None or row[0] is None else bytes(row[0])

    def photos_with_sha256(self, sha256: str) -> list[tuple[str, int]]:
        """``(whale_id, image_id)`` of the stored photos with these bytes (mirrors excluded)."""
        rows = self._rows(
            "SELECT i.whale_id, m.id FROM images m JOIN identities i ON i.id = m.identity_id "
            "WHERE m.sha256 = %s AND NOT i.flipped ORDER BY m.id",
            (sha256,),
        )
        return [(r[0], int(r[1])) for r in rows]

    def stored_photos(self) -> set[tuple[str, str]]:
        """``(whale_id, sha256)`` of every stored photo (mirrors excluded)."""
        rows = self._rows(
            "SELECT i.whale_id, m.sha256 FROM images m JOIN identities i ON i.id = m.identity_id WHERE NOT i.flipped"
        )
        return {(r[0], r[1]) for r in rows}

    def photo_hashes(self) -> list[tuple[int, str, str]]:
        """``(image_id, whale_id, phash)`` of every photo with a perceptual hash (mirrors excluded)."""
        rows = self._rows(
            "SELECT m.id, i.whale_id, m.phash FROM images m JOIN identities i ON i.id = m.identity_id "
            "WHERE NOT i.flipped AND m.phash IS NOT NULL"
        )
        return [(int(r[0]), r[1], r[2]) for r in rows]

    def photo_metadata(self) -> list[tuple[int, int, dict]]:
        """``(image_id, identity_id, metadata)`` of every photo with metadata (mirrors excluded)."""
        rows = self._rows(
            "SELECT m.id, m.identity_id, m.metadata FROM images m JOIN identities i ON i.id = m.identity_id "
            "WHERE NOT i.flipped AND m.metadata IS NOT NULL"
        )
        return [(int(r[0]), int(r[1]), dict(r[2])) for r in rows]

    def original_of(self, image_id: int) -> bytes | None:
        """A photo's original bytes, when stored."""
        row = self._one("SELECT original FROM images WHERE id = %s", (int(image_id),))
        return None if row is None or row[0] is None else bytes(row[0])

    def export_rows(self) -> Iterator[tuple[str, ImageRecord, bytes | None]]:
        """Every photo (mirrors excluded), by image id: ``(whale_id, ImageRecord, original bytes or None)``;
        one photo's row read at a time (the originals are not all held in memory)."""
        ids = self._rows(
            "SELECT m.id, i.whale_id FROM images m JOIN identities i ON i.id = m.identity_id "
            "WHERE NOT i.flipped ORDER BY m.id"
        )
        for image_id, whale_id in ids:
            r = self._one(f"SELECT {RECORD_COLUMNS}, original FROM images WHERE id = %s", (int(image_id),))
            if r is not None:
                yield whale_id, image_record(whale_id, r[:-1]), None if r[-1] is None else bytes(r[-1])

    # -- embeddings and local features -----------------------------------------------------------

    def embeddings_of(self, identity_id: int) -> np.ndarray:
        """``(n, d) float32`` embeddings of one identity's photos (``n`` may be 0)."""
        rows = self._rows("SELECT embedding FROM images WHERE identity_id = %s ORDER BY id", (int(identity_id),))
        return self._stack(r[0] for r in rows)

    def embeddings_with_ids(self, identity_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image_ids (n,) int64, embeddings (n, d) float32)`` of one identity."""
        rows = self._rows("SELECT id, embedding FROM images WHERE identity_id = %s ORDER BY id", (int(identity_id),))
        return np.array([r[0] for r in rows], dtype=np.int64), self._stack(r[1] for r in rows)

    def _embedding_rows(self, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.array([r[0] for r in rows], dtype=np.int64),
            np.array([r[1] for r in rows], dtype=np.int64),
            self._stack(r[2] for r in rows),
        )

    def all_embeddings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image_ids (n,) int64, identity_ids (n,) int64, embeddings (n, d) float32)`` of every photo."""
        return self._read(self._all_embeddings)

    def _all_embeddings(self, c) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every photo's embedding, ``CHUNK`` photos per query, each chunk's embeddings one ``bytea`` in
        binary format: a few large buffers instead of a Python row per photo (measured with
        ``scripts/pg_replica_memory.py``: see the README's "Many replicas on PostgreSQL")."""
        ids, idents, embs, last = [], [], [], 0
        cur = c.cursor(binary=True)
        while True:
            row = cur.execute(
                "SELECT array_agg(id ORDER BY id), array_agg(identity_id ORDER BY id), "
                "string_agg(embedding, ''::bytea ORDER BY id) FROM "
                "(SELECT id, identity_id, embedding FROM images WHERE id > %s ORDER BY id LIMIT %s) chunk",
                (last, CHUNK),
            ).fetchone()
            if row[0] is None:
                break
            ids.append(np.asarray(row[0], dtype=np.int64))
            idents.append(np.asarray(row[1], dtype=np.int64))
            embs.append(np.frombuffer(row[2], dtype=np.float32).reshape(-1, self.dim))
            last = int(ids[-1][-1])
        if not ids:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        return np.concatenate(ids), np.concatenate(idents), np.concatenate(embs)

    def all_embeddings_of_images(self, image_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`all_embeddings` for the given photos, in the order given (unknown ids skipped)."""
        ids = [int(i) for i in image_ids]
        rows = {
            int(r[0]): r for r in self._rows("SELECT id, identity_id, embedding FROM images WHERE id = ANY(%s)", (ids,))
        }
        return self._embedding_rows([rows[i] for i in ids if i in rows])

    def snapshot(self) -> tuple[int, dict[int, tuple[str, bool]], np.ndarray, np.ndarray, np.ndarray]:
        """``(generation, identity_names(), *all_embeddings())`` as of one consistent read: one
        ``REPEATABLE READ`` transaction, which never waits for a change in progress."""

        def read(c):
            with c.transaction():
                c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                gen = int(c.execute("SELECT value FROM generation").fetchone()[0])
                names = c.execute("SELECT id, whale_id, flipped FROM identities").fetchall()
                embeddings = self._all_embeddings(c)
            return gen, names, embeddings

        gen, names, embeddings = self._read(read)
        return (gen, {int(r[0]): (r[1], bool(r[2])) for r in names}, *embeddings)

    def local_features_of(self, identity_ids: Sequence[int]) -> list[tuple[int, int, bytes | None]]:
        """``(image_id, identity_id, blob)`` of every photo of the given identities."""
        if not identity_ids:
            return []
        rows = self._rows(
            "SELECT id, identity_id, local_features FROM images WHERE identity_id = ANY(%s) ORDER BY id",
            ([int(i) for i in identity_ids],),
        )
        return [(int(r[0]), int(r[1]), None if r[2] is None else bytes(r[2])) for r in rows]

    def edges_of(self, identity_ids: Sequence[int]) -> list[tuple[int, int, bytes]]:
        """``(image_id, identity_id, trailing-edge blob)`` of the photos of these identities that have one."""
        rows = self._rows(
            "SELECT id, identity_id, edge FROM images WHERE identity_id = ANY(%s) AND edge IS NOT NULL ORDER BY id",
            ([int(i) for i in identity_ids],),
        )
        return [(int(r[0]), int(r[1]), bytes(r[2])) for r in rows]

    def local_feature_owners(self) -> dict[int, int]:
        """``image_id -> identity_id`` of every photo with local features (no blob is read)."""
        rows = self._rows("SELECT id, identity_id FROM images WHERE local_features IS NOT NULL")
        return {int(r[0]): int(r[1]) for r in rows}

    def local_features_of_images(self, image_ids: Sequence[int]) -> list[tuple[int, int, bytes | None]]:
        """``(image_id, identity_id, blob)`` of the given photos (unknown ids skipped)."""
        rows = self._rows(
            "SELECT id, identity_id, local_features FROM images WHERE id = ANY(%s) ORDER BY id",
            ([int(i) for i in image_ids],),
        )
        return [(int(r[0]), int(r[1]), None if r[2] is None else bytes(r[2])) for r in rows]
