"""SQLite faults as typed errors, and the connection wrapper that raises them (:mod:`index.store.sqlite`)."""

from __future__ import annotations

import errno
import logging
import sqlite3
from pathlib import Path

from core.errors import InsufficientStorageError, StorageError, StoreBusyError

log = logging.getLogger(__name__)

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
