"""Moving a catalogue: ``whaleid catalogue export|import`` (an archive) and ``whaleid reindex`` (a new model).

The archive's format is :mod:`whaleid.catalogue_archive`. Embeddings, thumbnails and local features are
not carried: :func:`enrol_entries` computes them with the target bundle from each photo's bytes and stored
box, as enrolment does (decode with :data:`index.build.FOLDER_LIMITS`, the embedder's TTA boxes,
``boxes[0]`` kept as the box, its local features, a thumbnail, the perceptual hash), so a catalogue moves
between models. A stored box equal to the photo's full frame means no base box was known (the TTA
policy's fallback crops, or the target's detector).

**Import** first checks the whole archive (zip, members, every checksum, format and version, whale ids,
metadata) and changes nothing when any check fails; then it writes one transaction per whale (its photos
and their mirror images; per :data:`GROUP_PHOTOS` photos of a larger whale). A photo its whale already
holds (same sha256) is skipped, so importing twice changes nothing, and an interrupted import completes
when run again. The archive's audit entries are kept **as they were** in ``catalogue-audit.jsonl`` beside
the store (the store has no operation that writes past entries), each with ``imported_from``; the import's
own writes are the store's ``enrol`` entries by actor ``catalogue-import`` (``reindex`` for
:func:`reindex`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from tqdm import tqdm

from core.errors import ConfigError, CorruptArtifactError, WhaleidError
from whaleid.catalogue_archive import (
    PHOTO_PREFIX,
    AuditEntry,
    Catalogue,
    IdentityEntry,
    ModelEntry,
    PhotoEntry,
    _now,
    read_archive,
    write_archive,
)

log = logging.getLogger(__name__)

#: The archive's audit entries, kept as they were (JSON lines), in the target gallery's folder.
AUDIT_SIDECAR = "catalogue-audit.jsonl"
IMPORT_ACTOR = "catalogue-import"
REINDEX_ACTOR = "reindex"
#: Photos of one whale written per transaction (their decoded pixels are held until it is written).
GROUP_PHOTOS = 16

# -- reading a gallery ---------------------------------------------------------------------------


def catalogue_of(store) -> tuple[list[IdentityEntry], list[tuple[int, PhotoEntry]], int]:
    """Every whale and photo of a store (mirror identities excluded), by whale id then image id.

    Args:
        store: a :class:`index.store.GalleryStore`.

    Returns:
        ``(identities, [(image_id, photo)], missing)``: only photos with stored original bytes are
        listed (and only whales with at least one of them); ``missing`` counts the others.
    """
    identities, photos, missing, offset = [], [], 0, 0
    while page := store.list_identities(offset=offset, limit=500):
        offset += len(page)
        for ident in page:
            kept = []
            for rec in store.images_of(ident.whale_id):
                if not rec.has_original:
                    missing += 1
                    continue
                box = None if rec.box_xyxy_px is None else [float(v) for v in rec.box_xyxy_px]
                entry = PhotoEntry(
                    whale_id=ident.whale_id,
                    sha256=rec.sha256,
                    source=rec.source,
                    box_xyxy_px=box,
                    added_at=rec.added_at,
                    metadata=dict(rec.metadata or {}),
                )
                kept.append((rec.image_id, entry))
            if kept:
                identities.append(
                    IdentityEntry(whale_id=ident.whale_id, created_at=ident.created_at, n_images=len(kept))
                )
                photos.extend(kept)
    return identities, photos, missing


def audit_of(store, folder: Path | None) -> list[AuditEntry]:
    """A gallery's history, oldest first: entries earlier imports kept (``folder``'s sidecar), then the
    store's own audit log."""
    entries = _read_sidecar(folder / AUDIT_SIDECAR) if folder is not None else []
    own, offset = [], 0
    while page := store.audit_log(offset=offset, limit=1000):
        offset += len(page)
        own.extend(page)
    own.sort(key=lambda r: r.audit_id)
    return entries + [AuditEntry(at=r.at, operation=r.operation, actor=r.actor, details=r.details) for r in own]


def _read_sidecar(path: Path) -> list[AuditEntry]:
    if not path.is_file():
        return []
    try:
        return [AuditEntry.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]
    except (ValidationError, ValueError) as exc:
        raise CorruptArtifactError(path, f"not a whaleid audit log ({exc.__class__.__name__})") from None


def _append_audit(folder: Path, entries: Iterable[AuditEntry], origin: str) -> int:
    """Keep ``entries`` in ``folder``'s audit sidecar (those already there are not added again).

    Returns:
        How many entries were added.
    """
    path = folder / AUDIT_SIDECAR
    key = lambda e: (e.at, e.operation, e.actor, json.dumps(e.details, sort_keys=True))  # noqa: E731
    have = {key(e) for e in _read_sidecar(path)}
    new = []
    for e in entries:
        if key(e) not in have:
            have.add(key(e))
            new.append(e if e.imported_from else e.model_copy(update={"imported_from": origin}))
    if new:
        with open(path, "a", encoding="utf-8") as fh:
            fh.writelines(e.model_dump_json() + "\n" for e in new)
            fh.flush()
            os.fsync(fh.fileno())
    return len(new)


def _check_missing(missing: int, total: int, allow_missing: bool, what: str) -> None:
    if not missing:
        return
    msg = (
        f"{missing} of {total} photos have no original bytes in the store (enrolled before whaleid kept "
        f"them), so they cannot be {what}"
    )
    if not allow_missing:
        raise ConfigError(f"{msg}: enrol them again from their files, or pass --allow-missing to leave them out")
    log.warning("%s: leaving them out (--allow-missing)", msg)


# -- export --------------------------------------------------------------------------------------


def export_catalogue(
    bundle: str | Path,
    out: str | Path,
    gallery_dir: str | Path | None = None,
    allow_missing: bool = False,
    progress: bool = True,
) -> dict:
    """``whaleid catalogue export``: write a bundle's gallery as a catalogue archive (format version 1),
    atomically (:func:`whaleid.catalogue_archive.write_archive`).

    Args:
        bundle: the bundle folder.
        out: the archive to write (a zip file).
        gallery_dir: another gallery folder (default: the bundle's).
        allow_missing: leave out photos stored without their bytes instead of failing.

    Returns:
        Counts: ``identities``, ``photos``, ``photos_left_out``, ``audit_entries``, ``archive_bytes``.

    Raises:
        ConfigError: photos without stored bytes and not ``allow_missing``. ManifestError,
        CorruptArtifactError, StorageError: the bundle or its gallery cannot be opened.
    """
    from index.bundle import open_bundle

    out = Path(out)
    with open_bundle(bundle, gallery_dir) as opened:
        store = opened.gallery.store
        generation = store.generation
        identities, photos, missing = catalogue_of(store)
        _check_missing(missing, len(photos) + missing, allow_missing, "exported")
        cat = Catalogue(
            exported_at=_now(),
            model=ModelEntry(
                sha256=opened.manifest.model.sha256,
                embedding_dim=opened.manifest.model.embedding_dim,
                model_version=opened.manifest.model_version,
            ),
            identities=identities,
            photos=[p for _, p in photos],
            audit=audit_of(store, opened.gallery_dir),
            photos_left_out=missing,
        )
        read = _reader(store, photos)
        size = write_archive(out, cat, ((p.sha256, lambda p=p: read(p)) for _, p in photos), progress)
        if store.generation != generation:
            log.warning("the gallery changed during the export: export again for a copy of one moment")
    return {
        "archive": str(out),
        "identities": len(identities),
        "photos": len(photos),
        "photos_left_out": missing,
        "audit_entries": len(cat.audit),
        "archive_bytes": size,
    }


# -- enrolling photos through a bundle -------------------------------------------------------------


def _base_box(box: list[float] | None, pixels: np.ndarray) -> np.ndarray | None:
    """The stored box as a base box; None for none or the full frame (no base box was known then)."""
    if box is None:
        return None
    h, w = pixels.shape[:2]
    if np.allclose(box, [0.0, 0.0, w, h], atol=0.5):
        return None
    return np.asarray(box, dtype=np.float32)


def enrol_entries(
    opened, photos: list[PhotoEntry], read: Callable[[PhotoEntry], bytes], actor: str, progress: bool = True
) -> dict:
    """Embed photos from their bytes with an opened bundle and enrol them, a transaction per whale (per
    :data:`GROUP_PHOTOS` photos of a whale with more).

    The enrolment path of :func:`index.build.build_gallery`: decode (:data:`index.build.FOLDER_LIMITS`),
    the embedder's TTA boxes around the stored base box (:func:`_base_box`), ``boxes[0]`` kept as the box,
    the bundle's local features on it when it has them, a thumbnail, the perceptual hash, the photo's
    metadata as given, and its mirror image's embedding when the manifest enrols mirrors.

    Args:
        opened: an :class:`index.bundle.OpenBundle`.
        photos: the photos, grouped into whales in first-seen order.
        read: a photo's original bytes.
        actor: who the store's audit log names for these enrolments.

    Returns:
        Counts: ``photos_added``, ``photos_skipped`` (already held by their whale), ``whales_created``,
        ``whales_extended``.

    Raises:
        CorruptArtifactError: bytes whose sha256 is not the photo's. InputImageError: a photo that does
        not decode (the photos before it are enrolled; running again completes the rest).
    """
    from index.build import make_thumbnail
    from index.metadata import perceptual_hash
    from index.store import NewImage

    manifest, gallery, embedder = opened.manifest, opened.gallery, opened.enrol_embedder
    local = None
    if manifest.local_features is not None:
        from index.local import LocalFeatureExtractor

        local = LocalFeatureExtractor(manifest.local_features)
    flipped = manifest.gallery.include_flipped
    held = gallery.store.stored_photos()
    by_whale: dict[str, list[PhotoEntry]] = {}
    for p in photos:
        by_whale.setdefault(p.whale_id, []).append(p)
    counts = {"photos_added": 0, "photos_skipped": 0, "whales_created": 0, "whales_extended": 0}
    bar = tqdm(total=len(photos), desc="enrol", unit="photo", disable=not progress, leave=False)
    try:
        for wid, entries in by_whale.items():
            todo = [p for p in entries if (wid, p.sha256) not in held]
            counts["photos_skipped"] += len(entries) - len(todo)
            bar.update(len(entries) - len(todo))
            if not todo:
                continue
            counts["whales_extended" if gallery.store.has_identity(wid) else "whales_created"] += 1
            for at in range(0, len(todo), GROUP_PHOTOS):  # bounded memory: decoded photos of one group at a time
                new, mirror = [], []
                for p, data, px, emb in _embedded(embedder, todo[at : at + GROUP_PHOTOS], read, flipped):
                    box = emb.boxes[0]
                    new.append(
                        NewImage(
                            sha256=p.sha256,
                            embedding=emb.embedding,
                            source=p.source,
                            box_xyxy_px=box.tolist(),
                            thumbnail=make_thumbnail(px),
                            local_features=local.encode_photo(px, box) if local is not None else None,
                            metadata=p.metadata or None,
                            phash=perceptual_hash(px),
                            original=data,
                        )
                    )
                    if flipped:
                        mirror.append(NewImage(sha256=p.sha256, embedding=emb.flipped, source=p.source))
                    bar.update(1)
                res = gallery.add(wid, new, mirror or None, actor=actor)
                counts["photos_added"] += len(res.image_ids)
                counts["photos_skipped"] += len(res.duplicate_image_ids)
    finally:
        bar.close()
    gallery.save()
    return counts


def _embedded(embedder, photos: list[PhotoEntry], read: Callable[[PhotoEntry], bytes], flipped: bool):
    """Yield ``(photo, bytes, pixels (H, W, 3) uint8, PhotoEmbedding)`` of each photo, checked and decoded.

    Raises:
        CorruptArtifactError: bytes whose sha256 is not the photo's. InputImageError: undecodable bytes.
    """
    from core.preprocess import decode_image
    from index.build import FOLDER_LIMITS

    decoded = []
    for p in photos:
        data = read(p)
        if hashlib.sha256(data).hexdigest() != p.sha256:
            raise CorruptArtifactError(str(p.source or p.sha256), "the bytes do not match the photo's sha256")
        try:
            decoded.append((p, data, decode_image(data, FOLDER_LIMITS).pixels))
        except WhaleidError as exc:
            exc.detail = f"{exc.detail} (photo {p.sha256[:12]} of whale {p.whale_id!r}, {p.source})"
            raise
    items = [(px, _base_box(p.box_xyxy_px, px)) for p, _, px in decoded]
    for (p, data, px), emb in zip(decoded, embedder.embed_many(items, flipped=flipped), strict=True):
        yield p, data, px, emb


# -- import and reindex ----------------------------------------------------------------------------


def import_catalogue(
    bundle: str | Path, archive: str | Path, gallery_dir: str | Path | None = None, progress: bool = True
) -> dict:
    """``whaleid catalogue import``: add an archive's whales and photos to a bundle's gallery (re-embedded
    with the bundle's model); idempotent; a corrupt archive changes nothing (module docstring).

    Args:
        bundle: the target bundle.
        archive: the catalogue archive.
        gallery_dir: another gallery folder (default: the bundle's).

    Returns:
        :func:`enrol_entries`'s counts, with ``identities`` and ``photos`` of the archive,
        ``audit_entries_kept`` and the archive's ``source_model``.

    Raises:
        CorruptArtifactError, ManifestError: see :func:`read_archive` (nothing changed then).
    """
    from index.bundle import open_bundle

    archive = Path(archive)
    cat = read_archive(archive, progress)
    with zipfile.ZipFile(archive) as zf, open_bundle(bundle, gallery_dir) as opened:
        counts = enrol_entries(opened, cat.photos, lambda p: zf.read(PHOTO_PREFIX + p.sha256), IMPORT_ACTOR, progress)
        kept = _append_audit(opened.gallery_dir, cat.audit, f"{archive.name} (exported {cat.exported_at})")
    return {
        "identities": len(cat.identities),
        "photos": len(cat.photos),
        **counts,
        "audit_entries_kept": kept,
        "source_model": cat.model.model_dump(),
    }


def reindex(
    old_gallery: str | Path,
    bundle: str | Path,
    out: str | Path | None = None,
    allow_missing: bool = False,
    progress: bool = True,
) -> dict:
    """``whaleid reindex``: re-embed every stored photo of a gallery with a new bundle's model (and its local
    features), keeping whales, photos, metadata, original bytes and the history: an export and an import
    without the archive. Idempotent, as an import.

    Args:
        old_gallery: the old gallery folder (holding ``gallery.sqlite``), or the old bundle's folder.
        bundle: the new bundle.
        out: the new gallery folder (default: the new bundle's); never the old one.
        allow_missing: leave out photos stored without their bytes instead of failing.

    Returns:
        :func:`enrol_entries`'s counts, with ``identities``, ``photos``, ``photos_left_out``,
        ``audit_entries_kept`` and ``gallery_folder``.

    Raises:
        ConfigError: no store in ``old_gallery``; the new gallery would be the old one; photos without
        bytes and not ``allow_missing``. CorruptArtifactError, ManifestError, StorageError.
    """
    from core.manifest import load_manifest
    from index.bundle import gallery_folder, is_bundle, open_bundle
    from index.gallery import STORE_FILE
    from index.store import open_store, recorded_dim

    old = Path(old_gallery)
    if is_bundle(old):
        manifest = load_manifest(old)
        old, dim = gallery_folder(old_gallery, manifest), manifest.model.embedding_dim
    elif (old / STORE_FILE).is_file():
        dim = recorded_dim(old / STORE_FILE)
    else:
        raise ConfigError(f"{old_gallery} holds no gallery store ({STORE_FILE}) and is not a bundle folder")
    if not (old / STORE_FILE).is_file():
        raise ConfigError(f"the old bundle's gallery folder {old} holds no gallery store ({STORE_FILE})")
    new = Path(out) if out is not None else gallery_folder(bundle, load_manifest(bundle))
    if new.resolve() == old.resolve():
        raise ConfigError(f"the new gallery folder is the old one ({old}): pass --out NEW_GALLERY")
    store = open_store(old / STORE_FILE, dim)
    try:
        identities, photos, missing = catalogue_of(store)
        _check_missing(missing, len(photos) + missing, allow_missing, "re-embedded")
        history = audit_of(store, old)
        with open_bundle(bundle, new) as opened:
            counts = enrol_entries(opened, [p for _, p in photos], _reader(store, photos), REINDEX_ACTOR, progress)
            kept = _append_audit(opened.gallery_dir, history, f"reindex of {old}")
    finally:
        store.close()
    return {
        "identities": len(identities),
        "photos": len(photos),
        "photos_left_out": missing,
        **counts,
        "audit_entries_kept": kept,
        "gallery_folder": str(new),
    }


def _reader(store, photos: list[tuple[int, PhotoEntry]]) -> Callable[[PhotoEntry], bytes]:
    """A photo's bytes from the old store (by the image id it was listed with)."""
    ids = {id(p): image_id for image_id, p in photos}

    def read(p: PhotoEntry) -> bytes:
        data = store.original_of(ids[id(p)])
        if data is None:
            raise CorruptArtifactError(
                store.path, f"photo {ids[id(p)]} was deleted while the catalogue was read: run again"
            )
        return data

    return read
