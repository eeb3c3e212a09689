"""What a gallery store is: its records, the whale-id rules, and the :class:`GalleryStore` interface.

Backends implement :class:`GalleryStore` (a :class:`typing.Protocol`): SQLite
(:class:`index.store.sqlite.SQLiteGalleryStore`) is the first, PostgreSQL
(:class:`index.store.postgres.PostgresGalleryStore`, shared by several service replicas) the second.
:mod:`index.gallery` (the FAISS index kept in step with the store), :mod:`index.local` and
:mod:`index.lnbnn` (local features), the identify pipeline and the service's routes use only the
operations listed here.

Guarantees every backend gives (the store test-suite, ``tests/index/test_store_contract.py``, checks
them against each):

* **Durable on return**: a change that returned has been committed to stable storage; a ``kill -9``
  afterwards loses nothing.
* **Atomic**: each change method is one transaction; a failure (a typed :class:`~core.errors.StorageError`)
  leaves the store as it was. :meth:`GalleryStore.add_image_groups` stores all its groups or none.
* **Generation**: every committed change raises :attr:`GalleryStore.generation`; a reader that saw
  generation ``g`` and reads ``g`` again has missed nothing (the FAISS snapshot's staleness test).
* **Ids never reused**: image and identity ids grow; a deleted id never comes back (cacheable
  thumbnail URLs, and the descriptor index's ids).
* **Concurrent readers**: reads go on while another connection or process writes; a change waits for
  another writer up to ``busy_timeout_s`` seconds, then raises :class:`~core.errors.StoreBusyError`.
* **One order of changes**: changes from every handle, process or host are serialised; the generation
  belongs to the store, not to a handle, so a change another process made in between shows as a jump
  (:attr:`GalleryStore.last_change` ``(before, after)`` with ``before`` not the one last seen).

Optional, for a store several processes share (the gallery uses them when present, and otherwise
falls back to its generation check before a search and a rebuild): ``subscribe(callback)``, a wake-up
``callback(generation or None)`` from another thread after any process's change (None: changes may
have been missed); ``changes_since(generation) -> (generation now, identity ids changed) | None``, the
identities to re-read instead of the whole store (None: the log does not reach back that far).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.errors import InvalidIdentityError

FLIP_SUFFIX = ":flipped"
NEW_WHALE = "new_whale"
_WHALE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def flipped_id(whale_id: str) -> str:
    """The never-answered identity that holds the mirror images of ``whale_id``'s photos."""
    return whale_id + FLIP_SUFFIX


def is_flipped(whale_id: str) -> bool:
    return whale_id.endswith(FLIP_SUFFIX)


def whale_id_pattern() -> str:
    """The regular expression a whale id must match (besides not being ``new_whale``)."""
    return _WHALE_ID.pattern


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
    metadata: dict[str, Any] = field(default_factory=dict)
    has_original: bool = False


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
    #: when and where, who (``index.metadata.PhotoMetadata.as_dict()``)
    metadata: dict[str, Any] | None = None
    #: 16-hex-digit perceptual hash (``index.metadata.perceptual_hash``)
    phash: str | None = None
    #: the photo's original bytes (export, and re-embedding with another model: ``whaleid reindex``)
    original: bytes | None = None
    #: the trailing-edge descriptor (``index.edge.encode_descriptor``, a ``WTE1`` blob)
    edge: bytes | None = None


@dataclass(frozen=True)
class AuditRecord:
    """One change of the catalogue: when, what, by whom (an API key's fingerprint, never the key)."""

    audit_id: int
    at: str
    operation: str
    actor: str | None
    details: dict[str, Any]


@dataclass(frozen=True)
class MergeOutcome:
    """What :meth:`GalleryStore.merge_identities` did: ``source`` merged into ``target``."""

    target_identity_id: int
    removed_identity_ids: list[int]
    moved_image_ids: list[int]
    duplicate_image_ids: list[int]


@dataclass(frozen=True)
class MoveOutcome:
    """What :meth:`GalleryStore.move_images` did."""

    source_identity_id: int
    target_identity_id: int
    moved_image_ids: list[int]
    created: bool
    source_deleted: bool


#: The columns of an :class:`ImageRecord`, in :func:`image_record`'s order (both backends select them).
RECORD_COLUMNS = "id, sha256, source, box, added_at, thumbnail IS NOT NULL, metadata, original IS NOT NULL"


def image_record(whale_id: str, row) -> ImageRecord:
    """An :class:`ImageRecord` from a row of :data:`RECORD_COLUMNS` (``box`` JSON text; ``metadata`` JSON text,
    or an already decoded dict as PostgreSQL's ``jsonb`` gives it)."""
    meta = row[6]
    if isinstance(meta, (str, bytes)):
        meta = json.loads(meta)
    return ImageRecord(
        int(row[0]), whale_id, row[1], row[2], json.loads(row[3]) if row[3] else None, row[4], bool(row[5]),
        dict(meta or {}), bool(row[7]),
    )  # fmt: skip


def check_recorded_model(path, dim: int, recorded_dim, model_sha256: str | None, recorded_sha: str | None) -> None:
    """Refuse a store whose embeddings another model made: another dimension, or (when both are known)
    another model checksum.

    Raises:
        ManifestMismatchError: naming the store and both values.
    """
    from core.errors import ManifestMismatchError

    if int(recorded_dim) != int(dim):
        raise ManifestMismatchError(
            f"gallery store {path} holds {recorded_dim}-d embeddings, but the model makes {dim}-d ones"
        )
    if model_sha256 and recorded_sha and recorded_sha != model_sha256:
        raise ManifestMismatchError(
            f"gallery store {path} was built with another model (sha256 {recorded_sha[:12]}...) than "
            f"the bundle's ({model_sha256[:12]}...); rebuild it with `whaleid build-gallery`"
        )


@runtime_checkable
class GalleryStore(Protocol):
    """The operations of a gallery store (see the module docstring for the guarantees).

    Attributes:
        path: where the store lives (a file, or a URL for a server database), for messages.
        dim: the embedding dimension every stored embedding has.
        busy_timeout_s: seconds a change waits for another writer before ``StoreBusyError``.
        last_change: ``(generation before, generation after)`` of this handle's last change, or None.

    Every method may raise :class:`~core.errors.StorageError` (or its subclasses ``StoreBusyError``,
    ``InsufficientStorageError``) for a transient fault.
    """

    path: Path | str
    dim: int
    busy_timeout_s: float
    last_change: tuple[int, int] | None

    @property
    def generation(self) -> int:
        """A counter raised by every committed change."""
        ...

    def meta(self, key: str) -> str | None:
        """A stored setting (``dim``, ``model_sha256``, ``schema_version``, ``generation``), or None."""
        ...

    # -- changes (each one durable transaction) ---------------------------------------------------
    def add_images(self, whale_id: str, images: Iterable[NewImage], flipped: bool = False) -> AddOutcome:
        """Add photos to an identity (created when absent); a photo whose sha256 the identity already
        holds is skipped. ``flipped``: a never-answered mirror identity (:func:`flipped_id`)."""
        ...

    def add_image_groups(
        self, groups: Sequence[tuple[str, Iterable[NewImage], bool]], actor: str | None = None
    ) -> list[AddOutcome]:
        """:meth:`add_images` for several identities in one transaction: all or nothing."""
        ...

    def remove_identity(self, whale_id: str, actor: str | None = None) -> list[int]:
        """Delete an identity, its mirror and their photos; returns the deleted identity ids.
        Raises UnknownIdentityError."""
        ...

    def remove_image(self, whale_id: str, image_id: int, actor: str | None = None) -> tuple[int, str, bool]:
        """Delete one photo (and its mirror copy); an identity left empty is deleted.
        Returns ``(identity_id, sha256, identity_deleted)``. Raises UnknownIdentityError, UnknownImageError."""
        ...

    def rename_identity(self, whale_id: str, new_whale_id: str, actor: str | None = None) -> int:
        """Rename a whale (and its mirror identity); its identity id, photos and history stay.
        Returns the identity id. Raises UnknownIdentityError, InvalidIdentityError (a bad new id),
        IdentityConflictError (the new id is taken)."""
        ...

    def merge_identities(self, source: str, target: str, actor: str | None = None) -> MergeOutcome:
        """Move every photo of ``source`` (and of its mirror) to ``target``; ``source`` disappears. A photo
        ``target`` already holds (same sha256) is dropped, not doubled. Raises UnknownIdentityError,
        InvalidRequestError (a whale into itself)."""
        ...

    def move_images(
        self, whale_id: str, image_ids: Sequence[int], target: str, actor: str | None = None
    ) -> MoveOutcome:
        """Move some photos of ``whale_id`` (and their mirror copies) to ``target``, created when absent (a
        split); an identity left without photos is deleted. Raises UnknownIdentityError,
        UnknownImageError, InvalidIdentityError, InvalidRequestError (no photos, or a whale onto itself)."""
        ...

    def update_metadata(self, whale_id: str, image_id: int, metadata: dict[str, Any], actor: str | None = None) -> None:
        """Replace a photo's metadata (the fields given; None clears one). Raises UnknownIdentityError,
        UnknownImageError."""
        ...

    def audit_log(self, offset: int = 0, limit: int = 100) -> list[AuditRecord]:
        """Changes, newest first (every change method writes one entry in its own transaction)."""
        ...

    def count_audit(self) -> int: ...

    # -- identities ---------------------------------------------------------------------------------
    def identity_id(self, whale_id: str) -> int:
        """The integer id of ``whale_id`` (its FAISS id). Raises UnknownIdentityError."""
        ...

    def has_identity(self, whale_id: str) -> bool: ...

    def next_auto_whale_id(self) -> str:
        """A new readable whale id (``whale-00001``...) never used in this store."""
        ...

    def identity_names(self) -> dict[int, tuple[str, bool]]:
        """``identity_id -> (whale_id, flipped)`` for every identity."""
        ...

    def count_identities(self, include_flipped: bool = False) -> int: ...

    def count_images(self, include_flipped: bool = False) -> int: ...

    def list_identities(self, offset: int = 0, limit: int = 100, prefix: str = "") -> list[IdentityRecord]:
        """Identities (mirrors excluded) ordered by whale id, with photo counts, paged."""
        ...

    def count_matching(self, prefix: str = "") -> int:
        """Identities (mirrors excluded) whose whale id starts with ``prefix``."""
        ...

    # -- photos -------------------------------------------------------------------------------------
    def images_of(self, whale_id: str) -> list[ImageRecord]:
        """One identity's photos, oldest first. Raises UnknownIdentityError."""
        ...

    def image_ids_of(self, identity_id: int) -> set[int]: ...

    def image_owner(self, image_id: int) -> str | None: ...

    def image_sha256(self, image_id: int) -> str | None: ...

    def image_blob(self, image_id: int, column: str) -> bytes | None:
        """The ``thumbnail`` or ``local_features`` blob of a photo (None when not stored)."""
        ...

    def photos_with_sha256(self, sha256: str) -> list[tuple[str, int]]:
        """``(whale_id, image_id)`` of the stored photos with these bytes (mirrors excluded)."""
        ...

    def stored_photos(self) -> set[tuple[str, str]]:
        """``(whale_id, sha256)`` of every stored photo (mirrors excluded)."""
        ...

    def photo_hashes(self) -> list[tuple[int, str, str]]:
        """``(image_id, whale_id, phash)`` of every stored photo with a perceptual hash (mirrors excluded)."""
        ...

    def photo_metadata(self) -> list[tuple[int, int, dict[str, Any]]]:
        """``(image_id, identity_id, metadata)`` of every photo with metadata (mirrors excluded)."""
        ...

    def original_of(self, image_id: int) -> bytes | None:
        """A photo's original bytes, when stored."""
        ...

    def export_rows(self) -> Iterable[tuple[str, ImageRecord, bytes | None]]:
        """Every photo (mirrors excluded): ``(whale_id, record with metadata, original bytes or None)``."""
        ...

    # -- embeddings and local features ----------------------------------------------------------------
    def embeddings_of(self, identity_id: int) -> np.ndarray:
        """``(n, d) float32`` embeddings of one identity's photos."""
        ...

    def embeddings_with_ids(self, identity_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image_ids (n,) int64, embeddings (n, d) float32)`` of one identity."""
        ...

    def all_embeddings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image_ids (n,) int64, identity_ids (n,) int64, embeddings (n, d) float32)`` of every photo."""
        ...

    def all_embeddings_of_images(self, image_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`all_embeddings` for the given photos, in that order."""
        ...

    def snapshot(self) -> tuple[int, dict[int, tuple[str, bool]], np.ndarray, np.ndarray, np.ndarray]:
        """``(generation, identity_names(), *all_embeddings())`` as of one consistent read."""
        ...

    def local_features_of(self, identity_ids: Sequence[int]) -> list[tuple[int, int, bytes | None]]:
        """``(image_id, identity_id, blob)`` of every photo of the given identities."""
        ...

    def edges_of(self, identity_ids: Sequence[int]) -> list[tuple[int, int, bytes]]:
        """``(image_id, identity_id, trailing-edge blob)`` of the photos of these identities that have one."""
        ...

    def local_feature_owners(self) -> dict[int, int]:
        """``image_id -> identity_id`` of every photo with local features (mirrors never have them)."""
        ...

    def local_features_of_images(self, image_ids: Sequence[int]) -> list[tuple[int, int, bytes | None]]:
        """``(image_id, identity_id, blob)`` of the given photos (unknown ids skipped)."""
        ...

    def close(self) -> None: ...
