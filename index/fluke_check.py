"""Does a photo look like a fluke? A check from evidence the bundle already has (torch-free).

A circuit board or an empty sea still gets a ranking; this check tells the reviewer that the ranking
means nothing. Two pieces of evidence:

* **unusable**: the upright photo's shorter side is under :data:`MIN_SIDE_PX` pixels (no fluke can
  be told apart at that size). Of the 4,174 real photos of ``../shared/data/flukes`` one is that
  small (a 64 x 30 thumbnail); the next smallest is 107 x 61.
* **unlike the gallery**: the photo's embedding is farther from every gallery identity than
  real flukes of whales *not* in the gallery are. The reference is the gallery itself, leave one
  identity out: for (a sample of) its photos, the cosine similarity to the nearest *other*
  identity, scored as the gallery scores (centroids, or photos with ``image_max``). A photo is
  flagged when its best similarity (``Hit.score`` of the embedding search) is below the
  :data:`REFERENCE_QUANTILE` quantile of that reference minus :data:`REFERENCE_MARGIN`. This is an
  outlier test in the model's own embedding space (nearest-neighbour novelty detection); it needs
  no retraining and follows the catalogue as it grows.

The constants were chosen on real fluke photos and on non-fluke photos (see the README's
"Not a fluke" figures and ``scripts/measure_fluke_check.py``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from index.vectors import l2_normalize

if TYPE_CHECKING:  # index.gallery imports faiss
    from index.gallery import Gallery, Hit

#: Shorter side, in pixels of the upright photo, under which a photo is unusable.
MIN_SIDE_PX = 32
#: Quantile of the gallery's leave-one-identity-out similarities under which a photo is flagged.
REFERENCE_QUANTILE = 0.01
#: Subtracted from that quantile (cosine units): queries are uploads without a box, gallery
#: photos were often enrolled with one, which lowers the similarity of a real fluke a little.
REFERENCE_MARGIN = 0.05
#: Photos of the gallery sampled for the reference (seeded), and the fewest needed for one.
REFERENCE_SAMPLE = 2000
MIN_REFERENCE_PHOTOS = 10
#: The reference is recomputed when the number of stored photos changed by more than this share.
REFERENCE_REFRESH_SHARE = 0.1


@dataclass(frozen=True)
class FlukeCheck:
    """The verdict and its evidence.

    Attributes:
        looks_like_fluke: False when the photo is unusable or unlike every gallery photo.
        reason: ``"too_small"``, ``"unlike_gallery"`` or None.
        gallery_similarity: cosine similarity to the nearest gallery identity (None: empty gallery).
        min_similarity: the flag threshold on ``gallery_similarity`` (None: no reference yet).
        reference_photos: gallery photos in the reference.
        min_side_px: the photo's shorter side in pixels.
    """

    looks_like_fluke: bool
    reason: str | None
    gallery_similarity: float | None
    min_similarity: float | None
    reference_photos: int
    min_side_px: int

    def as_dict(self) -> dict:
        return {
            "reason": self.reason,
            "gallery_similarity": None if self.gallery_similarity is None else round(self.gallery_similarity, 5),
            "min_similarity": None if self.min_similarity is None else round(self.min_similarity, 5),
            "reference_photos": self.reference_photos,
            "min_side_px": self.min_side_px,
        }


def leave_identity_out_similarities(
    embeddings: np.ndarray, identities: np.ndarray, per_photo: bool, sample: int = REFERENCE_SAMPLE, seed: int = 0
) -> np.ndarray:
    """Each sampled photo's cosine similarity to the nearest identity other than its own.

    Args:
        embeddings: ``(n, d) float32`` L2-normalised photo embeddings (mirror identities excluded).
        identities: ``(n,) int64`` identity of each photo.
        per_photo: score an identity by its best photo (``image_max``) instead of its centroid (the
            L2-normalised mean of its photos, as the gallery's ``centroid`` scoring).
        sample: most photos scored (a seeded random choice).

    Returns:
        ``(m,) float64`` similarities, one per sampled photo (empty with fewer than two identities).
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    identities = np.asarray(identities)
    uniq, inverse = np.unique(identities, return_inverse=True)
    if len(uniq) < 2:
        return np.zeros(0)
    rows = np.arange(len(embeddings))
    if len(rows) > sample:
        rows = np.sort(np.random.default_rng(seed).choice(rows, sample, replace=False))
    if per_photo:
        cand, cand_ident = embeddings, inverse
    else:
        sums = np.zeros((len(uniq), embeddings.shape[1]), np.float64)
        np.add.at(sums, inverse, embeddings.astype(np.float64))
        cand, cand_ident = l2_normalize(sums).astype(np.float32), np.arange(len(uniq))
    sims = embeddings[rows] @ cand.T
    sims[cand_ident[None, :] == inverse[rows][:, None]] = -np.inf
    return sims.max(axis=1).astype(np.float64)


class FlukeChecker:
    """The not-a-fluke check of one gallery; its reference is cached and refreshed as the gallery grows.

    Thread-safe.

    Args:
        gallery: the gallery searched by the identify pipeline.
        quantile, margin: see :data:`REFERENCE_QUANTILE`, :data:`REFERENCE_MARGIN`.
        min_photos: fewest gallery photos for a reference (below it nothing is flagged as unlike).
    """

    def __init__(
        self,
        gallery: Gallery,
        quantile: float = REFERENCE_QUANTILE,
        margin: float = REFERENCE_MARGIN,
        min_photos: int = MIN_REFERENCE_PHOTOS,
    ):
        self.gallery = gallery
        self.quantile = float(quantile)
        self.margin = float(margin)
        self.min_photos = int(min_photos)
        self._lock = threading.Lock()
        self._ref: tuple[int, float | None, int] | None = None  # (stored photos, threshold, reference size)

    def reference(self) -> tuple[float | None, int]:
        """``(threshold, reference photos)``; threshold None when the gallery is too small for one."""
        store = self.gallery.store
        n = store.count_images()
        with self._lock:
            if self._ref is not None and abs(n - self._ref[0]) <= REFERENCE_REFRESH_SHARE * max(self._ref[0], 1):
                return self._ref[1], self._ref[2]
        _, idents, embs = store.all_embeddings()
        flipped = {i for i, (_, f) in store.identity_names().items() if f}
        keep = np.array([int(i) not in flipped for i in idents], dtype=bool)
        sims = np.zeros(0)
        if keep.sum() >= self.min_photos:
            sims = leave_identity_out_similarities(embs[keep], idents[keep], self.gallery.scoring == "image_max")
        thr = float(np.quantile(sims, self.quantile)) - self.margin if len(sims) >= self.min_photos else None
        with self._lock:
            self._ref = (n, thr, len(sims))
        return thr, len(sims)

    def check(self, pixels: np.ndarray, hits: list[Hit], exact: bool = False) -> FlukeCheck:
        """Check one photo.

        Args:
            pixels: ``(H, W, 3) uint8`` the upright photo.
            hits: its embedding search hits, best first (``hits[0].score`` is the best cosine).
            exact: the photo is a gallery photo (byte for byte): a fluke by definition.
        """
        side = int(min(pixels.shape[:2]))
        best = float(hits[0].score) if hits else None
        thr, n_ref = self.reference()
        if side < MIN_SIDE_PX and not exact:
            return FlukeCheck(False, "too_small", best, thr, n_ref, side)
        if not exact and best is not None and thr is not None and best < thr:
            return FlukeCheck(False, "unlike_gallery", best, thr, n_ref, side)
        return FlukeCheck(True, None, best, thr, n_ref, side)
