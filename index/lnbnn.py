"""HotSpotter's LNBNN: one nearest-neighbour index over every enrolled photo's local descriptors.

Brute-force local matching (:meth:`index.local.LocalMatcher.score_identities`) compares a query
with every gallery photo, so its cost grows with the catalogue. HotSpotter (Crall, Stewart,
Berger-Wolf, Rubenstein and Sundaresan, "HotSpotter - Patterned species instance recognition",
WACV 2013), the matcher Wildbook ran on humpback flukes, instead puts all gallery descriptors in one
approximate nearest-neighbour index. Each query descriptor finds its ``K + 1`` nearest gallery
descriptors and votes for the photos of the first ``K`` with the weight of LNBNN (local naive-Bayes
nearest neighbour, McCann and Lowe, CVPR 2012)::

    vote(query descriptor -> photo of neighbour j) = max(0, d_(K+1) - d_j)

(``d`` the L2 distance; the ``(K + 1)``-th neighbour stands for the background distribution, so a
match scores by how much closer it is than an arbitrary descriptor). A query descriptor votes at
most once per photo (its nearest descriptor of that photo). A photo's score is the sum of its votes;
:class:`index.local.LocalMatcher` then verifies only the best-voted photos geometrically (ratio
test + RANSAC) and ranks identities by their best verified photo.

Descriptors are RootSIFT (Arandjelovic and Zisserman, "Three things everyone should know to improve
object retrieval", CVPR 2012): each SIFT vector divided by its L1 norm, then square-rooted, so the
L2 distance compares them by the Hellinger kernel; the result has unit L2 norm.

The index is a FAISS index described by a factory string (``LocalFeatureSpec.descriptor_factory``):
``"auto"`` (the default) searches exactly (``IDMap2,Flat``) while the gallery holds fewer than
``AUTO_EXACT_MAX`` descriptors, then switches to ``IVF{nlist},PQ64x4fs`` (:func:`auto_factory`; an inverted file with
64 sub-quantisers of 4 bits scanned with SIMD, Andre et al. 2017: 32 bytes a descriptor plus its
8-byte id), with ``nlist`` growing with the gallery (past ``AUTO_FLAT_MAX_NLIST`` lists the coarse
quantiser is an HNSW graph, ``IVF{nlist}_HNSW32``, so that adding a descriptor stays cheap) and the index
retrained when the gallery has grown ``AUTO_REBUILD_GROWTH`` times since the last training. Descriptor ids are
``image_id * 2**16 + keypoint``, so a photo's descriptors can be removed by id range.

The index is never the source of truth: it is built from the gallery store's ``local_features``
blobs and brought in step with the store (photos added or removed by this process or another)
whenever the store's generation changes (:meth:`DescriptorIndex.sync`, called before each query).
With a ``path`` it is also a cache on disk (:meth:`DescriptorIndex.save`, written after every full
build and when the service stops): a process that starts adopts the saved index when it was built
from descriptors of the same kind (``fingerprint``) and by the same factory setting, then brings it in
step with the store like any other (image ids are never reused, so photos added or removed meanwhile
are found by id); a missing, unreadable or mismatched file means a rebuild. At 100,000 photos the
rebuild takes about 30 minutes on 2 cores, loading the file seconds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from index.gallery import RWLock

log = logging.getLogger(__name__)

DESCRIPTOR_DIM = 128
#: Descriptor id = image_id << ID_SHIFT | keypoint index (a photo has fewer than 65,536 keypoints).
ID_SHIFT = 16
#: ``"auto"`` searches exactly below this many descriptors (about 5 photos of 400 keypoints): FAISS's
#: exact search of a photo's 400 descriptors costs 400 x n distances (seconds at n = 80,000 on one
#: core), while an inverted file scanning 4-bit codes stays milliseconds.
AUTO_EXACT_MAX = 2_000
#: ``"auto"``'s smallest number of inverted lists.
AUTO_MIN_NLIST = 16
#: ``"auto"``'s largest number of inverted lists with an exact (flat) coarse quantiser: adding a descriptor
#: compares it with every list's centroid, so beyond this the quantiser is an HNSW graph.
AUTO_FLAT_MAX_NLIST = 1024
#: ``"auto"``'s largest number of inverted lists (HNSW coarse quantiser; k-means training grows with it).
AUTO_MAX_NLIST = 16384
#: ``"auto"`` retrains its inverted file when the gallery has grown this many times since.
AUTO_REBUILD_GROWTH = 4.0
#: Training points per inverted list (FAISS warns below 39) and the largest training sample.
MIN_TRAIN_PER_LIST = 39
MAX_TRAIN_POINTS = 500_000
#: Photos decoded per batch while (re)building.
BUILD_CHUNK_PHOTOS = 256
#: Version of the saved index's metadata file (``<path>.json``).
SAVED_FORMAT = 1


def rootsift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT of SIFT descriptors (Arandjelovic and Zisserman 2012): L1-normalise, then square root.

    Args:
        descriptors: ``(n, 128)`` uint8 (or float) non-negative SIFT descriptors.

    Returns:
        ``(n, 128) float32`` with unit L2 norm (an all-zero descriptor stays zero).
    """
    d = np.asarray(descriptors, dtype=np.float32).reshape(-1, DESCRIPTOR_DIM)
    total = d.sum(axis=1, keepdims=True)
    return np.ascontiguousarray(np.sqrt(d / np.maximum(total, 1e-12)), dtype=np.float32)


def auto_factory(n_descriptors: int) -> str:
    """The factory ``"auto"`` picks for a gallery of ``n_descriptors``.

    Exact search for a few photos; else ``IVF{nlist},PQ64x4fs`` with ``nlist`` the power of two
    nearest ``sqrt(n)``, at least ``AUTO_MIN_NLIST``: the low end of FAISS's rule of thumb, because
    4-bit fast-scan codes make long lists cheap to scan, while every descriptor added is compared with
    all ``nlist`` centroids (measured on one busy core: 1,024 lists add a million descriptors in 10 s;
    an HNSW coarse quantiser took 30 s). Where ``sqrt(n)`` would exceed ``AUTO_FLAT_MAX_NLIST`` lists
    (about 2.1 million descriptors, 5,200 photos of 400 keypoints), lists that long make each query
    scan too many codes (measured at 20,000 photos on 2,048 flat lists: 236 ms of votes, against 67 ms at
    2,000 photos), so ``nlist`` becomes the power of two nearest ``2 * sqrt(n)`` (at most
    ``AUTO_MAX_NLIST``) behind an HNSW coarse quantiser (``IVF{nlist}_HNSW32,PQ64x4fs``), whose cost to
    add a descriptor barely grows with ``nlist``: 8 million descriptors (20,000 photos) get 4,096 lists,
    40 million (100,000 photos) 16,384 lists of about 2,400 codes.
    """
    if n_descriptors < AUTO_EXACT_MAX:
        return "IDMap2,Flat"
    nlist = max(AUTO_MIN_NLIST, 2 ** round(math.log2(math.sqrt(n_descriptors))))
    if nlist <= AUTO_FLAT_MAX_NLIST:
        return f"IVF{nlist},PQ64x4fs"
    nlist = min(AUTO_MAX_NLIST, 2 ** round(math.log2(2 * math.sqrt(n_descriptors))))
    return f"IVF{nlist}_HNSW32,PQ64x4fs"


def _nlist(factory: str) -> int:
    for part in factory.split(","):
        if part.startswith("IVF"):
            digits = part[3:].split("_")[0]
            return int(digits) if digits.isdigit() else 0
    return 0


def lnbnn_votes(distances: np.ndarray, neighbour_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """LNBNN votes of query descriptors for gallery photos (HotSpotter, Crall et al. 2013).

    Args:
        distances: ``(n, k + 1)`` float L2 distances of each query descriptor's nearest gallery
            descriptors, nearest first.
        neighbour_ids: ``(n, k + 1) int64`` their descriptor ids (``image_id << 16 | keypoint``;
            ``-1`` for no neighbour).
        k: neighbours that vote; the ``(k + 1)``-th is the normaliser (``sqrt(2)``, the largest
            distance of two RootSIFT vectors, when it is missing).

    Returns:
        ``(image_ids (m,) int64, scores (m,) float64)``: every photo with a positive vote, best
        first (ties by image id). A query descriptor votes at most once per photo, with its nearest
        descriptor of that photo.

    Raises:
        ValueError: the arrays do not have ``k + 1`` columns.
    """
    dist = np.asarray(distances, dtype=np.float64)
    ids = np.asarray(neighbour_ids, dtype=np.int64)
    if dist.ndim != 2 or dist.shape != ids.shape or dist.shape[1] != k + 1 or k < 1:
        raise ValueError(f"distances and ids must both be (n, {k + 1}), got {dist.shape} and {ids.shape}")
    norm = np.where(ids[:, k] >= 0, dist[:, k], math.sqrt(2.0))
    weights = np.maximum(norm[:, None] - dist[:, :k], 0.0)
    photos = np.where(ids[:, :k] >= 0, ids[:, :k] >> ID_SHIFT, -1)
    valid = photos >= 0
    for c in range(1, k):  # only the nearest descriptor of a photo votes for it
        valid[:, c] &= (photos[:, c : c + 1] != photos[:, :c]).all(axis=1)
    valid &= weights > 0
    if not valid.any():
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    uniq, inverse = np.unique(photos[valid], return_inverse=True)
    scores = np.bincount(inverse, weights=weights[valid], minlength=len(uniq))
    order = np.lexsort((uniq, -scores))
    return uniq[order], scores[order]


@dataclass(frozen=True, eq=False)
class PhotoVotes:
    """A query's LNBNN votes.

    Attributes:
        image_ids: ``(m,) int64`` voted gallery photos, best first.
        scores: ``(m,) float64`` their LNBNN scores (sums of distance margins, in RootSIFT distance units).
        identity_ids: ``(m,) int64`` the identity of each photo.
        search_ms: time of the nearest-neighbour search, in milliseconds.
    """

    image_ids: np.ndarray
    scores: np.ndarray
    identity_ids: np.ndarray
    search_ms: float

    def identity_scores(self) -> dict[int, float]:
        """``identity_id -> score`` of its best-voted photo."""
        out: dict[int, float] = {}
        for ident, score in zip(self.identity_ids.tolist(), self.scores.tolist(), strict=True):
            if ident not in out:
                out[ident] = score
        return out


class DescriptorIndex:
    """A FAISS index over the RootSIFT descriptors of every photo in a gallery store.

    Thread-safe: searches run concurrently under a shared lock; :meth:`sync` updates under the
    exclusive lock (a full rebuild is built aside and swapped in).

    Args:
        store: the gallery store (:class:`index.store.GalleryStore`); read with
            ``generation``, ``local_feature_owners`` and ``local_features_of_images``.
        decode: ``(image_id, blob) -> descriptors (n, 128) uint8`` (a corrupt blob should give
            ``(0, 128)``).
        factory: FAISS factory string, or ``"auto"`` (see the module docstring). An IVF factory
            searches exactly until the gallery holds ``39 * nlist`` descriptors to train it.
        k: LNBNN's voting neighbours ``K``.
        nprobe: inverted lists visited per query descriptor (IVF factories).
        path: where the index is saved (FAISS's file format, metadata in ``<path>.json``), or None.
        fingerprint: what the stored descriptors are (e.g. the feature extractor's settings); a saved
            index with another fingerprint is never adopted.

    Raises:
        ValueError: an invalid factory string (FAISS's message is kept), ``k < 1`` or ``nprobe < 1``.
    """

    def __init__(
        self,
        store,
        decode: Callable[[int, bytes], np.ndarray],
        factory: str = "auto",
        k: int = 4,
        nprobe: int = 32,
        path: str | Path | None = None,
        fingerprint: str = "",
    ):
        if k < 1 or nprobe < 1:
            raise ValueError(f"k and nprobe must be >= 1, got {k} and {nprobe}")
        if factory != "auto":
            try:
                faiss.index_factory(DESCRIPTOR_DIM, factory)
            except RuntimeError as exc:
                raise ValueError(f"invalid FAISS factory string {factory!r}: {exc}") from exc
        self.store = store
        self.decode = decode
        self.factory = factory
        self.k = int(k)
        self.nprobe = int(nprobe)
        self.path = None if path is None else Path(path)
        self.fingerprint = str(fingerprint)
        #: where the index came from at the last full (re)build: "built" or "loaded"
        self.origin = ""
        self._saved_generation: int | None = None
        self._rw = RWLock()
        self._mutate = threading.Lock()
        self._index = None
        self._built_factory = ""
        self._trained_for = 0
        self._owner: dict[int, int] = {}  # image_id -> identity_id
        self._count: dict[int, int] = {}  # image_id -> descriptors indexed
        self._generation: int | None = None

    # -- building ------------------------------------------------------------------------------

    def _factory_for(self, n_descriptors: int) -> str:
        if self.factory == "auto":
            return auto_factory(n_descriptors)
        nlist = _nlist(self.factory)
        if nlist and n_descriptors < MIN_TRAIN_PER_LIST * nlist:
            return "IDMap2,Flat"  # too few descriptors to train the inverted file yet: exact meanwhile
        return self.factory

    def _new_index(self, factory: str, train: np.ndarray | None):
        full = factory if (_nlist(factory) or factory.startswith("IDMap")) else "IDMap2," + factory
        index = faiss.index_factory(DESCRIPTOR_DIM, full)
        if not index.is_trained:
            index.train(train)
        if _nlist(full):
            faiss.extract_index_ivf(index).nprobe = self.nprobe
        return index

    def _read(self, image_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
        """Decode photos' descriptors: ``(ids (n,) int64, rootsift (n, 128) float32, counts)``."""
        all_ids, all_vecs, counts = [], [], {}
        for image_id, _ident, blob in self.store.local_features_of_images(image_ids):
            if blob is None:
                continue
            desc = self.decode(image_id, blob)
            counts[image_id] = len(desc)
            if len(desc):
                all_ids.append((image_id << ID_SHIFT) + np.arange(len(desc), dtype=np.int64))
                all_vecs.append(rootsift(desc))
        if not all_ids:
            return np.zeros(0, np.int64), np.zeros((0, DESCRIPTOR_DIM), np.float32), counts
        return np.concatenate(all_ids), np.concatenate(all_vecs), counts

    def _build(self, owners: dict[int, int], progress: bool = False):
        """A new index over every photo in ``owners`` (built aside; the caller swaps it in)."""
        image_ids = sorted(owners)
        # Descriptor counts are known only after decoding; estimate from a sample for the factory.
        rng = np.random.default_rng(0)
        sample = sorted(rng.choice(image_ids, min(len(image_ids), 1000), replace=False).tolist()) if image_ids else []
        s_ids, s_vecs, s_counts = self._read(sample)
        mean = (sum(s_counts.values()) / len(s_counts)) if s_counts else 0.0
        estimate = int(mean * len(image_ids))
        factory = self._factory_for(estimate)
        train = None
        nlist = _nlist(factory)
        if nlist:
            need = min(MAX_TRAIN_POINTS, max(MIN_TRAIN_PER_LIST * nlist, len(s_vecs)))
            train = s_vecs
            if len(train) < need and len(image_ids) > len(sample):  # read more photos for training
                more = [i for i in image_ids if i not in set(sample)]
                extra = rng.choice(more, min(len(more), int((need - len(train)) / max(mean, 1)) + 1), replace=False)
                _, e_vecs, _ = self._read(sorted(extra.tolist()))
                train = np.concatenate([train, e_vecs])
            if len(train) > MAX_TRAIN_POINTS:
                train = train[rng.choice(len(train), MAX_TRAIN_POINTS, replace=False)]
        index = self._new_index(factory, train)
        counts: dict[int, int] = {}
        t0 = time.perf_counter()
        chunks = range(0, len(image_ids), BUILD_CHUNK_PHOTOS)
        if progress:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="descriptor index", unit="chunk")
        for start in chunks:
            ids, vecs, c = self._read(image_ids[start : start + BUILD_CHUNK_PHOTOS])
            counts.update(c)
            if len(ids):
                index.add_with_ids(vecs, ids)
        log.info(
            "descriptor index %s: %d photos, %d descriptors, built in %.1f s",
            factory,
            len(counts),
            index.ntotal,
            time.perf_counter() - t0,
        )
        return index, factory, counts

    def sync(self, progress: bool = False, wait: bool = True) -> bool:
        """Bring the index in step with the store when the store's generation changed.

        Photos added since the last sync are added, removed photos are removed (by id range), and
        the owner map is re-read (so a photo moved to another identity votes for it). The index is
        rebuilt instead when it was never built, when an IVF factory can now be trained, or (auto)
        when the gallery has grown ``AUTO_REBUILD_GROWTH`` times since the last training.

        Args:
            progress: show a progress bar while (re)building.
            wait: when another thread is already syncing, wait for it (False: return at once and
                let the caller search the index as it is, as queries do during a long rebuild).

        Returns:
            Whether anything changed.
        """
        generation = self.store.generation
        if generation == self._generation:
            return False
        if not self._mutate.acquire(blocking=wait):
            return False
        try:
            return self._sync_locked(progress)
        finally:
            self._mutate.release()

    def _sync_locked(self, progress: bool) -> bool:
        """The body of :meth:`sync`, run under ``self._mutate``."""
        generation = self.store.generation
        if generation == self._generation:
            return False
        if self._index is None and self._load():
            generation = self.store.generation
        owners = self.store.local_feature_owners()
        new = sorted(set(owners) - set(self._count))
        gone = sorted(set(self._count) - set(owners))
        total = sum(self._count.values())
        rebuild = self._index is None
        if not rebuild and new:
            mean = total / max(len(self._count), 1) if self._count else 400.0
            grown = int(total + mean * len(new))
            rebuild = self._factory_for(grown) != self._built_factory and (
                self.factory != "auto" or grown >= AUTO_REBUILD_GROWTH * max(self._trained_for, 1)
            )
        if rebuild:
            index, factory, counts = self._build(owners, progress)
            with self._rw.write():
                self._index, self._built_factory, self._count = index, factory, counts
                self._trained_for = int(index.ntotal)
                self._owner, self._generation = dict(owners), generation
                self.origin = "built"
            self.save()
            return True
        ids, vecs, counts = self._read(new) if new else (np.zeros(0, np.int64), None, {})
        with self._rw.write():
            for image_id in gone:
                n = self._count.pop(image_id)
                if n:
                    lo = image_id << ID_SHIFT
                    self._index.remove_ids(faiss.IDSelectorRange(lo, lo + n))
            if len(ids):
                self._index.add_with_ids(vecs, ids)
            self._count.update(counts)
            self._owner, self._generation = dict(owners), generation
        return True

    # -- the cache on disk ------------------------------------------------------------------------

    def _meta_path(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    def save(self) -> Path | None:
        """Write the index to ``path`` (atomically: temporary files, then renamed), unless it is unchanged
        since the last save. Returns the path written, or None (no path, no index, nothing new, or the
        write failed: logged, the index in memory stays in use)."""
        if self.path is None:
            return None
        with self._rw.read():
            if self._index is None or self._generation == self._saved_generation:
                return None
            meta = {
                "format": SAVED_FORMAT,
                "fingerprint": self.fingerprint,
                "factory": self.factory,
                "built_factory": self._built_factory,
                "trained_for": self._trained_for,
                "ntotal": int(self._index.ntotal),
                "generation": self._generation,
                "counts": {str(i): n for i, n in self._count.items()},
            }
            tmp = self.path.with_name(self.path.name + ".tmp")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                faiss.write_index(self._index, str(tmp))
            except (OSError, RuntimeError) as exc:
                log.warning("could not save the descriptor index to %s: %s", self.path, exc)
                return None
            generation = self._generation
        try:
            meta_tmp = self._meta_path().with_name(self._meta_path().name + ".tmp")
            meta_tmp.write_text(json.dumps(meta))
            os.replace(tmp, self.path)
            os.replace(meta_tmp, self._meta_path())
        except OSError as exc:
            log.warning("could not save the descriptor index to %s: %s", self.path, exc)
            return None
        self._saved_generation = generation
        return self.path

    def _load(self) -> bool:
        """Adopt the index saved at ``path`` when it fits; its photos are then brought in step with the
        store by the caller (:meth:`_sync_locked`). False (and a log line) when there is none or it does not fit."""
        if self.path is None or not self.path.is_file():
            return False
        try:
            meta = json.loads(self._meta_path().read_text())
            wrong = [
                key
                for key, want in (
                    ("format", SAVED_FORMAT),
                    ("fingerprint", self.fingerprint),
                    ("factory", self.factory),
                )
                if meta.get(key) != want
            ]
            if wrong:
                log.info("descriptor index %s not used: its %s differ; rebuilding", self.path, ", ".join(wrong))
                return False
            index = faiss.read_index(str(self.path))
            counts = {int(i): int(n) for i, n in meta["counts"].items()}
            if int(index.ntotal) != meta["ntotal"] or sum(counts.values()) != meta["ntotal"]:
                raise ValueError(f"{index.ntotal} descriptors in the file, {meta['ntotal']} in its metadata")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
            log.warning("descriptor index %s unreadable (%s); rebuilding", self.path, exc)
            return False
        if _nlist(meta["built_factory"]):
            faiss.extract_index_ivf(index).nprobe = self.nprobe
        with self._rw.write():
            self._index, self._built_factory, self._count = index, meta["built_factory"], counts
            self._trained_for = int(meta["trained_for"])
            self._saved_generation = meta.get("generation")  # unchanged since: no need to write it again
            self.origin = "loaded"
        log.info("descriptor index loaded from %s: %d photos, %d descriptors", self.path, len(counts), index.ntotal)
        return True

    # -- queries -------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Photos indexed."""
        return len(self._count)

    @property
    def n_descriptors(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    @property
    def built_factory(self) -> str:
        """The FAISS factory string of the index in use (``"auto"`` resolved)."""
        return self._built_factory

    def memory_bytes(self) -> int:
        """Bytes the index holds in memory, from its layout (no copy is made): for an inverted file
        each list's codes (fast-scan lists padded to blocks of 32) and 8-byte ids, plus the coarse
        quantiser's centroids (and its HNSW graph); for exact search the float32 vectors, the ids and the id map."""
        with self._rw.read():
            index = self._index
            if index is None:
                return 0
            ivf = faiss.try_extract_index_ivf(index)
            if ivf is None:
                return int(index.ntotal) * (DESCRIPTOR_DIM * 4 + 8 + 16)
            ivf = faiss.downcast_index(ivf)
            block = int(getattr(ivf, "bbs", 1))
            lists = ivf.invlists
            total = 0
            for i in range(ivf.nlist):
                n = lists.list_size(i)
                total += -(-n // block) * block * ivf.code_size + n * 8
            total += ivf.nlist * DESCRIPTOR_DIM * 4  # the coarse centroids
            hnsw = faiss.downcast_index(ivf.quantizer)
            if isinstance(hnsw, faiss.IndexHNSW):  # its graph: one int32 per neighbour slot, plus offsets
                total += hnsw.hnsw.neighbors.size() * 4 + hnsw.hnsw.offsets.size() * 8
            return total

    def votes(self, descriptors: np.ndarray) -> PhotoVotes:
        """LNBNN votes of a query photo's descriptors for the gallery's photos.

        Args:
            descriptors: ``(n, 128) uint8`` SIFT descriptors of the query photo.

        Returns:
            :class:`PhotoVotes` (empty when the query or the gallery has no descriptors).
        """
        self.sync(wait=self._index is None)  # never wait behind another query's long rebuild
        q = rootsift(descriptors)
        empty = PhotoVotes(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), 0.0)
        with self._rw.read():
            if not len(q) or self._index is None or self._index.ntotal == 0:
                return empty
            t0 = time.perf_counter()
            dist2, ids = self._index.search(q, self.k + 1)
            ms = (time.perf_counter() - t0) * 1e3
            owner = self._owner
        dist = np.sqrt(np.maximum(dist2, 0.0))
        image_ids, scores = lnbnn_votes(dist, ids, self.k)
        keep = np.array([i in owner for i in image_ids.tolist()], dtype=bool)
        image_ids, scores = image_ids[keep], scores[keep]
        idents = np.array([owner[i] for i in image_ids.tolist()], dtype=np.int64)
        return PhotoVotes(image_ids, scores, idents, ms)
