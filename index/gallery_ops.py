"""The catalogue operations of :class:`index.gallery.Gallery`: rename, merge, move photos, edit metadata,
scoped rankings (a mixin: it needs the gallery's store, locks, names and ``_resync``).

Each operation commits in the store first (one durable transaction), then brings the in-memory FAISS
index in line with it under the gallery's change lock, so searches see the catalogue before or after.
"""

from __future__ import annotations

from collections.abc import Sequence

from index.metadata import SearchScope
from index.store import MergeOutcome, MoveOutcome, flipped_id


class CatalogueOps:
    """Identity operations and scoped rankings of a :class:`~index.gallery.Gallery`."""

    def _resync_all(self, idents) -> None:
        for ident in idents:
            self._resync(ident)
        if not self._track():
            self._load_or_rebuild()

    def rename(self, whale_id: str, new_whale_id: str, actor: str | None = None) -> None:
        """Rename a whale and its mirror (durable when this returns); its vectors stay as they are.

        Raises:
            UnknownIdentityError, InvalidIdentityError, IdentityConflictError.
        """
        with self._mutate:
            ident = self.store.rename_identity(whale_id, new_whale_id, actor)
            names = self.store.identity_names()
            with self._rw.write():
                for i in (ident, *(j for j, (n, _) in names.items() if n == flipped_id(new_whale_id))):
                    if i in names:
                        self._names[i] = names[i]
            if not self._track():
                self._load_or_rebuild()

    def merge(self, source: str, target: str, actor: str | None = None) -> MergeOutcome:
        """Merge whale ``source`` into ``target`` (see :meth:`GalleryStore.merge_identities`).

        Raises:
            UnknownIdentityError, InvalidRequestError.
        """
        with self._mutate:
            out = self.store.merge_identities(source, target, actor)
            names = self.store.identity_names()
            mirror = next((i for i, (n, _) in names.items() if n == flipped_id(target)), None)
            with self._rw.write():
                if mirror is not None:
                    self._names[mirror] = names[mirror]
            self._resync_all([*out.removed_identity_ids, out.target_identity_id, *([mirror] if mirror else [])])
        return out

    def move(self, whale_id: str, image_ids: Sequence[int], target: str, actor: str | None = None) -> MoveOutcome:
        """Move photos of ``whale_id`` to ``target`` (created when absent; see :meth:`GalleryStore.move_images`).

        Raises:
            UnknownIdentityError, UnknownImageError, InvalidIdentityError, InvalidRequestError.
        """
        with self._mutate:
            out = self.store.move_images(whale_id, image_ids, target, actor)
            names = self.store.identity_names()
            touched = [out.source_identity_id, out.target_identity_id]
            with self._rw.write():
                for i, (name, flipped) in names.items():
                    if name in (target, flipped_id(target), flipped_id(whale_id)):
                        self._names[i] = (name, flipped)
                        touched.append(i)
            gone = [i for i in self._names if i not in names]
            self._resync_all([*touched, *gone])
        return out

    def update_metadata(self, whale_id: str, image_id: int, metadata: dict, actor: str | None = None) -> None:
        """Replace fields of a photo's metadata (no vector changes). Raises UnknownIdentityError,
        UnknownImageError."""
        with self._mutate:
            self.store.update_metadata(whale_id, image_id, metadata, actor)
            if not self._track():
                self._load_or_rebuild()

    def in_scope(self, scope: SearchScope) -> dict[int, str]:
        """``identity_id -> whale_id`` of the answerable whales with a photo inside ``scope``."""
        names = self.answerable_names()
        keep = {ident for _, ident, meta in self._photo_metadata() if scope.matches(meta)}
        return {i: n for i, n in names.items() if i in keep}

    def _photo_metadata(self) -> list:
        """Every photo's metadata, read from the store once per store generation (not once per scoped query)."""
        generation = self.store.generation
        cached = getattr(self, "_metadata_cache", None)
        if cached is None or cached[0] != generation:
            cached = self._metadata_cache = (generation, self.store.photo_metadata())
        return cached[1]
