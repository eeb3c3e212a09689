"""What the service loads once (in the lifespan) and the request pipeline it runs.

The pipeline itself lives in :mod:`index.identify` (shared with ``whaleid predict``, so both rank
alike): photo bytes → decode (EXIF, RGB, limits) → base box (detector, or none) → TTA boxes → crops
→ micro-batched onnxruntime call → centre of the box embeddings → gallery search → the scoring
mode's ranking → new_whale placed by the threshold. Decoding and cropping run in worker threads;
the network runs in the micro-batcher's thread; searches and re-ranking run in worker threads,
concurrently under the gallery's shared lock.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from anyio import to_thread

from core.errors import WhaleidError
from core.manifest import Manifest
from core.preprocess import DecodeLimits
from index.build import make_thumbnail
from index.bundle import open_bundle
from index.edge import edge_blob
from index.identify import PreparedPhoto
from index.metadata import PhotoMetadata, SearchScope, near_duplicates, perceptual_hash
from index.store import GalleryStore, NewImage
from service.batching import MicroBatcher
from service.config import Settings
from service.metrics import Metrics

log = logging.getLogger(__name__)


def gpu_name() -> str | None:
    """Name of the first NVIDIA GPU (from the driver's /proc entry or nvidia-smi), or None."""
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            for line in Path(info).read_text().splitlines():
                if line.startswith("Model:"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            continue
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=5
            )
            return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            return None
    return None


class WhaleService:
    """The loaded bundle: manifest, onnxruntime session, detector, gallery, micro-batcher, metrics.

    Raises (at construction):
        ManifestError, ManifestMismatchError, CorruptArtifactError: a bundle that cannot be served.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.bundle = Path(settings.bundle)
        opened = open_bundle(
            self.bundle,
            settings.gallery_dir,
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
            busy_timeout_s=settings.busy_timeout_s,
            store_url=settings.store_url.get_secret_value() if settings.store_url else None,
        )
        self.manifest: Manifest = opened.manifest
        m = self.manifest
        self.embedder, self.model, self.detector = opened.embedder, opened.model, opened.embedder.detector
        self.gallery_dir, self.gallery = opened.gallery_dir, opened.gallery
        #: the catalogue's store, through its interface (the routes read photos and identities from it)
        self.store: GalleryStore = opened.gallery.store
        self.limits = DecodeLimits(
            settings.max_upload_bytes, settings.max_image_pixels, "WHALEID_MAX_UPLOAD_BYTES", "WHALEID_MAX_IMAGE_PIXELS"
        )
        self.metrics = Metrics()
        self.identifier = opened.identifier(self.limits, settings.scoring)
        self.scoring: str = self.identifier.scoring
        self.local, self.matcher = self.identifier.local, self.identifier.matcher
        h, w = m.preprocess.input_size
        self.batcher = MicroBatcher(
            self.model, settings.batch_max_boxes, settings.batch_wait_ms / 1000.0, (3, h, w), self.metrics.on_batch
        )
        self.gpu = gpu_name() if "CUDAExecutionProvider" in self.model.providers else None
        self._changes = 0
        self._snapshot_task: asyncio.Task | None = None
        self.update_gauges()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.batcher.start()
        descriptors = getattr(self.matcher, "descriptors", None)
        if descriptors is not None:
            # Build the LNBNN descriptor index from the store now, so the first query does not wait for it.
            t0 = time.perf_counter()
            await to_thread.run_sync(descriptors.sync)
            log.info(
                "descriptor index ready: %d photos, %d descriptors (%s, %s) in %.1f s",
                len(descriptors),
                descriptors.n_descriptors,
                descriptors.built_factory,
                descriptors.origin,
                time.perf_counter() - t0,
            )

    async def stop(self) -> None:
        await self.batcher.stop()
        if self._snapshot_task is not None:
            await asyncio.gather(self._snapshot_task, return_exceptions=True)
        try:
            self.gallery.save()
        except Exception:  # noqa: BLE001 - the store is the truth; a missing snapshot is rebuilt
            log.exception("could not save the gallery snapshot at shutdown")
        descriptors = getattr(self.matcher, "descriptors", None)
        if descriptors is not None:  # the LNBNN index as it now is, so the next start loads it (a cache too)
            await to_thread.run_sync(descriptors.save)
        self.gallery.close()

    def update_gauges(self) -> None:
        self.metrics.gallery_identities.set(len(self.gallery))
        self.metrics.gallery_images.set(self.store.count_images())

    def ready_info(self) -> dict:
        m = self.manifest
        return {
            "status": "ready",
            "model_version": m.model_version,
            "architecture": m.model.architecture,
            "embedding_dim": m.model.embedding_dim,
            "input_size": list(m.preprocess.input_size),
            "gallery_size": len(self.gallery),
            "gallery_images": self.store.count_images(),
            "gallery_factory": m.gallery.factory,
            "providers": self.model.providers,
            "gpu": self.gpu,
            "detector": m.detector is not None,
            "tta": m.tta.describe(has_box=m.detector is not None),
            "scoring": self.scoring,
            "scoring_modes": self.available_modes(),
            # the modes a request may use without its own threshold (the review page offers these)
            "calibrated_modes": [m for m in self.available_modes() if m in self.manifest.thresholds],
            "thresholds": {k: v.value for k, v in m.thresholds.items()},
            "local_matcher": None if m.local_features is None else m.local_features.matcher,
        }

    def available_modes(self) -> list[str]:
        return self.identifier.available_modes()

    # -- pipeline ----------------------------------------------------------------------------

    async def prepare(
        self, data: bytes, flipped: bool = False, metadata: PhotoMetadata | None = None, enrol: bool = False
    ) -> PreparedPhoto:
        """Decode a photo and build its model inputs (in a worker thread); its metadata is ``metadata``
        completed by its EXIF; ``enrol``: the inputs of an enrolled photo (``gallery.enrol_boxes``).

        Raises:
            InputImageError subclasses: empty, too large, unsupported, undecodable.
        """
        return await to_thread.run_sync(self.identifier.prepare, data, flipped, metadata, enrol)

    async def embed(self, prep: PreparedPhoto, flipped: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """``(d,)`` embedding of a prepared photo (and of its mirror image when ``flipped``)."""
        t0 = time.perf_counter()
        out = await self.batcher.submit(prep.inputs)
        prep.timings_ms["embed"] = (time.perf_counter() - t0) * 1e3
        return self.identifier.embeddings_of(prep, out, flipped)

    async def identify(
        self,
        data: bytes,
        k: int = 5,
        threshold: float | None = None,
        scoring: str | None = None,
        explain: bool = False,
        scope: SearchScope | None = None,
        metadata: PhotoMetadata | None = None,
    ) -> dict:
        """Identify one photo: top-``k`` identities with new_whale placed by the threshold
        (:meth:`index.identify.Identifier.rank`, the network run by the micro-batcher), among the whales
        inside ``scope`` when given.

        A photo already in the gallery (same bytes) names its whale first with score 1.0 (evidence
        ``exact_photo``), whatever the model says.

        Raises:
            InputImageError subclasses for bad photos; InvalidRequestError for a scoring mode the
            bundle lacks or one without a calibrated threshold (and no ``threshold`` given).
        """
        t_start = time.perf_counter()
        self.identifier.resolve(scoring, threshold)  # a bad request fails before any work
        prep = await self.prepare(data, metadata=metadata)
        query, _ = await self.embed(prep)
        res = await to_thread.run_sync(self.identifier.rank, prep, query, k, scoring, threshold, explain, scope)
        timings = res["timing_ms"]
        timings["total"] = (time.perf_counter() - t_start) * 1e3
        for stage, ms in timings.items():
            if stage != "total":
                self.metrics.stage.labels(stage).observe(ms / 1e3)
        res["timing_ms"] = {k2: round(v, 2) for k2, v in timings.items()}
        return res

    async def enrol(
        self,
        photos: list[tuple[str, bytes]],
        whale_id: str | None,
        metadata: PhotoMetadata | None = None,
        actor: str | None = None,
    ) -> dict:
        """Enrol photos under ``whale_id`` (a new readable id when None), atomically.

        Every photo is decoded and embedded before anything is stored, so a bad photo fails the
        request and stores nothing. Photos already stored for the whale (same bytes) are not added twice.
        Each photo is stored with its original bytes, its perceptual hash and its metadata (``metadata``
        over its EXIF); stored photos within ``NEAR_DUPLICATE_BITS`` of a new one (a re-saved or resized
        copy) are reported in ``near_duplicates``.

        Raises:
            InputImageError subclasses (naming no file: the message says which one in ``detail``),
            InvalidIdentityError.
        """
        from index.store import validate_whale_id

        if whale_id is not None:
            validate_whale_id(whale_id)
        flipped = self.manifest.gallery.include_flipped
        new, mirror = [], []
        for name, data in photos:
            try:
                prep = await self.prepare(data, flipped, metadata, enrol=True)
            except WhaleidError as exc:
                exc.detail = f"{exc.detail} (file {name!r})" if name else exc.detail
                raise
            emb, femb = await self.embed(prep, flipped)
            sha = prep.sha256
            thumb, feats, phash, edge = await to_thread.run_sync(self._extras, prep)
            box = prep.boxes[0].tolist()
            new.append(NewImage(sha, emb, name or None, box, thumb, feats, prep.metadata or None, phash, data, edge))
            if flipped:
                mirror.append(NewImage(sha, femb, name or None))
        near = await to_thread.run_sync(self._near_duplicates, new, [name for name, _ in photos])
        wid = whale_id or await to_thread.run_sync(self.store.next_auto_whale_id)
        res = await to_thread.run_sync(self.gallery.add, wid, new, mirror or None, actor)
        self.changed()
        others = await to_thread.run_sync(self._other_owners, wid, [img.sha256 for img in new])
        return {
            "whale_id": wid,
            "images_added": len(res.image_ids),
            "image_ids": res.image_ids,
            "duplicates": len(res.duplicate_image_ids),
            "images_total": res.images_total,
            "gallery_size": len(self.gallery),
            "also_enrolled_as": others,
            "near_duplicates": near,
        }

    def _near_duplicates(self, new: list[NewImage], names: list[str]) -> list[dict]:
        """Stored photos that look like a new one (perceptual hash within ``NEAR_DUPLICATE_BITS``) but are not
        the same bytes: ``[{file, whale_id, image_id, bits}]``."""
        stored = self.store.photo_hashes()
        if not stored:
            return []
        same = {img.sha256 for img in new}
        out = []
        for img, name in zip(new, names, strict=True):
            exact = {i for _, i in self.store.photos_with_sha256(img.sha256)} if img.sha256 in same else set()
            for wid, image_id, bits in near_duplicates(img.phash, stored):
                if image_id not in exact:
                    out.append({"file": name or None, "whale_id": wid, "image_id": image_id, "bits": bits})
        return out

    def _other_owners(self, whale_id: str, sha256s: list[str]) -> list[str]:
        """Whales other than ``whale_id`` holding a photo with one of these checksums, sorted."""
        store = self.store
        return sorted({w for sha in set(sha256s) for w, _ in store.photos_with_sha256(sha) if w != whale_id})

    def _extras(self, prep: PreparedPhoto) -> tuple[bytes, bytes | None, str, bytes | None]:
        thumb = make_thumbnail(prep.image.pixels, self.settings.thumbnail_px)
        feats = self.local.encode_photo(prep.image.pixels, prep.base_box) if self.local is not None else None
        edge = edge_blob(prep.image.pixels, prep.base_box) if self.manifest.edge is not None else None
        return thumb, feats, perceptual_hash(prep.image.pixels), edge

    def changed(self) -> None:
        """Count a gallery change; snapshot the FAISS index in the background every ``snapshot_every``."""
        self.update_gauges()
        self._changes += 1
        if self._changes >= self.settings.snapshot_every and (
            self._snapshot_task is None or self._snapshot_task.done()
        ):
            self._changes = 0
            self._snapshot_task = asyncio.get_running_loop().create_task(to_thread.run_sync(self.gallery.save))
