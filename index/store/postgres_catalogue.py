"""The catalogue operations of :class:`index.store.postgres.PostgresGalleryStore`: rename, merge, move
photos (split), photo metadata and the audit log (a mixin: it needs the store's ``_write(fn)`` and
``_read(fn)`` runners).

Each operation is one transaction holding the ``generation`` row lock (see
:mod:`index.store.postgres`), with its audit entry inside it: replicas' operations on the catalogue
run one after the other, and each sees the result of the ones before. A merge racing an enrolment
into the merged-away whale: merge first, then the enrolment re-creates that whale under a new id;
enrolment first, then the merge moves the new photos too. A rename racing an enrolment under the old
name likewise: the enrolment either lands before the rename (and is renamed with the whale) or
creates a new whale with the old name after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from core.errors import IdentityConflictError, InvalidRequestError, UnknownIdentityError, UnknownImageError
from index.store.base import AuditRecord, MergeOutcome, MoveOutcome, _now, flipped_id, validate_whale_id


def _identity(conn, whale_id: str) -> int | None:
    row = conn.execute("SELECT id FROM identities WHERE whale_id = %s", (whale_id,)).fetchone()
    return None if row is None else int(row[0])


def _require(conn, whale_id: str) -> int:
    ident = _identity(conn, whale_id)
    if ident is None:
        raise UnknownIdentityError(whale_id)
    return ident


def _ensure(conn, whale_id: str, flipped: bool) -> tuple[int, bool]:
    """The identity's id, created when absent: ``(id, created)``."""
    ident = _identity(conn, whale_id)
    if ident is not None:
        return ident, False
    row = conn.execute(
        "INSERT INTO identities (whale_id, flipped, created_at) VALUES (%s, %s, %s) RETURNING id",
        (whale_id, flipped, _now()),
    ).fetchone()
    return int(row[0]), True


def _move_rows(conn, image_ids: list[int], src: int, dst: int) -> tuple[list[int], list[int]]:
    """Move photos from identity ``src`` to ``dst``; one ``dst`` already holds (same sha256) is deleted
    instead. Returns ``(moved, dropped)``."""
    moved, dropped = [], []
    for image_id in image_ids:
        sha = conn.execute("SELECT sha256 FROM images WHERE id = %s AND identity_id = %s", (image_id, src)).fetchone()
        if sha is None:
            continue
        if conn.execute("SELECT 1 FROM images WHERE identity_id = %s AND sha256 = %s", (dst, sha[0])).fetchone():
            conn.execute("DELETE FROM images WHERE id = %s", (image_id,))
            dropped.append(image_id)
        else:
            conn.execute("UPDATE images SET identity_id = %s WHERE id = %s", (dst, image_id))
            moved.append(image_id)
    return moved, dropped


def _images_of(conn, ident: int) -> list[int]:
    return [int(r[0]) for r in conn.execute("SELECT id FROM images WHERE identity_id = %s ORDER BY id", (ident,))]


def audit(conn, operation: str, actor: str | None, **details) -> None:
    """One audit entry, inside the change's own transaction."""
    conn.execute(
        "INSERT INTO audit (at, operation, actor, details) VALUES (%s, %s, %s, %s)",
        (_now(), operation, actor, Jsonb(details)),
    )


class PostgresCatalogue:
    """Identity operations, metadata and the audit log (see the module docstring)."""

    def rename_identity(self, whale_id: str, new_whale_id: str, actor: str | None = None) -> int:
        """See :meth:`index.store.GalleryStore.rename_identity`."""
        validate_whale_id(new_whale_id)

        def rename(conn, _gen):
            ident = _require(conn, whale_id)
            if new_whale_id == whale_id:
                return ident, False
            if _identity(conn, new_whale_id) is not None:
                raise IdentityConflictError(f"whale_id {new_whale_id!r} is taken: merge the two whales instead")
            conn.execute("UPDATE identities SET whale_id = %s WHERE id = %s", (new_whale_id, ident))
            conn.execute(
                "UPDATE identities SET whale_id = %s WHERE whale_id = %s",
                (flipped_id(new_whale_id), flipped_id(whale_id)),
            )
            audit(conn, "rename", actor, whale_id=whale_id, new_whale_id=new_whale_id)
            return ident, True

        return self._write(rename)

    def merge_identities(self, source: str, target: str, actor: str | None = None) -> MergeOutcome:
        """See :meth:`index.store.GalleryStore.merge_identities`."""
        if source == target:
            raise InvalidRequestError(f"cannot merge whale {source!r} into itself")

        def merge(conn, _gen):
            src, dst = _require(conn, source), _require(conn, target)
            moved, dropped = _move_rows(conn, _images_of(conn, src), src, dst)
            removed = [src]
            conn.execute("DELETE FROM identities WHERE id = %s", (src,))
            mirror = _identity(conn, flipped_id(source))
            if mirror is not None:
                mirror_dst, _ = _ensure(conn, flipped_id(target), True)
                _move_rows(conn, _images_of(conn, mirror), mirror, mirror_dst)
                conn.execute("DELETE FROM identities WHERE id = %s", (mirror,))
                removed.append(mirror)
            audit(conn, "merge", actor, whale_id=source, into=target, moved=moved, dropped_duplicates=dropped)
            return MergeOutcome(dst, removed, moved, dropped), True

        return self._write(merge)

    def move_images(
        self, whale_id: str, image_ids: Sequence[int], target: str, actor: str | None = None
    ) -> MoveOutcome:
        """See :meth:`index.store.GalleryStore.move_images`."""
        validate_whale_id(target)
        ids = sorted({int(i) for i in image_ids})
        if not ids:
            raise InvalidRequestError("no photos to move: give at least one image id")
        if target == whale_id:
            raise InvalidRequestError(f"the photos are already whale {whale_id!r}'s")

        def move(conn, _gen):
            src = _require(conn, whale_id)
            rows = conn.execute(
                "SELECT id, sha256 FROM images WHERE identity_id = %s AND id = ANY(%s)", (src, ids)
            ).fetchall()
            found = {int(r[0]): r[1] for r in rows}
            missing = [i for i in ids if i not in found]
            if missing:
                raise UnknownImageError(whale_id, missing[0])
            dst, created = _ensure(conn, target, False)
            moved, _ = _move_rows(conn, ids, src, dst)
            mirror = _identity(conn, flipped_id(whale_id))
            if mirror is not None:
                mirror_dst, _ = _ensure(conn, flipped_id(target), True)
                mirror_ids = conn.execute(
                    "SELECT id FROM images WHERE identity_id = %s AND sha256 = ANY(%s) ORDER BY id",
                    (mirror, list(found.values())),
                ).fetchall()
                _move_rows(conn, [int(r[0]) for r in mirror_ids], mirror, mirror_dst)
            source_deleted = not conn.execute(
                "SELECT EXISTS (SELECT 1 FROM images WHERE identity_id = %s)", (src,)
            ).fetchone()[0]
            if source_deleted:
                conn.execute("DELETE FROM identities WHERE id = %s", (src,))
                if mirror is not None:
                    conn.execute("DELETE FROM identities WHERE id = %s", (mirror,))  # its photos cascade
            elif (
                mirror is not None
                and not conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM images WHERE identity_id = %s)", (mirror,)
                ).fetchone()[0]
            ):
                conn.execute("DELETE FROM identities WHERE id = %s", (mirror,))  # a mirror left without photos
            audit(conn, "move_photos", actor, whale_id=whale_id, to=target, image_ids=ids, created=created)
            return MoveOutcome(src, dst, moved, created, source_deleted), True

        return self._write(move)

    def update_metadata(self, whale_id: str, image_id: int, metadata: dict[str, Any], actor: str | None = None) -> None:
        """See :meth:`index.store.GalleryStore.update_metadata`."""

        def update(conn, _gen):
            ident = _require(conn, whale_id)
            row = conn.execute(
                "SELECT metadata FROM images WHERE id = %s AND identity_id = %s FOR UPDATE", (int(image_id), ident)
            ).fetchone()
            if row is None:
                raise UnknownImageError(whale_id, int(image_id))
            current = dict(row[0] or {})
            current.update(metadata)
            current = {k: v for k, v in current.items() if v is not None}
            conn.execute(
                "UPDATE images SET metadata = %s WHERE id = %s", (Jsonb(current) if current else None, int(image_id))
            )
            audit(conn, "edit_metadata", actor, whale_id=whale_id, image_id=int(image_id), fields=sorted(metadata))
            return None, True

        self._write(update)

    def audit_log(self, offset: int = 0, limit: int = 100) -> list[AuditRecord]:
        """See :meth:`index.store.GalleryStore.audit_log`."""
        rows = self._read(
            lambda c: c.execute(
                "SELECT id, at, operation, actor, details FROM audit ORDER BY id DESC LIMIT %s OFFSET %s",
                (int(limit), int(offset)),
            ).fetchall()
        )
        return [AuditRecord(int(r[0]), r[1], r[2], r[3], dict(r[4])) for r in rows]

    def count_audit(self) -> int:
        return int(self._read(lambda c: c.execute("SELECT COUNT(*) FROM audit").fetchone()[0]))
