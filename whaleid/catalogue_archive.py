"""The catalogue archive, format version 1: what ``whaleid catalogue export`` writes and ``import`` reads.

A zip file of three kinds of member:

* ``catalogue.json`` (:class:`Catalogue`): ``format`` (``"whaleid-catalogue"``), ``version`` (1),
  ``exported_at`` (UTC, ISO 8601), ``model`` (``sha256``, ``embedding_dim``, ``model_version`` of the
  bundle it was exported from), ``identities`` (``whale_id``, ``created_at``, ``n_images``), ``photos``
  (``whale_id``, ``sha256`` of the photo's bytes, ``source`` file name, ``box_xyxy_px`` in pixels or null,
  ``added_at``, ``metadata``: :class:`index.metadata.PhotoMetadata` fields), ``audit`` (the catalogue's
  history, oldest first: ``at``, ``operation``, ``actor``, ``details``, and ``imported_from`` for entries
  an earlier import brought), ``photos_left_out`` (photos without stored bytes, ``--allow-missing``).
* ``photos/<sha256>``: each photo's original bytes, once per distinct photo (stored, not recompressed).
* ``checksums.sha256``: ``<sha256>  <member>`` for every other member (``sha256sum -c`` reads it).

Embeddings, thumbnails and local features are not in it: the importing bundle computes them
(:mod:`whaleid.catalogue`). A reader refuses a version it does not know; a later version that only adds
fields still raises ``version``.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from core.errors import CorruptArtifactError, ManifestError, WhaleidError

FORMAT = "whaleid-catalogue"
VERSION = 1
CATALOGUE_MEMBER = "catalogue.json"
CHECKSUMS_MEMBER = "checksums.sha256"
PHOTO_PREFIX = "photos/"
_CHUNK = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhotoEntry(_Strict):
    """One photo of the catalogue (its bytes are the member ``photos/<sha256>``)."""

    whale_id: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source: str | None = None
    box_xyxy_px: list[float] | None = Field(None, min_length=4, max_length=4)
    added_at: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class IdentityEntry(_Strict):
    whale_id: str
    created_at: str | None = None
    n_images: int = Field(ge=0)


class AuditEntry(_Strict):
    at: str
    operation: str
    actor: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    imported_from: str | None = None


class ModelEntry(_Strict):
    sha256: str | None = None
    embedding_dim: int = Field(gt=0)
    model_version: str | None = None


class Catalogue(_Strict):
    """``catalogue.json`` (see the module docstring)."""

    format: Literal["whaleid-catalogue"] = FORMAT
    version: Literal[1] = VERSION
    exported_at: str
    model: ModelEntry
    identities: list[IdentityEntry]
    photos: list[PhotoEntry]
    audit: list[AuditEntry] = Field(default_factory=list)
    photos_left_out: int = Field(0, ge=0)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_archive(
    out: Path, cat: Catalogue, originals: Iterable[tuple[str, Callable[[], bytes]]], progress: bool = True
) -> int:
    """Write an archive atomically: under a temporary name beside ``out``, fsynced, then renamed (a crash
    never leaves half an archive at ``out``).

    Args:
        out: the archive's path.
        cat: its ``catalogue.json``.
        originals: ``(sha256, read the bytes)`` per photo (a sha256 seen before is written once).

    Returns:
        The archive's size in bytes.

    Raises:
        CorruptArtifactError: bytes that do not match their sha256.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    sums: dict[str, str] = {}
    try:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            for sha, read in tqdm(originals, desc="export", unit="photo", disable=not progress, leave=False):
                member = PHOTO_PREFIX + sha
                if member in sums:
                    continue  # the same photo under two whales: its bytes once
                data = read()
                if hashlib.sha256(data).hexdigest() != sha:
                    raise CorruptArtifactError(out, f"photo {sha[:12]}: the stored bytes do not match its sha256")
                zf.writestr(member, data, compress_type=zipfile.ZIP_STORED)
                sums[member] = sha
            doc = cat.model_dump_json(indent=1).encode()
            zf.writestr(CATALOGUE_MEMBER, doc, compress_type=zipfile.ZIP_DEFLATED)
            sums[CATALOGUE_MEMBER] = hashlib.sha256(doc).hexdigest()
            lines = "".join(f"{h}  {m}\n" for m, h in sorted(sums.items()))
            zf.writestr(CHECKSUMS_MEMBER, lines, compress_type=zipfile.ZIP_DEFLATED)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out.stat().st_size


def _member_sha256(zf: zipfile.ZipFile, path: Path, name: str) -> str:
    h = hashlib.sha256()
    try:
        with zf.open(name) as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CorruptArtifactError(path, f"member {name} cannot be read ({exc})") from None
    return h.hexdigest()


def read_archive(path: str | Path, progress: bool = True) -> Catalogue:
    """Open a catalogue archive and check all of it: readable zip, ``catalogue.json`` of a known format
    and version, every member listed in ``checksums.sha256`` and matching it, every photo's bytes present
    under their sha256, valid whale ids and metadata.

    Args:
        path: the archive.

    Returns:
        Its catalogue.

    Raises:
        CorruptArtifactError: any check failed (the message names the member). ManifestError: a format
        version this whaleid does not read.
    """
    from index.metadata import parse_metadata
    from index.store import validate_whale_id

    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CorruptArtifactError(path, f"not a zip archive ({exc})") from None
    with zf:
        names = set(zf.namelist())
        for required in (CATALOGUE_MEMBER, CHECKSUMS_MEMBER):
            if required not in names:
                raise CorruptArtifactError(path, f"member {required} is missing: not a whole whaleid catalogue archive")
        try:
            doc = json.loads(zf.read(CATALOGUE_MEMBER))
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise CorruptArtifactError(path, f"{CATALOGUE_MEMBER} is unreadable ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CorruptArtifactError(path, f"{CATALOGUE_MEMBER} does not say format {FORMAT!r}")
        if doc.get("version") != VERSION:
            raise ManifestError(
                f"catalogue archive {path} has format version {doc.get('version')!r}; this whaleid reads version "
                f"{VERSION} (a newer whaleid wrote it?)"
            )
        try:
            cat = Catalogue.model_validate(doc)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise CorruptArtifactError(path, f"{CATALOGUE_MEMBER}: {where}: {err['msg']}") from None
        try:
            listed = dict(
                reversed(line.split("  ", 1)) for line in zf.read(CHECKSUMS_MEMBER).decode().splitlines() if line
            )
        except (ValueError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
            raise CorruptArtifactError(path, f"{CHECKSUMS_MEMBER} is unreadable ({exc})") from None
        unlisted = sorted(names - set(listed) - {CHECKSUMS_MEMBER})
        if unlisted:
            raise CorruptArtifactError(path, f"member {unlisted[0]} is not in {CHECKSUMS_MEMBER}")
        for name, expected in tqdm(
            sorted(listed.items()), desc="check", unit="file", disable=not progress, leave=False
        ):
            if name not in names:
                raise CorruptArtifactError(path, f"member {name} (listed in {CHECKSUMS_MEMBER}) is missing")
            if _member_sha256(zf, path, name) != expected:
                raise CorruptArtifactError(path, f"member {name} does not match its sha256 in {CHECKSUMS_MEMBER}")
        for p in cat.photos:
            member = PHOTO_PREFIX + p.sha256
            if listed.get(member) != p.sha256:
                raise CorruptArtifactError(
                    path, f"photo {p.sha256[:12]} of whale {p.whale_id!r}: member {member} is missing"
                )
            try:
                validate_whale_id(p.whale_id)
                parse_metadata(p.metadata)
            except WhaleidError as exc:
                raise CorruptArtifactError(
                    path, f"photo {p.sha256[:12]} of whale {p.whale_id!r}: {exc.detail}"
                ) from None
    return cat
