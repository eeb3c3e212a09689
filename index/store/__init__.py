"""The gallery store: the source of truth for identities, photos, embeddings and local features.

:class:`GalleryStore` is the interface (:mod:`index.store.base`, with the guarantees every backend
gives); :class:`SQLiteGalleryStore` (:mod:`index.store.sqlite`) the default backend,
:class:`~index.store.postgres.PostgresGalleryStore` (:mod:`index.store.postgres`, the ``postgres``
extra) the one many replicas share. Open one with :func:`open_store`.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import ConfigError
from index.store.base import (
    FLIP_SUFFIX,
    NEW_WHALE,
    AddOutcome,
    AuditRecord,
    GalleryStore,
    IdentityRecord,
    ImageRecord,
    MergeOutcome,
    MoveOutcome,
    NewImage,
    flipped_id,
    is_flipped,
    validate_whale_id,
    whale_id_pattern,
)
from index.store.sqlite import SCHEMA_VERSION, SQLiteGalleryStore, recorded_dim
from index.store.sqlite_errors import storage_error


def is_database_url(location: str | Path) -> bool:
    """Whether ``location`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def postgres_module(name: str):
    """``index.store.<name>`` of the PostgreSQL backend, imported now (psycopg only when it is used).

    Raises:
        ConfigError: psycopg is not installed (the ``postgres`` extra).
    """
    import importlib

    try:
        return importlib.import_module(f"index.store.{name}")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "psycopg":
            raise
        raise ConfigError("a postgresql:// gallery store needs psycopg: pip install 'whaleid[postgres]'") from exc


def open_store(
    path: str | Path,
    dim: int,
    model_sha256: str | None = None,
    durable: bool = True,
    busy_timeout_s: float = 5.0,
) -> GalleryStore:
    """Open (or create) the gallery store at ``path``: an SQLite file, or a PostgreSQL database.

    Args:
        path: the store's location: a file, or a ``postgresql://`` (``postgres://``) URL, whose
            schema must have been created by ``whaleid store migrate URL``.
        dim: embedding dimension (checked against the one recorded).
        model_sha256: the model's checksum (checked against the one recorded, when given).
        durable: fsync every commit; False only for throw-away galleries.
        busy_timeout_s: seconds a change waits for another writer.

    Raises:
        CorruptArtifactError, ManifestMismatchError, StorageError: see :class:`SQLiteGalleryStore`.
        SchemaVersionError, DatabaseUnavailableError: see :class:`~index.store.postgres.PostgresGalleryStore`.
    """
    if is_database_url(path):
        return postgres_module("postgres").PostgresGalleryStore(str(path), dim, model_sha256, durable, busy_timeout_s)
    return SQLiteGalleryStore(path, dim, model_sha256, durable, busy_timeout_s)


__all__ = [
    "FLIP_SUFFIX",
    "NEW_WHALE",
    "SCHEMA_VERSION",
    "AddOutcome",
    "AuditRecord",
    "MergeOutcome",
    "MoveOutcome",
    "GalleryStore",
    "IdentityRecord",
    "ImageRecord",
    "NewImage",
    "SQLiteGalleryStore",
    "flipped_id",
    "is_database_url",
    "is_flipped",
    "open_store",
    "recorded_dim",
    "postgres_module",
    "storage_error",
    "validate_whale_id",
    "whale_id_pattern",
]
