"""Embedding folders of photos and enrolling them: shared by ``build-gallery``, ``evaluate``,
``calibrate`` and training's evaluation (torch or onnxruntime behind the same :class:`PhotoEmbedder`)."""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.errors import InputImageError
from core.fileio import sha256_bytes
from core.preprocess import DecodeLimits, decode_image
from index.edge import edge_blob
from index.embedder import PhotoEmbedder, PhotoEmbedding
from index.gallery import Gallery
from index.store import NewImage

log = logging.getLogger(__name__)

#: Trusted local folders may hold larger photos than uploads.
FOLDER_LIMITS = DecodeLimits(max_bytes=200 * 1024 * 1024, max_pixels=200_000_000)
THUMBNAIL_PX = 256


@dataclass(frozen=True)
class EmbeddedPhoto:
    """A photo from a folder and its embedding (``embedding.embedding`` is ``(d,) float32``)."""

    image: str
    sha256: str
    embedding: PhotoEmbedding
    pixels: np.ndarray | None = None


def make_thumbnail(pixels: np.ndarray, max_side_px: int = THUMBNAIL_PX, quality: int = 85) -> bytes:
    """JPEG thumbnail of an ``(H, W, 3) uint8`` photo, longest side ``max_side_px`` pixels."""
    im = Image.fromarray(pixels)
    im.thumbnail((max_side_px, max_side_px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def embed_folder(
    embedder: PhotoEmbedder,
    images_dir: str | Path,
    items: Sequence[tuple[str, object]],
    flipped: bool = False,
    desc: str = "embedding",
    progress: bool = True,
    keep_pixels: bool = False,
    skip: Callable[[str, str], bool] | None = None,
) -> Iterator[EmbeddedPhoto]:
    """Decode and embed photos of a folder in order; unreadable ones are logged and skipped.

    Args:
        embedder: the photo embedder (torch or onnxruntime behind it).
        images_dir: the folder.
        items: ``(file name, base box (4,) pixels or None)`` pairs.
        flipped: also embed the mirror image of each photo.
        keep_pixels: keep the decoded ``(H, W, 3) uint8`` photo on each result (for thumbnails or
            local features).
        skip: ``(file name, sha256 of its bytes) -> bool``; True leaves the photo out before it is
            decoded (e.g. a photo the gallery already holds).

    Yields:
        One :class:`EmbeddedPhoto` per readable photo.
    """
    folder = Path(images_dir)
    meta: list[tuple[str, str, np.ndarray | None]] = []

    def decoded():
        for name, box in items:
            try:
                data = (folder / name).read_bytes()
                sha = sha256_bytes(data)
                if skip is not None and skip(name, sha):
                    bar.update(1)
                    continue
                img = decode_image(data, FOLDER_LIMITS)
            except (OSError, InputImageError) as exc:
                log.warning("skipping %s: %s", name, getattr(exc, "detail", exc))
                continue
            meta.append((name, sha, img.pixels if keep_pixels else None))
            yield img.pixels, box

    bar = tqdm(total=len(items), desc=desc, unit="photo", disable=not progress, leave=False)
    try:
        for i, emb in enumerate(embedder.embed_many(decoded(), flipped=flipped)):
            name, sha, pixels = meta[i]
            meta[i] = ("", "", None)  # release pixels early
            bar.update(1)
            yield EmbeddedPhoto(name, sha, emb, pixels)
    finally:
        bar.close()


def build_gallery(
    gallery: Gallery,
    embedder: PhotoEmbedder,
    images_dir: str | Path,
    photos: Sequence[tuple[str, str, object]],
    flipped: bool = False,
    thumbnails: bool = True,
    originals: bool = True,
    edges: bool = False,
    actor: str = "build-gallery",
    local_features: Callable[[np.ndarray, np.ndarray], bytes] | None = None,
    progress: bool = True,
) -> dict:
    """Embed labelled photos and enrol them, one durable transaction per identity.

    Args:
        gallery: the gallery to fill (existing identities get the photos added).
        embedder: photo embedder.
        images_dir: folder of the photos.
        photos: ``(file name, whale id, base box or None)``; ``new_whale`` and ``unknown`` rows are skipped.
        flipped: also enrol each photo's mirror image under ``<whale_id>:flipped``.
        thumbnails: keep a JPEG thumbnail of each photo in the store.
        actor: who the audit log names for these enrolments.
        edges: extract and keep each photo's trailing-edge descriptor (:mod:`index.edge`; about 0.15 s of
            CPU a photo).
        originals: keep each photo's bytes, perceptual hash and EXIF date and position in the store
            (export, reindex on a new model, near-duplicate checks; the bytes cost the file's size).
        local_features: optional ``(pixels, box) -> bytes`` computing the photo's local features.

    Photos the gallery already holds for their whale (same bytes) are counted as duplicates before
    they are decoded, so re-running on a grown folder only embeds the new photos.

    Returns:
        Counts: ``photos``, ``identities``, ``skipped``, ``duplicates``.
    """
    wanted = [(n, w, b) for n, w, b in photos if w not in ("new_whale", "unknown")]
    owner = {n: w for n, w, _ in wanted}
    stored = gallery.store.stored_photos()
    known: list[str] = []

    def already_stored(name: str, sha: str) -> bool:
        if (owner[name], sha) in stored:
            known.append(name)
            return True
        return False

    pending: dict[str, list[NewImage]] = defaultdict(list)
    pending_flip: dict[str, list[NewImage]] = defaultdict(list)
    need_pixels = thumbnails or local_features is not None or originals or edges
    done = 0
    for ep in embed_folder(
        embedder,
        images_dir,
        [(n, b) for n, _, b in wanted],
        flipped,
        "gallery",
        progress,
        keep_pixels=need_pixels,
        skip=already_stored,
    ):
        wid = owner[ep.image]
        box = ep.embedding.boxes[0]
        pending[wid].append(
            NewImage(
                sha256=ep.sha256,
                embedding=ep.embedding.embedding,
                source=ep.image,
                box_xyxy_px=box.tolist(),
                thumbnail=make_thumbnail(ep.pixels) if thumbnails else None,
                local_features=local_features(ep.pixels, box) if local_features is not None else None,
                **(_catalogue_fields(Path(images_dir) / ep.image, ep.pixels) if originals else {}),
                edge=edge_blob(ep.pixels, box) if edges else None,
            )
        )
        if flipped:
            pending_flip[wid].append(NewImage(sha256=ep.sha256, embedding=ep.embedding.flipped, source=ep.image))
        done += 1
    added, dupes = 0, len(known)
    for wid, imgs in pending.items():
        res = gallery.add(wid, imgs, pending_flip.get(wid), actor=actor)
        added += len(res.image_ids)
        dupes += len(res.duplicate_image_ids)
    skipped = len(wanted) - done - len(known)
    return {"photos": added, "identities": len(pending), "skipped": skipped, "duplicates": dupes}


def _catalogue_fields(path: Path, pixels: np.ndarray) -> dict:
    """A photo's original bytes, perceptual hash and EXIF metadata, as :class:`NewImage` fields."""
    from index.metadata import metadata_from_exif, perceptual_hash

    data = path.read_bytes()
    meta = metadata_from_exif(data).as_dict()
    return {"original": data, "phash": perceptual_hash(pixels), "metadata": meta or None}
