"""Atomic, durable file writes and checksums.

Every artefact whaleid writes (manifest, FAISS index, CSV results) goes through
:func:`atomic_write_bytes`: write to a temporary name in the same folder, flush and fsync it,
``os.replace`` it over the target, then fsync the folder, so a reader sees either the old file or
the new one, never a half-written file, even after a power cut or ``kill -9``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so that a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically and durably (temporary file, fsync, rename).

    Args:
        path: the target file.
        data: its new content.
        mode: permission bits of the new file.

    Returns:
        The target path.

    Raises:
        OSError: when the folder cannot be written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600; artefacts are read by other users (e.g. a container's)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    """:func:`atomic_write_bytes` for an object serialised as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks of ``chunk_bytes``."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_bytes), b""):
            h.update(chunk)
    return h.hexdigest()


def read_jsonl_by(path: str | Path, key: str) -> dict[str, dict]:
    """The records of a JSON-lines log, by their ``key`` field (later lines win); a missing file is empty
    and a line a crash left truncated is skipped (resumable batch runs: ``predict``, ``report``)."""
    done: dict[str, dict] = {}
    if Path(path).exists():
        with open(path) as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[rec[key]] = rec
    return done
