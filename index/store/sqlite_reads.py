"""The read queries of :class:`index.store.sqlite.SQLiteGalleryStore` (a mixin: it needs the store's
``_db`` connection, ``_lock`` and ``dim``)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from core.errors import UnknownIdentityError
from index.store.base import RECORD_COLUMNS, IdentityRecord, ImageRecord, image_record


class SQLiteReads:
    """Read-only queries; each runs under the store's lock on its connection."""

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

    def photo_hashes(self) -> list[tuple[int, str, str]]:
        """``(image_id, whale_id, phash)`` of every photo with a perceptual hash (mirrors excluded)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT m.id, i.whale_id, m.phash FROM images m JOIN identities i ON i.id = m.identity_id "
                "WHERE i.flipped=0 AND m.phash IS NOT NULL"
            ).fetchall()
        return [(int(r[0]), r[1], r[2]) for r in rows]

    def photo_metadata(self) -> list[tuple[int, int, dict]]:
        """``(image_id, identity_id, metadata)`` of every photo with metadata (mirrors excluded)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT m.id, m.identity_id, m.metadata FROM images m JOIN identities i ON i.id = m.identity_id "
                "WHERE i.flipped=0 AND m.metadata IS NOT NULL"
            ).fetchall()
        return [(int(r[0]), int(r[1]), json.loads(r[2])) for r in rows]

    def edges_of(self, identity_ids: Sequence[int]) -> list[tuple[int, int, bytes]]:
        """``(image_id, identity_id, trailing-edge blob)`` of the photos of these identities that have one."""
        ids = [int(i) for i in identity_ids]
        out = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(
                    f"SELECT id, identity_id, edge FROM images WHERE identity_id IN ({marks}) AND edge IS NOT NULL"
                    " ORDER BY id",
                    chunk,
                ).fetchall()
            out += [(int(r[0]), int(r[1]), bytes(r[2])) for r in rows]
        return out

    def original_of(self, image_id: int) -> bytes | None:
        """A photo's original bytes, when stored."""
        with self._lock:
            row = self._db.execute("SELECT original FROM images WHERE id=?", (int(image_id),)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def export_rows(self):
        """Every photo (mirrors excluded), by image id: ``(whale_id, ImageRecord, original bytes or None)``."""
        with self._lock:
            ids = [
                (int(r[0]), r[1])
                for r in self._db.execute(
                    "SELECT m.id, i.whale_id FROM images m JOIN identities i ON i.id = m.identity_id "
                    "WHERE i.flipped=0 ORDER BY m.id"
                ).fetchall()
            ]
        for image_id, whale_id in ids:
            with self._lock:
                r = self._db.execute(
                    f"SELECT {RECORD_COLUMNS}, original FROM images WHERE id=?", (image_id,)
                ).fetchone()
            if r is not None:
                yield whale_id, image_record(whale_id, r[:-1]), (None if r[-1] is None else bytes(r[-1]))

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
                f"SELECT {RECORD_COLUMNS} FROM images WHERE identity_id=? ORDER BY id", (int(row[0]),)
            ).fetchall()
        return [image_record(whale_id, r) for r in rows]

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


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"
