"""What the service loads once (in the lifespan) and the request pipeline it runs.

photo bytes → decode (EXIF, RGB, limits) → base box (detector, or none) → TTA boxes → crops →
micro-batched onnxruntime call → centre of the box embeddings → gallery search → top-k distinct
identities with new_whale placed by the threshold. Decoding and cropping run in worker threads;
the network runs in the micro-batcher's thread; FAISS searches run concurrently under the
gallery's shared lock.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from anyio import to_thread

from core.errors import InvalidRequestError, WhaleidError
from core.fileio import sha256_bytes
from core.manifest import Manifest, ScoringMode, load_manifest
from core.preprocess import DecodedImage, DecodeLimits, decode_image
from index.build import make_thumbnail
from index.embedder import PhotoEmbedder, aggregate_tta, load_embedder_model
from index.gallery import Gallery, Hit
from index.ranking import NEW_WHALE, insert_new_whale
from index.store import NewImage
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


@dataclass
class Prepared:
    """A decoded photo and its model inputs."""

    image: DecodedImage
    base_box: np.ndarray | None
    boxes: np.ndarray
    inputs: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)


class WhaleService:
    """The loaded bundle: manifest, onnxruntime session, detector, gallery, micro-batcher, metrics.

    Raises (at construction):
        ManifestError, ManifestMismatchError, CorruptArtifactError: a bundle that cannot be served.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.bundle = Path(settings.bundle)
        self.manifest: Manifest = load_manifest(self.bundle)
        m = self.manifest
        self.model = load_embedder_model(self.bundle, m, settings.providers, settings.intra_op_threads)
        self.detector = None
        if m.detector is not None:
            from index.detector import OnnxBoxDetector

            self.detector = OnnxBoxDetector.from_bundle(self.bundle, m, settings.providers)
        self.embedder = PhotoEmbedder(self.model, m.preprocess, m.tta, self.detector)
        self.gallery_dir = Path(settings.gallery_dir) if settings.gallery_dir else self.bundle / m.gallery.folder
        self.gallery = Gallery.for_manifest(self.gallery_dir, m)
        self.limits = DecodeLimits(settings.max_upload_bytes, settings.max_image_pixels)
        self.metrics = Metrics()
        self.scoring: ScoringMode = settings.scoring or m.scoring
        self.local = None
        self.matcher = None
        if m.local_features is not None:
            from index.local import LocalFeatureExtractor, LocalMatcher

            self.local = LocalFeatureExtractor(m.local_features)
            self.matcher = LocalMatcher(self.gallery, m.local_features)
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

    async def stop(self) -> None:
        await self.batcher.stop()
        if self._snapshot_task is not None:
            await asyncio.gather(self._snapshot_task, return_exceptions=True)
        try:
            self.gallery.save()
        except Exception:  # noqa: BLE001 - the store is the truth; a missing snapshot is rebuilt
            log.exception("could not save the gallery snapshot at shutdown")
        self.gallery.close()

    def update_gauges(self) -> None:
        self.metrics.gallery_identities.set(len(self.gallery))
        self.metrics.gallery_images.set(self.gallery.store.count_images())

    def ready_info(self) -> dict:
        m = self.manifest
        return {
            "status": "ready",
            "model_version": m.model_version,
            "architecture": m.model.architecture,
            "embedding_dim": m.model.embedding_dim,
            "input_size": list(m.preprocess.input_size),
            "gallery_size": len(self.gallery),
            "gallery_images": self.gallery.store.count_images(),
            "gallery_factory": m.gallery.factory,
            "providers": self.model.providers,
            "gpu": self.gpu,
            "detector": m.detector is not None,
            "tta": m.tta.describe(has_box=m.detector is not None),
            "scoring": self.scoring,
            "scoring_modes": self.available_modes(),
            "thresholds": {k: v.value for k, v in m.thresholds.items()},
        }

    def available_modes(self) -> list[str]:
        return ["embedding"] + (["local", "fused"] if self.matcher is not None else [])

    # -- pipeline ----------------------------------------------------------------------------

    def _prepare_sync(self, data: bytes, flipped: bool) -> Prepared:
        t0 = time.perf_counter()
        image = decode_image(data, self.limits)
        t1 = time.perf_counter()
        base = None
        if self.detector is not None and self.manifest.tta.base == "detector":
            base = self.detector.detect([image.pixels])[0]
        boxes = self.embedder.boxes_for(image.pixels, base)
        inputs = self.embedder.batch_for(image.pixels, boxes, flipped)
        t2 = time.perf_counter()
        return Prepared(image, base, boxes, inputs, {"decode": (t1 - t0) * 1e3, "boxes": (t2 - t1) * 1e3})

    async def prepare(self, data: bytes, flipped: bool = False) -> Prepared:
        """Decode a photo and build its model inputs (in a worker thread).

        Raises:
            InputImageError subclasses: empty, too large, unsupported, undecodable.
        """
        return await to_thread.run_sync(self._prepare_sync, data, flipped)

    async def embed(self, prep: Prepared, flipped: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """``(d,)`` embedding of a prepared photo (and of its mirror image when ``flipped``)."""
        t0 = time.perf_counter()
        out = await self.batcher.submit(prep.inputs)
        prep.timings_ms["embed"] = (time.perf_counter() - t0) * 1e3
        n = len(prep.boxes)
        return aggregate_tta(out[:n]), (aggregate_tta(out[n:]) if flipped else None)

    def best_images(self, hits: list[Hit], query: np.ndarray) -> dict[str, tuple[int, float]]:
        """For each hit, its gallery photo most similar to the query: ``whale_id -> (image_id, cosine)``."""
        out = {}
        for h in hits:
            ids, embs = self.gallery.store.embeddings_with_ids(h.identity_id)
            if len(ids):
                sims = embs @ query
                j = int(np.argmax(sims))
                out[h.whale_id] = (int(ids[j]), float(sims[j]))
        return out

    async def identify(
        self,
        data: bytes,
        k: int = 5,
        threshold: float | None = None,
        scoring: ScoringMode | None = None,
        explain: bool = False,
    ) -> dict:
        """Identify one photo: top-``k`` identities with new_whale placed by the threshold.

        A photo already in the gallery (same bytes) names its whale first with score 1.0 (evidence
        ``exact_photo``), whatever the model says.

        Raises:
            InputImageError subclasses for bad photos; InvalidRequestError for a scoring mode the
            bundle lacks or one without a calibrated threshold (and no ``threshold`` given).
        """
        t_start = time.perf_counter()
        mode: ScoringMode = scoring or self.scoring
        if mode not in self.available_modes():
            raise InvalidRequestError(
                f"scoring mode {mode!r} is not available in this bundle (available: {self.available_modes()})"
            )
        if threshold is None and mode not in self.manifest.thresholds:
            raise InvalidRequestError(
                f"no new_whale threshold is calibrated for scoring mode {mode!r}: pass threshold= or run "
                "`whaleid calibrate`"
            )
        thr = float(threshold) if threshold is not None else self.manifest.threshold_for(mode)
        prep = await self.prepare(data)
        query, _ = await self.embed(prep)
        t0 = time.perf_counter()
        shortlist = max(k, self.manifest.local_features.shortlist_k if (mode == "fused" and self.matcher) else k)
        hits = await to_thread.run_sync(self.gallery.search, query, shortlist)
        hits = hits[0]
        prep.timings_ms["search"] = (time.perf_counter() - t0) * 1e3
        if mode == "embedding":
            ranked = [(h.whale_id, h.score) for h in hits[:k]]
            best = await to_thread.run_sync(self.best_images, hits[:k], query)
            evidence = {
                w: {"embedding_similarity": round(s, 5), "best_image_id": best.get(w, (None,))[0]} for w, s in ranked
            }
        else:
            t1 = time.perf_counter()
            ranked, evidence = await to_thread.run_sync(self._rerank, mode, prep, hits, k, explain)
            prep.timings_ms["local"] = (time.perf_counter() - t1) * 1e3
        exact = await to_thread.run_sync(lambda: self.gallery.store.photos_with_sha256(sha256_bytes(data)))
        if exact:
            # The photo itself is in the gallery: its whale is certain, whatever the model says.
            exact_ids = {w for w, _ in exact}
            for wid, image_id in exact:
                ev = evidence.setdefault(wid, {})
                ev.update(exact_photo=True, best_image_id=image_id)
            ranked = [(w, 1.0) for w in dict.fromkeys(w for w, _ in exact)] + [
                (w, s) for w, s in ranked if w not in exact_ids
            ]
            ranked = ranked[:k]
        final = insert_new_whale(ranked, thr, k)
        predictions = []
        for rank, (wid, score) in enumerate(final, start=1):
            item = {"rank": rank, "whale_id": wid, "score": round(float(score), 5)}
            if wid != NEW_WHALE and wid in evidence:
                item["evidence"] = evidence[wid]
            predictions.append(item)
        prep.timings_ms["total"] = (time.perf_counter() - t_start) * 1e3
        for stage, ms in prep.timings_ms.items():
            if stage != "total":
                self.metrics.stage.labels(stage).observe(ms / 1e3)
        h, w = prep.image.height, prep.image.width
        return {
            "predictions": predictions,
            "boxes": [[round(float(v), 1) for v in b] for b in prep.boxes],
            "detected_box": None if prep.base_box is None else [round(float(v), 1) for v in prep.base_box],
            "image_size": [w, h],
            "exif_rotated": prep.image.exif_transposed,
            "threshold": thr,
            "scoring": mode,
            "model_version": self.manifest.model_version,
            "timing_ms": {k2: round(v, 2) for k2, v in prep.timings_ms.items()},
        }

    def _rerank(self, mode, prep: Prepared, hits: list[Hit], k: int, explain: bool):
        """``local`` or ``fused`` ranking of a prepared photo (in a worker thread)."""
        features = self.local.extract(prep.image.pixels, prep.base_box)
        if mode == "local":
            entries = self.matcher.rank_local(features, k, explain=explain)
        else:
            entries = self.matcher.rank_fused(features, hits, k, explain=explain)
        ranked = [(e.whale_id, e.score) for e in entries]
        evidence = {}
        for e in entries:
            ev = {
                "embedding_similarity": None if e.cosine is None else round(e.cosine, 5),
                "inliers": e.inliers,
                "local_score": None if e.local_score is None else round(e.local_score, 5),
                "fused_score": None if e.fused_score is None else round(e.fused_score, 5),
                "best_image_id": e.image_id,
            }
            if explain and e.pairs is not None:
                ev["keypoint_pairs"] = np.round(e.pairs, 1).tolist()
            evidence[e.whale_id] = {k2: v for k2, v in ev.items() if v is not None}
        return ranked, evidence

    async def enrol(self, photos: list[tuple[str, bytes]], whale_id: str | None) -> dict:
        """Enrol photos under ``whale_id`` (a new readable id when None), atomically.

        Every photo is decoded and embedded before anything is stored, so a bad photo fails the
        request and stores nothing. Photos already stored for the whale (same bytes) are not added twice.

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
                prep = await self.prepare(data, flipped)
            except WhaleidError as exc:
                exc.detail = f"{exc.detail} (file {name!r})" if name else exc.detail
                raise
            emb, femb = await self.embed(prep, flipped)
            sha = sha256_bytes(data)
            thumb, feats = await to_thread.run_sync(self._extras, prep)
            new.append(NewImage(sha, emb, name or None, prep.boxes[0].tolist(), thumb, feats))
            if flipped:
                mirror.append(NewImage(sha, femb, name or None))
        wid = whale_id or await to_thread.run_sync(self.gallery.store.next_auto_whale_id)
        res = await to_thread.run_sync(self.gallery.add, wid, new, mirror or None)
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
        }

    def _other_owners(self, whale_id: str, sha256s: list[str]) -> list[str]:
        """Whales other than ``whale_id`` holding a photo with one of these checksums, sorted."""
        store = self.gallery.store
        return sorted({w for sha in set(sha256s) for w, _ in store.photos_with_sha256(sha) if w != whale_id})

    def _extras(self, prep: Prepared) -> tuple[bytes, bytes | None]:
        thumb = make_thumbnail(prep.image.pixels, self.settings.thumbnail_px)
        feats = self.local.encode_photo(prep.image.pixels, prep.base_box) if self.local is not None else None
        return thumb, feats

    def changed(self) -> None:
        """Count a gallery change; snapshot the FAISS index in the background every ``snapshot_every``."""
        self.update_gauges()
        self._changes += 1
        if self._changes >= self.settings.snapshot_every and (
            self._snapshot_task is None or self._snapshot_task.done()
        ):
            self._changes = 0
            self._snapshot_task = asyncio.get_running_loop().create_task(to_thread.run_sync(self.gallery.save))
