"""PostgreSQL faults as whaleid's typed errors, and the URL as it may be shown (password hidden).

Mapping (SQLSTATE classes from https://www.postgresql.org/docs/current/errcodes-appendix.html):

==========================================================  ==============================================
the fault                                                   raised as
==========================================================  ==============================================
server unreachable, connection lost, server shutting down   :class:`DatabaseUnavailableError` (503, 2 s)
or starting (class 08, 57P01-57P03), any ``OperationalError``
a row lock not granted within ``busy_timeout_s`` (55P03),   :class:`~core.errors.StoreBusyError` (503, 1 s)
a serialisation failure or deadlock (40001, 40P01)
disk full (53100), out of memory or connections (53xxx)     :class:`~core.errors.InsufficientStorageError`
                                                            (507) for 53100, else ``DatabaseUnavailableError``
a schema older or newer than this code's                    :class:`SchemaVersionError` (start-up only)
==========================================================  ==============================================

Anything else (a programming error, a constraint the store's own rules should have prevented) is
not translated: it is a bug and surfaces as one.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import errors as pgerr

from core.errors import ConfigError, InsufficientStorageError, StorageError, StoreBusyError


class DatabaseUnavailableError(StorageError):
    """The PostgreSQL server of the gallery store cannot be reached right now (down, restarting,
    network cut, connection lost mid-change). The change was not committed, or, when the
    connection dropped during ``COMMIT`` itself, may have been: a retry of an enrolment then finds
    its photos as duplicates, never stores them twice."""

    code = "store_unavailable"
    retry_after_s = 2


class SchemaVersionError(ConfigError):
    """The database's schema is not the one this code reads: run ``whaleid store migrate URL``."""

    code = "store_schema_version"


_PASSWORD = re.compile(r"(//[^:/@]*):[^@/]*@")


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages and logs."""
    url = _PASSWORD.sub(r"\1:***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url)


def translate(exc: BaseException, where: str) -> Exception:
    """The typed whaleid error for a psycopg exception (``exc`` itself when it is not a fault).

    Args:
        exc: what psycopg raised.
        where: the store's redacted URL, named in the message.
    """
    if isinstance(exc, (pgerr.LockNotAvailable, pgerr.SerializationFailure, pgerr.DeadlockDetected)):
        err: StorageError = StoreBusyError(
            f"the gallery store {where} is busy with another replica's change; retry in a moment"
        )
    elif isinstance(exc, pgerr.DiskFull):
        err = InsufficientStorageError(f"the gallery database {where} has no disk space left")
    elif isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        err = DatabaseUnavailableError(f"the gallery database {where} cannot be reached right now; retry shortly")
    else:
        return exc if isinstance(exc, Exception) else RuntimeError(str(exc))
    err.__cause__ = exc
    return err
