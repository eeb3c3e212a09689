"""Does a photo look like a fluke? A check from evidence the bundle already has (torch-free).

A circuit board or an empty sea still gets a ranking; this check tells the reviewer that the ranking
means nothing. Three pieces of evidence, any of which flags the photo:

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
  no retraining and follows the catalogue as it grows. It is only as good as the model: with a
  network trained for minutes on a CPU every photo, fluke or not, lands close to the gallery.
* **unlike fluke photos**: five statistics of the photo itself (:func:`photo_statistics`: mean
  saturation, share of white pixels, share of the most common colour, mean absolute Laplacian,
  number of colours in use) are farther from those of real fluke photos than 99 % of real fluke
  photos are (Mahalanobis distance, a one-class model fitted on real flukes only:
  :data:`PHOTO_MODEL`). Plots, documents, screenshots, synthetic patterns and many indoor photos
  fall outside; a photo of the empty sea does not.

The constants were fitted on half of the real photos of ``../shared/data/flukes/playground2018``
and measured on the other half, on the Kaggle 2019 photos and on non-fluke photos (the README's
"Does it look like a fluke?" figures; ``scripts/measure_fluke_check.py`` reproduces both).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
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

#: One-class model of real fluke photos in the space of :func:`photo_features`: mean, precision
#: (inverse covariance) and the largest Mahalanobis distance accepted (the 99th percentile of the
#: 1,640 real photos it was fitted on). Fitted by ``scripts/measure_fluke_check.py`` (seed 0).
PHOTO_MODEL = {
    "mean": (-4.056988, -4.55182, -0.702188, -2.560024, 2.626452),
    "precision": (
        (1.251901, 0.117289, 0.205869, 1.299913, -4.658634),
        (0.117289, 0.229018, -0.306489, -0.21174, -0.288181),
        (0.205869, -0.306489, 3.623847, 1.994986, 0.512983),
        (1.299913, -0.21174, 1.994986, 8.684801, -5.600623),
        (-4.658634, -0.288181, 0.512983, -5.600623, 20.282908),
    ),
    "max_distance": 4.5014,
}
#: The photo is shrunk to this size (width, height) for its statistics.
STATS_SIZE = (256, 128)


def photo_statistics(pixels: np.ndarray) -> np.ndarray:
    """Five cheap statistics of a photo, on a 256 x 128 copy.

    Args:
        pixels: ``(H, W, 3) uint8`` RGB photo.

    Returns:
        ``(5,) float64``: mean HSV saturation (0..1); share of white pixels (value > 240 and
        saturation < 15 of 255); share of the most common colour (RGB quantised to 8 levels a
        channel); mean absolute Laplacian of the grey image (0..1 per pixel); number of quantised
        colours covering at least 0.1 % of the pixels.
    """
    small = cv2.resize(np.ascontiguousarray(pixels), STATS_SIZE, interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    sat, val = hsv[..., 1].astype(np.float32), hsv[..., 2].astype(np.float32)
    q = (small >> 5).astype(np.int32)
    counts = np.bincount((q[..., 0] * 64 + q[..., 1] * 8 + q[..., 2]).ravel(), minlength=512) / q[..., 0].size
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    lap = float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean()) / 255.0
    return np.array(
        [sat.mean() / 255.0, ((val > 240) & (sat < 15)).mean(), counts.max(), lap, (counts >= 0.001).sum()],
        np.float64,
    )


def photo_features(stats: np.ndarray) -> np.ndarray:
    """Statistics ``(n, 5)`` (or ``(5,)``) to the model's space: logits of the three shares, logs of the rest."""
    x = np.atleast_2d(np.asarray(stats, np.float64))
    eps = 1e-3
    shares = np.clip(x[:, :3], eps, 1 - eps)
    return np.column_stack([np.log(shares / (1 - shares)), np.log(x[:, 3] + eps), np.log(np.maximum(x[:, 4], 1))])


def photo_distance(pixels: np.ndarray, model: dict = PHOTO_MODEL) -> float:
    """Mahalanobis distance of a photo's statistics from real fluke photos (see :data:`PHOTO_MODEL`)."""
    z = photo_features(photo_statistics(pixels))[0] - np.asarray(model["mean"])
    return float(np.sqrt(max(z @ np.asarray(model["precision"]) @ z, 0.0)))


@dataclass(frozen=True)
class FlukeCheck:
    """The verdict and its evidence.

    Attributes:
        looks_like_fluke: False when the photo is unusable, unlike real fluke photos or unlike every
            gallery photo.
        reason: ``"too_small"``, ``"unlike_fluke_photos"``, ``"unlike_gallery"`` or None.
        gallery_similarity: cosine similarity to the nearest gallery identity (None: empty gallery).
        min_similarity: the flag threshold on ``gallery_similarity`` (None: no reference yet).
        reference_photos: gallery photos in the reference.
        min_side_px: the photo's shorter side in pixels.
        photo_distance: distance of the photo's statistics from real fluke photos.
        max_photo_distance: the largest one accepted.
    """

    looks_like_fluke: bool
    reason: str | None
    gallery_similarity: float | None
    min_similarity: float | None
    reference_photos: int
    min_side_px: int
    photo_distance: float | None = None
    max_photo_distance: float | None = None

    def as_dict(self) -> dict:
        return {
            "reason": self.reason,
            "gallery_similarity": None if self.gallery_similarity is None else round(self.gallery_similarity, 5),
            "min_similarity": None if self.min_similarity is None else round(self.min_similarity, 5),
            "reference_photos": self.reference_photos,
            "min_side_px": self.min_side_px,
            "photo_distance": None if self.photo_distance is None else round(self.photo_distance, 3),
            "max_photo_distance": self.max_photo_distance,
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
        photo_model: the one-class model of fluke photos (None: that evidence is not used).
    """

    def __init__(
        self,
        gallery: Gallery,
        quantile: float = REFERENCE_QUANTILE,
        margin: float = REFERENCE_MARGIN,
        min_photos: int = MIN_REFERENCE_PHOTOS,
        photo_model: dict | None = PHOTO_MODEL,
    ):
        self.gallery = gallery
        self.quantile = float(quantile)
        self.margin = float(margin)
        self.min_photos = int(min_photos)
        self.photo_model = photo_model
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
        model = self.photo_model
        dist = photo_distance(pixels, model) if model is not None and side >= MIN_SIDE_PX else None
        max_dist = float(model["max_distance"]) if model is not None else None
        evidence = (best, thr, n_ref, side, dist, max_dist)
        if exact:
            return FlukeCheck(True, None, *evidence)
        if side < MIN_SIDE_PX:
            return FlukeCheck(False, "too_small", *evidence)
        if dist is not None and max_dist is not None and dist > max_dist:
            return FlukeCheck(False, "unlike_fluke_photos", *evidence)
        if best is not None and thr is not None and best < thr:
            return FlukeCheck(False, "unlike_gallery", *evidence)
        return FlukeCheck(True, None, *evidence)
