"""The gallery of known whales: a durable store plus a FAISS index, searched concurrently.

Scoring (``GallerySpec.embedding_scoring``):

* ``centroid``: one vector per identity, the L2-normalised mean of its photos' L2-normalised
  embeddings (the 3rd-place recipe of the Kaggle 2019 Humpback Whale Identification competition).
  Adding or removing a photo recomputes that identity's centroid from the store.
* ``image_max``: one vector per photo; an identity scores its best photo (per-identity maximum of
  the nearest neighbours, as the Happywhale 2022 winner ranked).

Mirror identities (``<whale_id>:flipped``) may be enrolled and compete in the index but are never
answered. Searches hold a shared lock; a change takes the exclusive lock only while the in-memory
index is updated, after the store has committed (and fsynced) it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from core.manifest import Manifest, check_embedding_dim
from index.gallery_ops import CatalogueOps
from index.ranking import top_k_distinct
from index.store import GalleryStore, NewImage, flipped_id, open_store, validate_whale_id
from index.vectors import VectorIndex, as_float32_matrix, l2_normalize

log = logging.getLogger(__name__)

STORE_FILE = "gallery.sqlite"
INDEX_FILE = "index.npz"

EmbeddingScoring = Literal["centroid", "image_max"]
#: scores equal to this many decimals count as a tie (broken by whale id)
TIE_DECIMALS = 6


class RWLock:
    """A readers-writer lock that prefers writers (a waiting change is not starved by searches)."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass(frozen=True)
class Hit:
    """One ranked identity: ``score`` is a cosine similarity in ``[-1, 1]``."""

    whale_id: str
    score: float
    identity_id: int


@dataclass(frozen=True)
class AddResult:
    whale_id: str
    image_ids: list[int]
    duplicate_image_ids: list[int]
    images_total: int


class Gallery(CatalogueOps):
    """Identities, their photos' embeddings, and a FAISS index over them.

    Args:
        folder: where ``gallery.sqlite`` and ``index.npz`` live (created when absent).
        dim: embedding dimension.
        factory: FAISS factory string (see :class:`index.vectors.VectorIndex`).
        embedding_scoring: ``"centroid"`` or ``"image_max"``.
        model_sha256: checksum of the model whose embeddings the store holds (checked on open).
        durable: fsync every change (False only for throw-away galleries).
        store_url: a ``postgresql://`` URL: the store is that database, shared with other replicas
            (each change any replica commits wakes this gallery's catch-up through the store's change
            feed); None: the SQLite file ``gallery.sqlite`` in ``folder``.
        busy_timeout_s: how long a change waits for another process's write lock on the store, in
            seconds, before failing with ``StoreBusyError``.

    Raises:
        CorruptArtifactError: the store or the index snapshot is unreadable (names the file).
        ManifestMismatchError: the store was built for another dimension or model.
    """

    def __init__(
        self,
        folder: str | Path,
        dim: int,
        factory: str = "IDMap2,Flat",
        embedding_scoring: EmbeddingScoring = "centroid",
        model_sha256: str | None = None,
        durable: bool = True,
        busy_timeout_s: float = 5.0,
        store_url: str | None = None,
    ):
        if embedding_scoring not in ("centroid", "image_max"):
            raise ValueError(f"embedding_scoring must be 'centroid' or 'image_max', got {embedding_scoring!r}")
        self.folder = Path(folder)
        self.dim = int(dim)
        self.factory = factory
        self.scoring = embedding_scoring
        self.store: GalleryStore = open_store(
            store_url or self.folder / STORE_FILE, self.dim, model_sha256, durable, busy_timeout_s
        )
        self._rw = RWLock()
        self._mutate = threading.Lock()
        self._names: dict[int, tuple[str, bool]] = {}
        self._image_owner: dict[int, int] = {}
        self._images_of: dict[int, set[int]] = defaultdict(set)
        self._vectors = VectorIndex(self.dim, factory)
        self._generation = -1  # the store generation the in-memory index reflects (-1: unknown)
        self.refresh_interval_s = 1.0
        self._checked_at = 0.0
        self._load_or_rebuild()
        subscribe = getattr(self.store, "subscribe", None)  # a shared store's change feed (PostgreSQL)
        if subscribe is not None:
            subscribe(self._on_store_change)

    def _on_store_change(self, generation: int | None) -> None:
        """The change feed's wake-up (listener thread): catch up now rather than at the next search's
        check; ``generation`` None means notifications may have been missed."""
        if generation is None or generation != self._generation:
            self.refresh(force=True)

    @classmethod
    def for_manifest(
        cls, folder: str | Path, manifest: Manifest, busy_timeout_s: float = 5.0, store_url: str | None = None
    ) -> Gallery:
        """Open (or create) the gallery of a bundle with the manifest's dimension, factory and scoring
        (``store_url``: a shared PostgreSQL store instead of ``folder``'s SQLite file)."""
        g = cls(
            folder,
            manifest.model.embedding_dim,
            manifest.gallery.factory,
            manifest.gallery.embedding_scoring,
            manifest.model.sha256,
            busy_timeout_s=busy_timeout_s,
            store_url=store_url,
        )
        check_embedding_dim(manifest, g.dim, f"gallery {g.folder}")
        return g

    # -- building the in-memory index -------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.folder / INDEX_FILE

    def _load_or_rebuild(self) -> None:
        """Load the index snapshot when it matches the store's generation, else rebuild from the store.

        Reads the store in one transaction, builds the new index aside, then swaps it in under the
        exclusive lock, so searches running meanwhile see the old or the new gallery, never a mix.
        A store with a change log (PostgreSQL) is caught up instead: only the identities changed
        since the generation the index reflects are re-read (:meth:`_catch_up`).
        """
        if self._catch_up():
            return
        generation, names, image_ids, idents, embs = self.store.snapshot()
        image_owner = dict(zip(image_ids.tolist(), idents.tolist(), strict=True))
        images_of: dict[int, set[int]] = defaultdict(set)
        for img, ident in image_owner.items():
            images_of[ident].add(img)
        vectors = None
        if self.index_path.exists():
            loaded, meta = VectorIndex.load(self.index_path, self.dim, self.factory)
            if meta.get("generation") == generation and meta.get("scoring") == self.scoring:
                vectors = loaded
            else:
                log.info(
                    "gallery index snapshot %s is older than the store (generation %s, store %s: photos were "
                    "enrolled or removed since it was saved): rebuilding it from the store",
                    self.index_path,
                    meta.get("generation"),
                    generation,
                )
        if vectors is None:
            vectors = VectorIndex(self.dim, self.factory)
            if self.scoring == "image_max":
                if len(image_ids):
                    vectors.upsert(image_ids, embs)
            elif len(image_ids):
                order = np.argsort(idents, kind="stable")
                uniq, starts = np.unique(idents[order], return_index=True)
                sums = np.add.reduceat(embs[order].astype(np.float64), starts, axis=0)
                vectors.upsert(uniq, l2_normalize(sums))
        with self._rw.write():
            self._names, self._image_owner, self._images_of = names, image_owner, images_of
            self._vectors, self._generation = vectors, generation

    def _catch_up(self) -> bool:
        """Re-read only the identities the store's change log names since this index's generation.

        Returns:
            False when the store keeps no change log (SQLite), the index reflects no known
            generation, or the log no longer reaches back that far: the caller rebuilds.
        """
        changes_since = getattr(self.store, "changes_since", None)
        if changes_since is None or self._generation < 0:
            return False
        delta = changes_since(self._generation)
        if delta is None:
            return False
        generation, changed = delta
        names = self.store.identity_names() if changed else {}
        # every identity's losses before any gain: a photo moved between two of them (merge, move) is
        # removed from its old identity before it is added to its new one, never after
        current = {ident: self.store.image_ids_of(ident) for ident in changed}
        with self._rw.write():
            for ident in changed:
                old = self._images_of.get(ident, set())
                gone = old - current[ident]
                if not gone:
                    continue
                for image_id in gone:
                    if self._image_owner.get(image_id) == ident:
                        self._image_owner.pop(image_id)
                if self.scoring == "image_max":
                    self._vectors.remove(sorted(gone))
                self._images_of[ident] = old & current[ident]
        for ident in sorted(changed):
            self._resync(ident)  # a deleted identity leaves the index and the names
            if ident in names:  # one that stays (even without photos, as a rebuild keeps it) is named
                with self._rw.write():
                    self._names[ident] = names[ident]
        self._generation = generation
        log.debug("gallery caught up to generation %d: %d identities re-read", generation, len(changed))
        return True

    def refresh(self, force: bool = False) -> bool:
        """Pick up changes another process (e.g. ``whaleid build-gallery``) committed to the store.

        Checks the store's generation at most every ``refresh_interval_s`` seconds (always with
        ``force``) and reloads when it differs from the one the in-memory index reflects.

        Returns:
            Whether the gallery was reloaded.
        """
        now = time.monotonic()
        if not force and now - self._checked_at < self.refresh_interval_s:
            return False
        self._checked_at = now
        if self.store.generation == self._generation:
            return False
        with self._mutate:
            if self.store.generation == self._generation:
                return False
            log.info("gallery store %s changed outside this process: reloading", self.store.path)
            self._load_or_rebuild()
            return True

    def _track(self) -> bool:
        """After one of this gallery's own store changes: advance the generation, or tell (False) that
        another process changed the store in between, so the caller reloads instead of patching."""
        change, self.store.last_change = self.store.last_change, None
        if change is None:
            return True  # nothing committed (e.g. only duplicates)
        if change[0] == self._generation:
            self._generation = change[1]
            return True
        if getattr(self.store, "changes_since", None) is None:
            self._generation = -1  # unknown: the caller rebuilds
        return False  # else the caller catches up from the change log, from the generation kept

    def save(self) -> Path:
        """Snapshot the FAISS index beside the store (atomic), tagged with the store generation it
        reflects (a snapshot taken after another process's change is tagged stale and rebuilt)."""
        with self._mutate, self._rw.read():
            return self._vectors.save(self.index_path, {"generation": self._generation, "scoring": self.scoring})

    # -- changes -----------------------------------------------------------------------------

    def _resync(self, ident: int) -> None:
        """Bring one identity's entries in the in-memory index in line with the store.

        Called under ``self._mutate`` after the store committed a change; the exclusive lock is held
        only for the in-memory update.
        """
        current = self.store.image_ids_of(ident)
        centroid = None
        if current and self.scoring == "centroid":
            embs = self.store.embeddings_of(ident)
            centroid = l2_normalize(embs.astype(np.float64).sum(axis=0, keepdims=True))
        new_vecs = None
        old = self._images_of.get(ident, set())
        if self.scoring == "image_max" and current - old:
            added = sorted(current - old)
            _, idents, embs = self.store.all_embeddings_of_images(added)
            new_vecs = (added, embs)
        with self._rw.write():
            # photos that left this identity, unless another identity's resync already took them (a merge
            # or a move keeps a photo's id: it must not be dropped from the index by its old owner)
            gone = {i for i in old - current if self._image_owner.get(i, ident) == ident}
            for i in gone:
                self._image_owner.pop(i, None)
            if self.scoring == "image_max":
                self._vectors.remove(sorted(gone))
                if new_vecs is not None:
                    self._vectors.upsert(*new_vecs)
            elif centroid is not None:
                self._vectors.upsert([ident], centroid)
            else:
                self._vectors.remove([ident])
            for i in current:
                self._image_owner[i] = ident
            if current:
                self._images_of[ident] = set(current)
            else:
                self._images_of.pop(ident, None)
                self._names.pop(ident, None)

    def add(
        self,
        whale_id: str,
        images: Sequence[NewImage],
        flipped: Sequence[NewImage] | None = None,
        actor: str | None = None,
    ) -> AddResult:
        """Add photos to an identity (created when absent); durable when this returns.

        Args:
            whale_id: the identity (validated by :func:`index.store.validate_whale_id`).
            images: the photos, with ``(d,) float32`` L2-normalised embeddings.
            flipped: optional mirror images of the same photos, enrolled under ``<whale_id>:flipped``.

        Returns:
            What was added; photos already stored for this identity (same sha256) are reported
            as duplicates and not added again.

        Raises:
            InvalidIdentityError: a whale id that cannot be used.
        """
        validate_whale_id(whale_id)
        with self._mutate:
            groups = [(whale_id, images, False)] + ([(flipped_id(whale_id), flipped, True)] if flipped else [])
            outs = self.store.add_image_groups(groups, actor)  # one transaction: photos and mirrors, or nothing
            in_step = self._track()
            out = outs[0]
            self._names[out.identity_id] = (whale_id, False)
            self._resync(out.identity_id)
            if flipped:
                fout = outs[1]
                self._names[fout.identity_id] = (flipped_id(whale_id), True)
                self._resync(fout.identity_id)
            if not in_step:
                self._load_or_rebuild()
            total = len(self._images_of.get(out.identity_id, ()))
        return AddResult(whale_id, out.added_ids, out.duplicate_ids, total)

    def remove_identity(self, whale_id: str, actor: str | None = None) -> None:
        """Delete an identity, its mirror identity and all their photos (durable when this returns).

        Raises:
            UnknownIdentityError: no such identity.
        """
        with self._mutate:
            for ident in self.store.remove_identity(whale_id, actor):
                self._resync(ident)
            if not self._track():
                self._load_or_rebuild()

    def remove_image(self, whale_id: str, image_id: int, actor: str | None = None) -> bool:
        """Delete one photo (and its mirror copy). Returns whether the identity went with it.

        Raises:
            UnknownIdentityError, UnknownImageError.
        """
        with self._mutate:
            mirror = (
                self.store.identity_id(flipped_id(whale_id)) if self.store.has_identity(flipped_id(whale_id)) else None
            )
            ident, _sha, deleted = self.store.remove_image(whale_id, image_id, actor)
            self._resync(ident)
            if mirror is not None:
                self._resync(mirror)
            if not self._track():
                self._load_or_rebuild()
        return deleted

    # -- queries -----------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of identities that can be answered (mirror identities excluded)."""
        return sum(1 for _, flipped in self._names.values() if not flipped)

    @property
    def n_vectors(self) -> int:
        return len(self._vectors)

    def whale_ids(self) -> list[str]:
        return sorted(name for name, flipped in self._names.values() if not flipped)

    def answerable_names(self) -> dict[int, str]:
        """``identity_id -> whale_id`` of the identities an identification may answer (not the mirrors)."""
        self.refresh()
        with self._rw.read():
            return {i: name for i, (name, flipped) in self._names.items() if not flipped}

    def search(self, queries, k: int = 5) -> list[list[Hit]]:
        """Top-``k`` distinct identities of each query, best first (mirror identities never answered).

        Scores equal to ``TIE_DECIMALS`` decimals are ordered by whale id, so results do not depend
        on insertion order or float rounding.

        Args:
            queries: ``(q, d) float32`` L2-normalised embeddings (or ``(d,)`` for one query).
            k: identities per query (>= 1).

        Returns:
            One list of up to ``k`` hits per query (fewer when the gallery is smaller).
        """
        q = as_float32_matrix(queries, self.dim, "queries")
        self.refresh()
        with self._rw.read():
            total = len(self._vectors)
            if total == 0:
                return [[] for _ in range(len(q))]
            fetch = min(total, max(2 * k, k + 8) if self.scoring == "centroid" else 4 * k)
            results: list[list[Hit] | None] = [None] * len(q)
            todo = np.arange(len(q))
            while len(todo):
                scores, ids = self._vectors.search(q[todo], fetch)
                retry = []
                for row, qi in enumerate(todo):
                    hits = self._rank(scores[row], ids[row], k)
                    if len(hits) < k and fetch < total:
                        retry.append(qi)
                    else:
                        results[qi] = hits
                todo = np.array(retry, dtype=np.int64)
                fetch = min(total, fetch * 4)
        return results  # type: ignore[return-value]

    def _rank(self, scores: np.ndarray, ids: np.ndarray, k: int) -> list[Hit]:
        names, owners = self._names, self._image_owner
        pairs = []
        for s, vid in zip(scores.tolist(), ids.tolist(), strict=True):
            if vid < 0:
                continue
            ident = owners.get(vid) if self.scoring == "image_max" else vid
            if ident is None or ident not in names:
                continue
            name, flipped = names[ident]
            if not flipped:
                pairs.append((name, s, ident))
        pairs.sort(key=lambda p: (-round(p[1], TIE_DECIMALS), p[0]))
        ranked = top_k_distinct([p[0] for p in pairs], [p[1] for p in pairs], k)
        ident_of = {}
        for name, _s, ident in pairs:
            ident_of.setdefault(name, ident)
        return [Hit(name, score, ident_of[name]) for name, score in ranked]

    def ranking_within(self, query: np.ndarray, names: dict[int, str], k: int) -> list[Hit]:
        """The embedding ranking restricted to ``names`` (``identity_id -> whale_id``): exact cosines as
        :meth:`similarities` scores them, best first, ties by whale id; ``query`` ``(d,) float32``."""
        sims = self.similarities(query, list(names))
        ordered = sorted(sims.items(), key=lambda kv: (-round(kv[1], TIE_DECIMALS), names[kv[0]]))
        return [Hit(names[i], float(s), i) for i, s in ordered[:k]]

    def centroid(self, whale_id: str) -> np.ndarray:
        """``(d,) float32`` L2-normalised centroid of an identity's photos (computed from the store).

        Raises:
            UnknownIdentityError.
        """
        embs = self.store.embeddings_of(self.store.identity_id(whale_id))
        return l2_normalize(embs.astype(np.float64).sum(axis=0, keepdims=True))[0]

    def similarities(self, query, identity_ids) -> dict[int, float]:
        """Cosine of one query embedding with each given identity, as :meth:`search` scores it (the
        centroid's cosine, or the best photo's with ``image_max``); unknown ids are left out.

        Args:
            query: ``(d,) float32`` L2-normalised embedding.
            identity_ids: store identity ids.
        """
        q = as_float32_matrix(query, self.dim, "query")[0]
        out: dict[int, float] = {}
        with self._rw.read():
            for ident in identity_ids:
                ident = int(ident)
                if self.scoring == "centroid":
                    if ident in self._vectors:
                        out[ident] = float(self._vectors.vector(ident) @ q)
                else:
                    sims = [
                        float(self._vectors.vector(i) @ q) for i in self._images_of.get(ident, ()) if i in self._vectors
                    ]
                    if sims:
                        out[ident] = max(sims)
        return out

    def close(self) -> None:
        self.store.close()
