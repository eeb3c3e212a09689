"""Schema migrations of the PostgreSQL gallery store: ``index/store/migrations/NNNN_name.sql``.

Each file is applied once, in its own transaction, and recorded in ``schema_migrations``; the
schema version is the highest number applied. ``whaleid store migrate URL`` applies the pending
ones; :class:`~index.store.postgres.PostgresGalleryStore` refuses to open a database whose version
differs from :data:`SCHEMA_VERSION` (:class:`~index.store.postgres_errors.SchemaVersionError`).
Two replicas migrating at once are serialised by one session-level advisory lock held for the whole
run: the second waits, then finds the work done (it applies nothing).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import psycopg

from index.store.postgres_errors import SchemaVersionError, redact, translate

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
#: ``pg_advisory_lock`` key held by a migration run from its first file to its last (any constant bigint)
_LOCK_KEY = 0x7768616C656964  # "whaleid"


def migration_files() -> list[tuple[int, Path]]:
    """``(version, file)`` of every migration, in order."""
    found = sorted((int(m.group(1)), p) for p in MIGRATIONS.glob("*.sql") if (m := _NAME.match(p.name)))
    versions = [v for v, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migrations must be numbered 0001, 0002... without gaps, found {versions}")
    return found


#: the schema this code reads and writes
SCHEMA_VERSION = len(migration_files())


def schema_version(conn: psycopg.Connection) -> int:
    """The highest migration applied to the database (0 for an empty one)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return 0
    return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0])


def check_schema(conn: psycopg.Connection, where: str) -> int:
    """Raise :class:`SchemaVersionError` unless the database is at :data:`SCHEMA_VERSION`.

    Returns:
        The version found (== :data:`SCHEMA_VERSION`).
    """
    found = schema_version(conn)
    if found < SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the gallery database {where} is at schema version {found}, this whaleid needs {SCHEMA_VERSION}: "
            f"run `whaleid store migrate '{where}'` (with the real password) first"
        )
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the gallery database {where} is at schema version {found}, newer than this whaleid's "
            f"{SCHEMA_VERSION}: upgrade whaleid on this replica"
        )
    return found


def migrate(url: str, connect_timeout_s: float = 10.0) -> list[int]:
    """Apply the pending migrations to the database at ``url``.

    Args:
        url: a ``postgresql://`` connection URL.
        connect_timeout_s: seconds to wait for the server.

    Returns:
        The versions applied now (empty when the schema was up to date).

    Raises:
        DatabaseUnavailableError: the server cannot be reached.
        SchemaVersionError: the database is newer than this code.
    """
    where = redact(url)
    applied: list[int] = []
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(connect_timeout_s))) as conn:
            # one session-level lock for the whole run: a second migrator waits, then finds every file applied
            # (a lock per file let two runs interleave, each applying part of the list)
            conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            try:
                for version, path in migration_files():
                    with conn.transaction():
                        conn.execute(
                            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                        )
                        if schema_version(conn) >= version:
                            continue
                        conn.execute(path.read_text())
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, path.name)
                        )
                        applied.append(version)
                        log.info("gallery database %s: applied migration %s", where, path.name)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
            check_schema(conn, where)
    except psycopg.Error as exc:
        raise translate(exc, where) from exc
    return applied
