"""The catalogue operations of :class:`index.store.sqlite.SQLiteGalleryStore`: rename, merge, move
photos (split), photo metadata and the audit log (a mixin: it needs the store's ``_write`` transaction,
``_identity_row``, ``_audit`` and ``_bump``).

Each operation is one ``BEGIN IMMEDIATE`` transaction, fsynced on commit, with its audit entry inside
it: after a crash the catalogue is as before the operation or as after it, never between. Two requests
changing the same whale run one after the other (SQLite's write lock); the second sees the first's result
(e.g. merging a whale that a first merge already removed is an ``UnknownIdentityError``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from core.errors import IdentityConflictError, InvalidRequestError, UnknownIdentityError, UnknownImageError
from index.store.base import AuditRecord, MergeOutcome, MoveOutcome, _now, flipped_id, validate_whale_id


class SQLiteCatalogue:
    """Identity operations, metadata and the audit log (see the module docstring)."""

    def _require(self, whale_id: str) -> int:
        row = self._identity_row(whale_id)
        if row is None:
            raise UnknownIdentityError(whale_id)
        return int(row[0])

    def _ensure(self, whale_id: str, flipped: bool) -> tuple[int, bool]:
        """The identity's id, created when absent: ``(id, created)``."""
        row = self._identity_row(whale_id)
        if row is not None:
            return int(row[0]), False
        cur = self._db.execute(
            "INSERT INTO identities(whale_id, flipped, created_at) VALUES (?, ?, ?)", (whale_id, int(flipped), _now())
        )
        return int(cur.lastrowid), True

    def _move_rows(self, image_ids: list[int], src: int, dst: int) -> tuple[list[int], list[int]]:
        """Move photos from identity ``src`` to ``dst``; one ``dst`` already holds (same sha256) is deleted
        instead. Returns ``(moved, dropped)``."""
        moved, dropped = [], []
        for image_id in image_ids:
            sha = self._db.execute("SELECT sha256 FROM images WHERE id=? AND identity_id=?", (image_id, src)).fetchone()
            if sha is None:
                continue
            if self._db.execute("SELECT 1 FROM images WHERE identity_id=? AND sha256=?", (dst, sha[0])).fetchone():
                self._db.execute("DELETE FROM images WHERE id=?", (image_id,))
                dropped.append(image_id)
            else:
                self._db.execute("UPDATE images SET identity_id=? WHERE id=?", (dst, image_id))
                moved.append(image_id)
        return moved, dropped

    def _mirror_ids(self, ident: int, shas: list[str]) -> list[int]:
        if not shas:
            return []
        marks = ",".join("?" * len(shas))
        rows = self._db.execute(f"SELECT id FROM images WHERE identity_id=? AND sha256 IN ({marks})", (ident, *shas))
        return [int(r[0]) for r in rows.fetchall()]

    def _drop_if_empty(self, ident: int) -> bool:
        if self._db.execute("SELECT 1 FROM images WHERE identity_id=? LIMIT 1", (ident,)).fetchone():
            return False
        self._db.execute("DELETE FROM identities WHERE id=?", (ident,))
        return True

    def rename_identity(self, whale_id: str, new_whale_id: str, actor: str | None = None) -> int:
        """See :meth:`index.store.GalleryStore.rename_identity`."""
        validate_whale_id(new_whale_id)
        with self._write():
            ident = self._require(whale_id)
            if new_whale_id == whale_id:
                return ident
            if self._identity_row(new_whale_id) is not None:
                raise IdentityConflictError(f"whale_id {new_whale_id!r} is taken: merge the two whales instead")
            self._db.execute("UPDATE identities SET whale_id=? WHERE id=?", (new_whale_id, ident))
            mirror = self._identity_row(flipped_id(whale_id))
            if mirror is not None:
                self._db.execute("UPDATE identities SET whale_id=? WHERE id=?", (flipped_id(new_whale_id), mirror[0]))
            self._audit("rename", actor, whale_id=whale_id, new_whale_id=new_whale_id)
            self._bump()
        return ident

    def merge_identities(self, source: str, target: str, actor: str | None = None) -> MergeOutcome:
        """See :meth:`index.store.GalleryStore.merge_identities`."""
        if source == target:
            raise InvalidRequestError(f"cannot merge whale {source!r} into itself")
        with self._write():
            src, dst = self._require(source), self._require(target)
            ids = [int(r[0]) for r in self._db.execute("SELECT id FROM images WHERE identity_id=?", (src,)).fetchall()]
            moved, dropped = self._move_rows(ids, src, dst)
            removed = [src]
            self._db.execute("DELETE FROM identities WHERE id=?", (src,))
            mirror = self._identity_row(flipped_id(source))
            if mirror is not None:
                mirror_dst, _ = self._ensure(flipped_id(target), True)
                rows = self._db.execute("SELECT id FROM images WHERE identity_id=?", (mirror[0],)).fetchall()
                self._move_rows([int(r[0]) for r in rows], int(mirror[0]), mirror_dst)
                self._db.execute("DELETE FROM identities WHERE id=?", (mirror[0],))
                removed.append(int(mirror[0]))
            self._audit("merge", actor, whale_id=source, into=target, moved=moved, dropped_duplicates=dropped)
            self._bump()
        return MergeOutcome(dst, removed, moved, dropped)

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
        with self._write():
            src = self._require(whale_id)
            marks = ",".join("?" * len(ids))
            rows = self._db.execute(
                f"SELECT id, sha256 FROM images WHERE identity_id=? AND id IN ({marks})", (src, *ids)
            ).fetchall()
            found = {int(r[0]): r[1] for r in rows}
            missing = [i for i in ids if i not in found]
            if missing:
                raise UnknownImageError(whale_id, missing[0])
            dst, created = self._ensure(target, False)
            moved, _ = self._move_rows(ids, src, dst)
            mirror = self._identity_row(flipped_id(whale_id))
            if mirror is not None:
                mirror_dst, _ = self._ensure(flipped_id(target), True)
                self._move_rows(self._mirror_ids(int(mirror[0]), list(found.values())), int(mirror[0]), mirror_dst)
            source_deleted = self._drop_if_empty(src)
            if source_deleted and mirror is not None:
                self._db.execute("DELETE FROM images WHERE identity_id=?", (mirror[0],))
            if mirror is not None:
                self._drop_if_empty(int(mirror[0]))  # a mirror left without photos goes too
            self._audit("move_photos", actor, whale_id=whale_id, to=target, image_ids=ids, created=created)
            self._bump()
        return MoveOutcome(src, dst, moved, created, source_deleted)

    def update_metadata(self, whale_id: str, image_id: int, metadata: dict[str, Any], actor: str | None = None) -> None:
        """See :meth:`index.store.GalleryStore.update_metadata`."""
        with self._write():
            ident = self._require(whale_id)
            row = self._db.execute(
                "SELECT metadata FROM images WHERE id=? AND identity_id=?", (int(image_id), ident)
            ).fetchone()
            if row is None:
                raise UnknownImageError(whale_id, int(image_id))
            current = json.loads(row[0]) if row[0] else {}
            current.update(metadata)
            current = {k: v for k, v in current.items() if v is not None}
            self._db.execute(
                "UPDATE images SET metadata=? WHERE id=?", (json.dumps(current) if current else None, int(image_id))
            )
            self._audit("edit_metadata", actor, whale_id=whale_id, image_id=int(image_id), fields=sorted(metadata))
            self._bump()

    def audit_log(self, offset: int = 0, limit: int = 100) -> list[AuditRecord]:
        """See :meth:`index.store.GalleryStore.audit_log`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, at, operation, actor, details FROM audit ORDER BY id DESC LIMIT ? OFFSET ?",
                (int(limit), int(offset)),
            ).fetchall()
        return [AuditRecord(int(r[0]), r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def count_audit(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM audit").fetchone()[0])
