"""Matching a query's local features against the photos of a gallery (brute force or LNBNN + RANSAC)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import CorruptArtifactError
from core.manifest import LocalFeatureSpec
from index.local.features import LocalFeatures, blob_crc, decode_features
from index.local.match import MatchResult, _no_match, match

#: The LNBNN descriptor index's file in the gallery folder (a cache: :class:`index.lnbnn.DescriptorIndex`).
DESCRIPTOR_INDEX_FILE = "descriptors.faiss"

if TYPE_CHECKING:  # index.gallery imports faiss; this module must not need it
    from index.gallery import Gallery

log = logging.getLogger(__name__)

# --- matching against the gallery ----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class IdentityMatch:
    """The best photo of one gallery identity against a query.

    Attributes:
        identity_id: the store's identity id.
        inliers, matches: of the best photo (most inliers; ties go to the lowest image id).
        image_id: that photo, or None when the identity has no photo with local features.
        result: its :class:`MatchResult` (inlier pairs in photo pixels).
        photos: photos with local features compared.
    """

    identity_id: int
    inliers: int
    matches: int
    image_id: int | None
    result: MatchResult
    photos: int


class LocalMatcher:
    """Matches query features against the stored photos of gallery identities.

    Blobs are read with ``gallery.store.local_features_of`` on each call (so enrolments and
    deletions are seen at once) and decoded through an LRU cache keyed by image id. The store's ids
    are ``AUTOINCREMENT`` now, but a store file created before that keeps SQLite's default of
    reusing the largest id after a deletion, so a cache entry is only used when the blob's length
    and stored crc32 (read from its trailer: no hashing per query) also agree.
    A photo stored without local features is not compared; a corrupt blob (logged once, its image
    id kept in ``corrupt_image_ids``) counts as a photo without keypoints (0 inliers) rather than
    failing the query.

    Thread-safe (the cache takes a lock; matching shares no OpenCV object).

    Args:
        gallery: the gallery (only ``gallery.store`` is used).
        spec: the manifest's local-feature section.
        cache_size: decoded photos kept (about 55 KB each with 400 keypoints).
        workers: threads matching one query's photo pairs in parallel (numpy and OpenCV release the
            GIL); 1 matches in the calling thread.
    """

    def __init__(self, gallery: Gallery, spec: LocalFeatureSpec, cache_size: int = 4096, workers: int = 1):
        if cache_size < 0 or workers < 1:
            raise ValueError(f"cache_size must be >= 0 and workers >= 1, got {cache_size} and {workers}")
        self.gallery = gallery
        self.spec = spec
        self.cache_size = int(cache_size)
        self.workers = int(workers)
        self._cache: OrderedDict[int, tuple[int, int | None, LocalFeatures]] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="whaleid-local") if workers > 1 else None
        self.hits = 0
        self.misses = 0
        self.corrupt_image_ids: set[int] = set()
        self.descriptors = None
        if spec.matcher == "lnbnn":
            from index.lnbnn import DescriptorIndex  # imports faiss

            folder = getattr(gallery, "folder", None)
            self.descriptors = DescriptorIndex(
                gallery.store,
                lambda image_id, blob: self._decoded(image_id, blob).descriptors,
                spec.descriptor_factory,
                spec.lnbnn_k,
                spec.nprobe,
                path=None if folder is None else Path(folder) / DESCRIPTOR_INDEX_FILE,
                # what the stored blobs hold: another extractor setting means other descriptors
                fingerprint=f"{spec.detector}/{spec.n_keypoints}/{spec.crop_width_px}",
            )

    def close(self) -> None:
        """Stop the worker threads (if any)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def cache_info(self) -> dict:
        with self._lock:
            return {"size": len(self._cache), "capacity": self.cache_size, "hits": self.hits, "misses": self.misses}

    def _decoded(self, image_id: int, blob: bytes | None) -> LocalFeatures | None:
        if blob is None:
            return None
        key = (len(blob), blob_crc(blob))
        with self._lock:
            entry = self._cache.get(image_id)
            if entry is not None and entry[:2] == key:
                self._cache.move_to_end(image_id)
                self.hits += 1
                return entry[2]
            self.misses += 1
        try:
            features = decode_features(blob, f"{self.gallery.store.path} image {image_id} local_features")
        except CorruptArtifactError as exc:
            if image_id not in self.corrupt_image_ids:
                log.error("%s; the photo is matched as having no keypoints", exc.detail)
            self.corrupt_image_ids.add(image_id)
            features = LocalFeatures.empty()
        if self.cache_size:
            with self._lock:
                self._cache[image_id] = (*key, features)
                self._cache.move_to_end(image_id)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return features

    def gallery_features(self, identity_ids: Iterable[int]) -> dict[int, list[tuple[int, LocalFeatures]]]:
        """``identity_id -> [(image_id, features)]`` of the stored photos that have local features."""
        ids = sorted({int(i) for i in identity_ids})
        out: dict[int, list[tuple[int, LocalFeatures]]] = {i: [] for i in ids}
        for image_id, ident, blob in self.gallery.store.local_features_of(ids):
            features = self._decoded(image_id, blob)
            if features is not None:
                out.setdefault(ident, []).append((image_id, features))
        return out

    def score_identities(self, query: LocalFeatures, identity_ids: Iterable[int]) -> dict[int, IdentityMatch]:
        """Match a query against every stored photo of each identity; keep each identity's best photo.

        Args:
            query: the query photo's features.
            identity_ids: store identity ids (e.g. ``Hit.identity_id`` of an embedding shortlist).

        Returns:
            ``identity_id -> IdentityMatch`` for every id asked (0 inliers when nothing matched).
        """
        photos = self.gallery_features(identity_ids)
        jobs = [(ident, image_id, feats) for ident, rows in photos.items() for image_id, feats in rows]
        results = self._match_jobs(query, jobs)
        best: dict[int, IdentityMatch] = {
            ident: IdentityMatch(ident, 0, 0, None, _no_match(), len(rows)) for ident, rows in photos.items()
        }
        for (ident, image_id, _), res in zip(jobs, results, strict=True):
            cur = best[ident]
            if cur.image_id is None or res.inliers > cur.inliers:
                best[ident] = IdentityMatch(ident, res.inliers, res.matches, image_id, res, cur.photos)
        return best

    def _match_jobs(self, query: LocalFeatures, jobs: list) -> list[MatchResult]:
        if len(query) == 0:
            return [_no_match() for _ in jobs]
        if self._pool is not None and len(jobs) > 1:
            return list(self._pool.map(lambda job: match(query, job[2], self.spec), jobs))
        return [match(query, feats, self.spec) for _, _, feats in jobs]

    def score_photos(self, query: LocalFeatures, image_ids: Iterable[int]) -> dict[int, IdentityMatch]:
        """Match a query against the given gallery photos only; keep each identity's best photo.

        Returns:
            ``identity_id -> IdentityMatch`` for the identities of the photos that have local features.
        """
        rows = self.gallery.store.local_features_of_images(sorted({int(i) for i in image_ids}))
        jobs = []
        for image_id, ident, blob in rows:
            features = self._decoded(image_id, blob)
            if features is not None:
                jobs.append((ident, image_id, features))
        best: dict[int, IdentityMatch] = {}
        counts: dict[int, int] = {}
        for (ident, image_id, _), res in zip(jobs, self._match_jobs(query, jobs), strict=True):
            counts[ident] = counts.get(ident, 0) + 1
            cur = best.get(ident)
            if cur is None or res.inliers > cur.inliers:
                best[ident] = IdentityMatch(ident, res.inliers, res.matches, image_id, res, 0)
        return {
            i: IdentityMatch(m.identity_id, m.inliers, m.matches, m.image_id, m.result, counts[i])
            for i, m in best.items()
        }

    def lnbnn_candidates(self, query: LocalFeatures) -> tuple[dict[int, float], dict[int, IdentityMatch]]:
        """HotSpotter's two steps: LNBNN votes over the descriptor index, then RANSAC on the
        ``spec.verify_k`` best-voted photos (:mod:`index.lnbnn`).

        Returns:
            ``(identity_id -> LNBNN score of its best-voted photo, identity_id -> IdentityMatch of
            its best verified photo)``.

        Raises:
            RuntimeError: the matcher was built with ``matcher="brute_force"``.
        """
        if self.descriptors is None:
            raise RuntimeError("this matcher has no descriptor index (spec.matcher is 'brute_force')")
        if len(query) == 0:
            return {}, {}
        votes = self.descriptors.votes(query.descriptors)
        return votes.identity_scores(), self.score_photos(query, votes.image_ids[: self.spec.verify_k].tolist())
