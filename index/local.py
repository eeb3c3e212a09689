"""Local-feature matching of fluke photos: SIFT keypoints, ratio test, RANSAC inliers, calibrated scores.

The pipeline of one photo (:class:`LocalFeatureExtractor`): crop the fluke box (or take the full
frame), convert to grey, equalise contrast with CLAHE (Zuiderveld 1994), resize to
``spec.crop_width_px`` wide, then detect at most ``spec.n_keypoints`` SIFT keypoints (Lowe 2004) by response.
Keypoints are stored in pixels of the original upright photo, together with the crop->photo
transform, so matching can run in the resized crop space (where ``spec.ransac_reproj_px`` is
defined) and explanations can be drawn on the photo.

Two photos are compared (:func:`match`) by nearest-neighbour matching of the descriptors with
Lowe's ratio test, a one-to-one filter (each gallery keypoint keeps its closest query keypoint),
then a RANSAC homography (or affine) fit; the number of RANSAC inliers is the evidence. This is the
idea behind Wildbook's HotSpotter (Crall et al. 2013) and the local half of wildlife-tools'
WildFusion (Cermak et al. 2024), which fuses a global (embedding) score with a local one through
calibrated logistic regressions, as :func:`fused_score` and :func:`calibrate_from_pairs` do here:

* local score: ``p = sigmoid(a * log1p(inliers) + b [+ c * lnbnn])`` (``spec.calibration``);
* fused score: ``p = sigmoid(w_e * cosine + w_l * log1p(inliers) + bias [+ w_v * lnbnn])`` (``spec.fusion``),

where ``lnbnn`` is the LNBNN score of the identity's best-voted photo when the matcher is
HotSpotter's descriptor index (:mod:`index.lnbnn`; the default): it then chooses the photos that
RANSAC verifies, instead of every photo of every candidate identity.

:class:`LocalMatcher` compares a query with every stored photo of candidate identities of a
:class:`index.gallery.Gallery` (per-identity maximum of inliers), with an LRU cache of decoded
features; :func:`rank_local`, :func:`rank_fused` and :func:`rank_embedding` turn the evidence into
the top-k of each scoring mode, as pure functions shared by the service and calibration.

Blob format (``encode``/``decode``; never pickle), little-endian::

    magic b"WLF1" | n uint32 | crop_w uint32 | crop_h uint32 | crop_to_photo 6 float64
    | keypoints n*2 float32 | descriptors n*128 uint8 | crc32 uint32 of everything before

OpenCV's float SIFT descriptors are integers in 0..255 (saturated in OpenCV itself), so storing
them as ``uint8`` is lossless: about 54 KB per photo with 400 keypoints.

This module imports numpy, cv2 and core only (never torch or faiss).
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from core.boxes import as_box, clip_box
from core.errors import CorruptArtifactError
from core.manifest import LocalFeatureSpec

if TYPE_CHECKING:  # index.gallery imports faiss; this module must not need it
    from index.gallery import Gallery, Hit

log = logging.getLogger(__name__)

DESCRIPTOR_DIM = 128
#: CLAHE clip limit and tile grid (OpenCV's usual values), applied to the grey crop before resizing.
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILE_GRID = (8, 8)
#: The resized crop is at most this many times ``crop_width_px`` high (a tall box is shrunk to fit).
MAX_HEIGHT_RATIO = 2.0
#: A resized crop with a side shorter than this has no usable keypoints: features are empty.
MIN_SIDE_PX = 8
#: Ratio-test matches needed before a geometric model is fitted (a homography needs 4).
MIN_MATCHES = 4
#: OpenCV's USAC framework (RANSAC with SPRT early termination and local optimisation, Raguram et
#: al. 2013), seeded so results are deterministic. On real fluke pairs it gave the same ranking as
#: classic ``cv2.RANSAC`` (MAP@5 0.280 vs 0.275 on 100 queries x 300 identities) at a third of the
#: time (2.4 vs 7.9 ms a pair): classic RANSAC runs all its iterations on impostor pairs.
ROBUST_METHOD = cv2.USAC_DEFAULT
RANSAC_MAX_ITERS = 2000
RANSAC_CONFIDENCE = 0.995
#: Scores equal to this many decimals tie and are ordered by whale id (as in index.gallery).
TIE_DECIMALS = 6

MAGIC = b"WLF1"
_HEADER = struct.Struct("<4sIII6d")
_CRC = struct.Struct("<I")
#: Largest keypoint count a blob may declare (guards allocation on corrupt input).
MAX_BLOB_KEYPOINTS = 100_000


# --- features ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LocalFeatures:
    """SIFT keypoints and descriptors of one photo.

    Attributes:
        keypoints: ``(n, 2) float32`` keypoint centres ``(x, y)`` in pixels of the original upright
            photo (pixel centres at integer coordinates, OpenCV's convention).
        descriptors: ``(n, 128) uint8`` SIFT descriptors (OpenCV's, exactly: they are integers
            in 0..255).
        crop_to_photo: ``(2, 3) float64`` affine map from the resized crop's pixels to the photo's:
            ``photo = crop_to_photo @ (u, v, 1)``.
        crop_size_px: ``(width, height)`` of the resized crop the keypoints were detected in.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    crop_to_photo: np.ndarray
    crop_size_px: tuple[int, int]

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @classmethod
    def empty(cls, crop_to_photo: np.ndarray | None = None, crop_size_px: tuple[int, int] = (0, 0)) -> LocalFeatures:
        """Features of a photo without keypoints: ``(0, 2)`` keypoints and ``(0, 128)`` descriptors."""
        affine = np.eye(2, 3, dtype=np.float64) if crop_to_photo is None else crop_to_photo
        return cls(np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_DIM), np.uint8), affine, tuple(crop_size_px))

    def crop_points(self) -> np.ndarray:
        """``(n, 2) float32`` keypoints in pixels of the resized crop (inverse of ``crop_to_photo``)."""
        if not len(self):
            return np.zeros((0, 2), np.float32)
        inv = cv2.invertAffineTransform(self.crop_to_photo)
        pts = self.keypoints.astype(np.float64) @ inv[:, :2].T + inv[:, 2]
        return pts.astype(np.float32)


def _freeze(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.flags.writeable = False


def encode_features(features: LocalFeatures) -> bytes:
    """Serialise features to the compact blob format of the module docstring (no pickle).

    Args:
        features: keypoints ``(n, 2) float32``, descriptors ``(n, 128) uint8``.

    Returns:
        ``64 + n * 136 + 4`` bytes.
    """
    kp = np.ascontiguousarray(features.keypoints, dtype="<f4").reshape(-1, 2)
    desc = np.ascontiguousarray(features.descriptors, dtype=np.uint8).reshape(-1, DESCRIPTOR_DIM)
    if len(kp) != len(desc):
        raise ValueError(f"{len(kp)} keypoints but {len(desc)} descriptors")
    affine = np.asarray(features.crop_to_photo, dtype=np.float64).reshape(6)
    w, h = (int(v) for v in features.crop_size_px)
    body = _HEADER.pack(MAGIC, len(kp), w, h, *affine.tolist()) + kp.tobytes() + desc.tobytes()
    return body + _CRC.pack(zlib.crc32(body))


def blob_crc(blob: bytes) -> int | None:
    """The crc32 stored in a blob's trailer (no check), or None when the blob is too short."""
    if len(blob) < _HEADER.size + _CRC.size:
        return None
    return _CRC.unpack_from(blob, len(blob) - _CRC.size)[0]


def decode_features(blob: bytes, source: str = "local features blob") -> LocalFeatures:
    """Parse a blob written by :func:`encode_features`; the arrays returned are read-only.

    Args:
        blob: the bytes.
        source: what the blob is, for the error message (e.g. ``"gallery.sqlite image 12"``).

    Raises:
        CorruptArtifactError: not this format, truncated, wrong length or checksum (names ``source``).
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CorruptArtifactError(source, f"local features must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < _HEADER.size + _CRC.size or blob[:4] != MAGIC:
        raise CorruptArtifactError(source, "not a whaleid local-features blob (bad magic or too short)")
    magic, n, w, h, *affine = _HEADER.unpack_from(blob, 0)
    if n > MAX_BLOB_KEYPOINTS or len(blob) != _HEADER.size + n * (8 + DESCRIPTOR_DIM) + _CRC.size:
        raise CorruptArtifactError(source, f"local-features blob of {len(blob)} bytes cannot hold {n} keypoints")
    if zlib.crc32(blob[: -_CRC.size]) != blob_crc(blob):
        raise CorruptArtifactError(source, "local-features blob fails its crc32 check")
    affine_arr = np.array(affine, dtype=np.float64).reshape(2, 3)
    kp = np.frombuffer(blob, dtype="<f4", count=2 * n, offset=_HEADER.size).reshape(n, 2).astype(np.float32)
    desc = np.frombuffer(blob, dtype=np.uint8, count=n * DESCRIPTOR_DIM, offset=_HEADER.size + 8 * n)
    desc = desc.reshape(n, DESCRIPTOR_DIM).copy()
    if not (np.isfinite(affine_arr).all() and np.isfinite(kp).all()):
        raise CorruptArtifactError(source, "local-features blob holds non-finite coordinates")
    _freeze(kp, desc, affine_arr)
    return LocalFeatures(kp, desc, affine_arr, (int(w), int(h)))


class LocalFeatureExtractor:
    """Turns a photo (and its fluke box) into :class:`LocalFeatures`.

    Thread-safe: OpenCV's SIFT and CLAHE objects are not, so each thread gets its own pair
    (created once per thread and reused).

    Args:
        spec: the manifest's local-feature section (``detector``, ``n_keypoints``, ``crop_width_px``).

    Raises:
        ValueError: a detector other than ``"sift"``.
    """

    def __init__(self, spec: LocalFeatureSpec):
        if spec.detector != "sift":
            raise ValueError(f"unknown local feature detector {spec.detector!r} (known: ['sift'])")
        self.spec = spec
        self._tools = threading.local()

    def _sift_and_clahe(self):
        tools = self._tools
        if not hasattr(tools, "sift"):
            tools.sift = cv2.SIFT_create(nfeatures=int(self.spec.n_keypoints))
            tools.clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILE_GRID)
        return tools.sift, tools.clahe

    def prepare(self, pixels: np.ndarray, box=None) -> tuple[np.ndarray, np.ndarray]:
        """Crop, grey, equalise (CLAHE on the crop) and resize a photo: the image SIFT runs on.

        CLAHE runs before resizing: on real flukes that ranked better than equalising the resized
        crop (MAP@5 0.300 vs 0.280, 100 queries x 300 identities).

        Args:
            pixels: ``(H, W, 3) uint8`` RGB (or ``(H, W)`` grey) upright photo.
            box: ``(4,)`` xyxy pixels on the photo, or None for the full frame. It is clipped to the
                photo (:func:`core.boxes.clip_box`) and widened to whole pixels.

        Returns:
            ``(h, w) uint8`` equalised crop, ``w == spec.crop_width_px`` unless the crop is more
            than ``MAX_HEIGHT_RATIO`` times taller than wide (then ``h`` is capped), and the
            ``(2, 3) float64`` crop->photo affine map.

        Raises:
            ValueError: ``pixels`` is not a ``(H, W[, 1 or 3]) uint8`` array, or the box is invalid.
        """
        arr = np.asarray(pixels)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
            raise ValueError(f"pixels must be (H, W, 3) or (H, W) uint8, got {arr.shape} {arr.dtype}")
        height, width = arr.shape[:2]
        if height < 1 or width < 1:
            raise ValueError(f"pixels must be at least 1x1, got {arr.shape}")
        b = clip_box(as_box(box) if box is not None else (0, 0, width, height), width, height)
        x0, y0 = int(math.floor(b[0])), int(math.floor(b[1]))
        x1, y1 = max(int(math.ceil(b[2])), x0 + 1), max(int(math.ceil(b[3])), y0 + 1)
        crop = arr[y0:y1, x0:x1]
        gray = (
            cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
            if crop.ndim == 3 and crop.shape[2] == 3
            else crop.reshape(crop.shape[:2])
        )
        cw, ch = gray.shape[1], gray.shape[0]
        scale = min(self.spec.crop_width_px / cw, MAX_HEIGHT_RATIO * self.spec.crop_width_px / ch)
        new_w, new_h = max(1, round(cw * scale)), max(1, round(ch * scale))
        # cv2.resize maps destination pixel u to source x = (u + 0.5) * cw / new_w - 0.5.
        fx, fy = cw / new_w, ch / new_h
        affine = np.array([[fx, 0.0, 0.5 * fx - 0.5 + x0], [0.0, fy, 0.5 * fy - 0.5 + y0]], dtype=np.float64)
        _, clahe = self._sift_and_clahe()
        equalised = clahe.apply(np.ascontiguousarray(gray))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        return cv2.resize(equalised, (new_w, new_h), interpolation=interp), affine

    def extract(self, pixels: np.ndarray, box=None) -> LocalFeatures:
        """SIFT features of one photo's fluke.

        Args:
            pixels: ``(H, W, 3) uint8`` RGB upright photo.
            box: ``(4,)`` xyxy pixels, or None for the full frame.

        Returns:
            At most ``spec.n_keypoints`` keypoints (the strongest by response). A photo without
            texture (blank water, a 1x1 image, a 940x2 strip) gives empty arrays, never an error.

        Raises:
            ValueError: ``pixels`` or ``box`` is malformed (see :meth:`prepare`).
        """
        image, affine = self.prepare(pixels, box)
        size = (int(image.shape[1]), int(image.shape[0]))
        if min(size) < MIN_SIDE_PX:
            return LocalFeatures.empty(affine, size)
        sift, _ = self._sift_and_clahe()
        keypoints, descriptors = sift.detectAndCompute(image, None)
        if not keypoints or descriptors is None:
            return LocalFeatures.empty(affine, size)
        if len(keypoints) > self.spec.n_keypoints:  # OpenCV keeps ties at the cut-off
            order = np.argsort([-k.response for k in keypoints], kind="stable")[: self.spec.n_keypoints]
            keypoints = [keypoints[i] for i in order]
            descriptors = descriptors[order]
        uv = np.array([k.pt for k in keypoints], dtype=np.float64)
        photo = (uv @ affine[:, :2].T + affine[:, 2]).astype(np.float32)
        desc = np.clip(np.rint(descriptors), 0, 255).astype(np.uint8)
        return LocalFeatures(photo, desc, affine, size)

    def encode_photo(self, pixels: np.ndarray, box=None) -> bytes:
        """``encode(extract(pixels, box))``: the blob kept in the gallery store's ``local_features``."""
        return encode_features(self.extract(pixels, box))

    @staticmethod
    def encode(features: LocalFeatures) -> bytes:
        """See :func:`encode_features`."""
        return encode_features(features)

    @staticmethod
    def decode(blob: bytes, source: str = "local features blob") -> LocalFeatures:
        """See :func:`decode_features`. Raises CorruptArtifactError on a bad blob."""
        return decode_features(blob, source)


# --- matching a pair -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MatchResult:
    """The geometric verification of one photo pair.

    Attributes:
        inliers: RANSAC inliers of the fitted model (0 when fewer than 4 ratio-test matches, or
            when no model was found).
        matches: correspondences that passed the ratio test and the one-to-one filter.
        pairs: ``(inliers, 2, 2) float32`` inlier correspondences in photo pixels:
            ``pairs[i, 0]`` is the query point ``(x, y)``, ``pairs[i, 1]`` the gallery point.
    """

    inliers: int
    matches: int
    pairs: np.ndarray


def _no_match(matches: int = 0) -> MatchResult:
    return MatchResult(0, int(matches), np.zeros((0, 2, 2), np.float32))


def ratio_matches(a: np.ndarray, b: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour matches of descriptors that pass Lowe's ratio test, one-to-one.

    Brute-force squared L2 distances ``|a|^2 + |b|^2 - 2 a.b`` (one ``cv2.gemm``, which follows
    ``cv2.setNumThreads``), the two nearest gallery descriptors of each query descriptor, Lowe's
    test ``d1 < ratio * d2`` (Lowe 2004); then each gallery descriptor keeps only its closest query
    descriptor, so a gallery keypoint never counts twice in RANSAC. On real flukes (100 queries x
    300 identities) that filter raised MAP@5 from 0.218 to 0.275: without it, repeated texture on
    an impostor photo collected up to 62 "inliers".

    Args:
        a: ``(n, 128)`` query descriptors (uint8 or float32).
        b: ``(m, 128)`` gallery descriptors.
        ratio: Lowe's ratio in ``(0, 1)``.

    Returns:
        ``(query_idx, gallery_idx)``: two ``(k,) int64`` arrays, in query order. Empty when ``a``
        is empty or ``b`` has fewer than 2 descriptors (no second neighbour for the test).
    """
    none = np.zeros(0, np.int64)
    if len(a) == 0 or len(b) < 2:
        return none, none
    fa = np.ascontiguousarray(a, dtype=np.float32)
    fb = np.ascontiguousarray(b, dtype=np.float32)
    norms = (fa * fa).sum(1)[:, None] + (fb * fb).sum(1)[None, :]
    d2 = cv2.gemm(fa, fb, -2.0, norms, 1.0, flags=cv2.GEMM_2_T)
    rows = np.arange(len(fa))
    best = d2.argmin(axis=1)
    d_best = np.maximum(d2[rows, best], 0.0)
    d2[rows, best] = np.inf
    d_second = np.maximum(d2.min(axis=1), 0.0)
    keep = np.flatnonzero(d_best < (ratio * ratio) * d_second)
    if not len(keep):
        return none, none
    order = keep[np.argsort(d_best[keep], kind="stable")]
    _, first_of_each = np.unique(best[order], return_index=True)
    chosen = np.sort(order[first_of_each])
    return chosen.astype(np.int64), best[chosen].astype(np.int64)


def match(a: LocalFeatures, b: LocalFeatures, spec: LocalFeatureSpec) -> MatchResult:
    """Geometric verification of a query photo ``a`` against a gallery photo ``b``.

    Ratio test (:func:`ratio_matches`, ``spec.ratio``), then ``cv2.findHomography``
    (``spec.geometry == "homography"``) or ``cv2.estimateAffine2D`` (``"affine"``) with RANSAC
    (``ROBUST_METHOD``: OpenCV's USAC), with the inlier threshold ``spec.ransac_reproj_px`` in pixels
    of the resized crops (both photos' keypoints are mapped back to their crops first). OpenCV's
    random generator is seeded, so results are deterministic.

    Returns:
        The inlier count, the ratio-test match count and the inlier pairs in photo pixels. Fewer
        than 4 matches, or no model found, gives 0 inliers (never an error).
    """
    qi, gi = ratio_matches(a.descriptors, b.descriptors, spec.ratio)
    if len(qi) < MIN_MATCHES:
        return _no_match(len(qi))
    src = a.crop_points()[qi].reshape(-1, 1, 2)
    dst = b.crop_points()[gi].reshape(-1, 1, 2)
    if spec.geometry == "affine":
        model, mask = cv2.estimateAffine2D(
            src,
            dst,
            method=ROBUST_METHOD,
            ransacReprojThreshold=float(spec.ransac_reproj_px),
            maxIters=RANSAC_MAX_ITERS,
            confidence=RANSAC_CONFIDENCE,
        )
    else:
        model, mask = cv2.findHomography(
            src,
            dst,
            ROBUST_METHOD,
            float(spec.ransac_reproj_px),
            maxIters=RANSAC_MAX_ITERS,
            confidence=RANSAC_CONFIDENCE,
        )
    if model is None or mask is None or not np.isfinite(model).all():
        return _no_match(len(qi))
    inl = np.flatnonzero(mask.reshape(-1))
    pairs = np.stack([a.keypoints[qi[inl]], b.keypoints[gi[inl]]], axis=1).astype(np.float32)
    return MatchResult(int(len(inl)), int(len(qi)), pairs)


# --- scores and their calibration ----------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _lnbnn_column(lnbnn, n: int) -> np.ndarray:
    return np.zeros(n) if lnbnn is None else np.asarray(lnbnn, dtype=np.float64).reshape(-1)


def local_scores(inliers, calibration: Sequence[float], lnbnn=None) -> np.ndarray:
    """Vectorised :func:`local_score`: ``(n,)`` inlier counts (and ``(n,)`` LNBNN scores) ->
    ``(n,) float64`` in ``(0, 1)``."""
    a, b, *rest = (float(v) for v in calibration)
    x = np.log1p(np.asarray(inliers, dtype=np.float64).reshape(-1))
    c = rest[0] if rest else 0.0
    return _sigmoid(a * x + b + c * _lnbnn_column(lnbnn, len(x)))


def local_score(inliers: float, calibration: Sequence[float], lnbnn: float = 0.0) -> float:
    """Calibrated local score ``sigmoid(a * log1p(inliers) + b [+ c * lnbnn])``.

    ``calibration = (a, b)``, or ``(a, b, c)`` when the LNBNN score of the identity's best-voted
    photo (:mod:`index.lnbnn`) is a second feature.
    """
    return float(local_scores(np.array([inliers]), calibration, np.array([lnbnn]))[0])


def fused_scores(cosine, inliers, fusion: Sequence[float], lnbnn=None) -> np.ndarray:
    """Vectorised :func:`fused_score`: ``(n,)`` cosines, inliers (and LNBNN scores) -> ``(n,) float64``."""
    w_e, w_l, bias, *rest = (float(v) for v in fusion)
    cos = np.asarray(cosine, dtype=np.float64).reshape(-1)
    w_v = rest[0] if rest else 0.0
    x = np.log1p(np.asarray(inliers, dtype=np.float64).reshape(-1))
    return _sigmoid(w_e * cos + w_l * x + bias + w_v * _lnbnn_column(lnbnn, len(cos)))


def fused_score(cosine: float, inliers: float, fusion: Sequence[float], lnbnn: float = 0.0) -> float:
    """WildFusion-style score ``sigmoid(w_e * cosine + w_l * log1p(inliers) + bias [+ w_v * lnbnn])``;
    ``fusion = (w_e, w_l, bias)`` or ``(w_e, w_l, bias, w_v)`` with the LNBNN score as a third cue."""
    return float(fused_scores(np.array([cosine]), np.array([inliers]), fusion, np.array([lnbnn]))[0])


def fit_logistic(
    X: np.ndarray,
    y: np.ndarray,
    l2: float = 1e-3,
    iters: int = 100,
    sample_weight: np.ndarray | None = None,
    tol: float = 1e-10,
) -> np.ndarray:
    """L2-penalised logistic regression by Newton's method (IRLS) with a backtracking line search.

    Minimises ``mean_i w_i * (log(1 + exp(z_i)) - y_i z_i) + l2 / 2 * |coef|^2`` with
    ``z = X @ coef + intercept``; the intercept is not penalised. Weights are rescaled to mean 1.

    Args:
        X: ``(n, f) float64`` features (``(n,)`` is taken as one feature).
        y: ``(n,)`` labels in ``{0, 1}``; both must occur.
        l2: penalty on the coefficients (>= 0); a small one keeps separable data finite.
        iters: most Newton steps.
        sample_weight: optional ``(n,)`` non-negative weights.
        tol: stop when no coefficient moves by more than this.

    Returns:
        ``(f + 1,) float64``: the ``f`` coefficients, then the intercept.

    Raises:
        ValueError: shapes disagree, values are not finite, labels are not 0/1 or one class is missing.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or len(X) != len(y) or not len(y):
        raise ValueError(f"X must be (n, f) and y (n,), got {X.shape} and {y.shape}")
    if not (np.isfinite(X).all() and np.isin(y, (0.0, 1.0)).all()):
        raise ValueError("X must be finite and y must hold only 0 and 1")
    if y.min() == y.max():
        raise ValueError("fit_logistic needs both classes (0 and 1) in y")
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if w.shape != y.shape or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("sample_weight must be (n,) finite, non-negative and not all zero")
    w = w / w.mean()
    n, f = X.shape
    Z = np.hstack([X, np.ones((n, 1))])
    pen = np.full(f + 1, float(l2))
    pen[-1] = 0.0

    def objective(beta: np.ndarray) -> float:
        z = Z @ beta
        return float(np.mean(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * np.sum(pen * beta * beta))

    beta = np.zeros(f + 1)
    current = objective(beta)
    for _ in range(int(iters)):
        p = _sigmoid(Z @ beta)
        grad = Z.T @ (w * (p - y)) / n + pen * beta
        hess = (Z.T * (w * p * (1.0 - p))) @ Z / n + np.diag(pen) + 1e-12 * np.eye(f + 1)
        step = np.linalg.solve(hess, grad)
        t, decrease = 1.0, float(grad @ step)
        for _ in range(40):
            trial = objective(beta - t * step)
            if trial <= current - 1e-4 * t * decrease:
                break
            t *= 0.5
        beta = beta - t * step
        current = objective(beta)
        if np.max(np.abs(t * step)) < tol:
            break
    return beta


@dataclass(frozen=True)
class LocalCalibration:
    """Coefficients fitted by :func:`calibrate_from_pairs`, ready for ``LocalFeatureSpec``.

    Attributes:
        calibration: ``(a, b)`` of the local score, or ``(a, b, c)`` with LNBNN scores.
        fusion: ``(w_embedding, w_local, bias)`` of the fused score (``(..., w_lnbnn)`` with LNBNN
            scores), or None without cosines.
        pairs: pairs used; genuine: how many were same-whale pairs.
    """

    calibration: tuple[float, ...]
    fusion: tuple[float, ...] | None
    pairs: int
    genuine: int


def calibrate_from_pairs(
    inliers: Sequence[float],
    same_whale: Sequence[bool],
    cosines: Sequence[float] | None = None,
    l2: float = 1e-3,
    balanced: bool = False,
    lnbnn: Sequence[float] | None = None,
    lnbnn_weight: float = 4.0,
) -> LocalCalibration:
    """Fit the local and fused logistic calibrations on genuine vs impostor pairs (WildFusion's recipe).

    Typically each validation query is matched against its candidates: a pair is genuine when the
    candidate is the query's whale.

    Args:
        inliers: ``(n,)`` RANSAC inliers of each pair (per-identity maximum).
        same_whale: ``(n,) bool`` the pair shows one whale.
        cosines: optional ``(n,)`` embedding cosine of each pair; without it ``fusion`` is None.
        l2: penalty of :func:`fit_logistic`.
        balanced: weight the classes equally (otherwise the scores estimate the probability at the
            validation set's own genuine/impostor ratio).
        lnbnn: optional ``(n,)`` LNBNN score of each pair (:mod:`index.lnbnn`). The local evidence is
            then ``log1p(inliers) + lnbnn_weight * lnbnn``, one feature whose two parts keep the fixed
            ratio ``lnbnn_weight``: fitted freely, the pair-level fit gave LNBNN a weight near 0
            (its scale varies from query to query), which ranked worse on real flukes (playground
            split, 300 queries: local MAP@5 0.553 against 0.585 at weight 4; weights 2 and 4 within 0.003).
        lnbnn_weight: that ratio.

    Returns:
        ``calibration`` ``(a, b)`` from ``log1p(inliers)``, or ``(a, b, a * lnbnn_weight)`` with
        LNBNN scores; ``fusion`` ``(w_e, w_l, bias)`` from ``(cosine, log1p(inliers))``, or with
        ``w_l * lnbnn_weight`` appended.

    Raises:
        ValueError: lengths differ, or one class is missing.
    """
    x_local = np.log1p(np.asarray(inliers, dtype=np.float64).reshape(-1))
    y = np.asarray(same_whale, dtype=bool).reshape(-1).astype(np.float64)
    if len(x_local) != len(y):
        raise ValueError(f"{len(x_local)} inlier counts but {len(y)} labels")
    x = x_local
    if lnbnn is not None:
        v = np.asarray(lnbnn, dtype=np.float64).reshape(-1)
        if len(v) != len(y):
            raise ValueError(f"{len(v)} LNBNN scores but {len(y)} labels")
        x = x_local + float(lnbnn_weight) * v
    weight = None
    if balanced and 0 < y.sum() < len(y):
        weight = np.where(y > 0, 0.5 / y.mean(), 0.5 / (1.0 - y.mean()))
    a, b = fit_logistic(x[:, None], y, l2=l2, sample_weight=weight)
    calibration = (float(a), float(b)) + ((float(a) * float(lnbnn_weight),) if lnbnn is not None else ())
    fusion = None
    if cosines is not None:
        cos = np.asarray(cosines, dtype=np.float64).reshape(-1)
        if len(cos) != len(y):
            raise ValueError(f"{len(cos)} cosines but {len(y)} labels")
        w_e, w_l, bias = fit_logistic(np.stack([cos, x], axis=1), y, l2=l2, sample_weight=weight)
        fusion = (float(w_e), float(w_l), float(bias))
        fusion += (float(w_l) * float(lnbnn_weight),) if lnbnn is not None else ()
    return LocalCalibration(calibration, fusion, int(len(y)), int(y.sum()))


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

            self.descriptors = DescriptorIndex(
                gallery.store,
                lambda image_id, blob: self._decoded(image_id, blob).descriptors,
                spec.descriptor_factory,
                spec.lnbnn_k,
                spec.nprobe,
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

    def _answerable(self) -> dict[int, str]:
        return {i: name for i, (name, flipped) in self.gallery.store.identity_names().items() if not flipped}

    def rank_local(self, query: LocalFeatures, k: int = 5, explain: bool = False) -> list[RankedIdentity]:
        """``local`` mode: LNBNN candidates verified by RANSAC (``matcher="lnbnn"``), or every
        answerable identity matched photo by photo (``"brute_force"``, about 1 to 3 ms a gallery photo)."""
        names = self._answerable()
        if self.descriptors is None:
            return rank_local(self.score_identities(query, names), names, self.spec.calibration, k, explain)
        lnbnn, matches = self.lnbnn_candidates(query)
        return rank_local(matches, names, self.spec.calibration, k, explain, lnbnn)

    def rank_fused(
        self,
        query: LocalFeatures,
        shortlist: Sequence[Hit],
        k: int = 5,
        explain: bool = False,
        embedding: np.ndarray | None = None,
    ) -> list[RankedIdentity]:
        """``fused`` mode: re-rank the embedding shortlist (``gallery.search(embedding, spec.shortlist_k)``).

        With ``matcher="lnbnn"`` the identities of the verified LNBNN candidates join the shortlist
        (their cosine computed from ``embedding``, the query's ``(d,) float32`` embedding), so a weak
        embedding cannot hide the true whale; the shortlist's own photos are verified only where
        LNBNN voted for them. With ``"brute_force"`` every photo of the shortlist is verified.
        """
        if self.descriptors is None:
            matches = self.score_identities(query, [h.identity_id for h in shortlist])
            return rank_fused(shortlist, matches, self.spec.fusion, self.spec.calibration, k, explain)
        lnbnn, matches = self.lnbnn_candidates(query)
        hits = list(shortlist)
        have = {h.identity_id for h in hits}
        extra = [i for i in matches if i not in have]
        if extra and embedding is not None:
            from index.gallery import Hit

            names = self._answerable()
            cosines = self.gallery.similarities(embedding, extra)
            hits += [Hit(names[i], cosines[i], i) for i in extra if i in names and i in cosines]
        return rank_fused(hits, matches, self.spec.fusion, self.spec.calibration, k, explain, lnbnn)


# --- ranking (pure functions) --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RankedIdentity:
    """One identity of a ranking, with the evidence behind its score.

    Attributes:
        whale_id, identity_id: the identity.
        score: the scoring mode's score (cosine, local score or fused score), used for the ranking
            and compared with the mode's new_whale threshold.
        cosine: embedding cosine similarity, when known.
        inliers, matches: RANSAC inliers and ratio-test matches of the best photo (None in
            embedding mode).
        local_score: calibrated local score, fused_score: fused score (None when not computed).
        image_id: the gallery photo with the most inliers.
        pairs: ``(inliers, 2, 2) float32`` inlier pairs (query point, gallery point) in photo
            pixels, only when asked for (``explain``).
        lnbnn: LNBNN score of the identity's best-voted photo (``matcher="lnbnn"``; 0 when no
            vote), which breaks ties of equal scores and inliers.
    """

    whale_id: str
    identity_id: int
    score: float
    cosine: float | None = None
    inliers: int | None = None
    matches: int | None = None
    local_score: float | None = None
    fused_score: float | None = None
    image_id: int | None = None
    pairs: np.ndarray | None = None
    lnbnn: float | None = None


def _top_k(entries: list[RankedIdentity], k: int) -> list[RankedIdentity]:
    entries.sort(
        key=lambda e: (
            -round(e.score, TIE_DECIMALS),
            -(e.inliers or 0),
            -round(e.lnbnn or 0.0, TIE_DECIMALS),
            e.whale_id,
        )
    )
    seen: set[str] = set()
    out = []
    for e in entries:  # keep the first (best) entry of each identity
        if e.whale_id not in seen:
            seen.add(e.whale_id)
            out.append(e)
        if len(out) == k:
            break
    return out


def rank_embedding(shortlist: Sequence[Hit], k: int = 5) -> list[RankedIdentity]:
    """``embedding`` mode in the common shape: the search hits, score = cosine."""
    return _top_k(
        [RankedIdentity(h.whale_id, h.identity_id, float(h.score), cosine=float(h.score)) for h in shortlist], k
    )


def rank_local(
    matches: Mapping[int, IdentityMatch],
    names: Mapping[int, str],
    calibration: Sequence[float],
    k: int = 5,
    explain: bool = False,
    lnbnn: Mapping[int, float] | None = None,
) -> list[RankedIdentity]:
    """``local`` mode: identities ranked by calibrated local score (per-identity maximum inliers).

    Args:
        matches: ``identity_id -> IdentityMatch`` (from :meth:`LocalMatcher.score_identities`).
        names: ``identity_id -> whale_id`` of the identities that may be answered; others are skipped.
        calibration: ``(a, b)`` of :func:`local_score`.
        k: identities returned.
        explain: attach the inlier pairs.
        lnbnn: ``identity_id -> LNBNN score`` (LNBNN matcher): breaks ties of equal inliers, and
            voted identities that were not verified are ranked with 0 inliers after the verified ones.

    Returns:
        Up to ``k`` distinct identities, best first; ties (equal to ``TIE_DECIMALS``) by more
        inliers, then the higher LNBNN score, then whale id.
    """
    entries = []
    for ident, m in matches.items():
        if ident not in names:
            continue
        lb = None if lnbnn is None else float(lnbnn.get(ident, 0.0))
        ls = local_score(m.inliers, calibration, lb or 0.0)
        pairs = m.result.pairs if explain else None
        entries.append(
            RankedIdentity(names[ident], ident, ls, None, m.inliers, m.matches, ls, None, m.image_id, pairs, lb)
        )
    if lnbnn is not None and len(entries) < k:
        for ident, lb in lnbnn.items():
            if ident in names and ident not in matches:
                ls0 = local_score(0, calibration, float(lb))
                pairs = np.zeros((0, 2, 2), np.float32) if explain else None
                entries.append(RankedIdentity(names[ident], ident, ls0, None, 0, 0, ls0, None, None, pairs, float(lb)))
    return _top_k(entries, k)


def rank_fused(
    shortlist: Sequence[Hit],
    matches: Mapping[int, IdentityMatch],
    fusion: Sequence[float],
    calibration: Sequence[float] | None = None,
    k: int = 5,
    explain: bool = False,
    lnbnn: Mapping[int, float] | None = None,
) -> list[RankedIdentity]:
    """``fused`` mode: an embedding shortlist re-ranked by ``fused_score(cosine, inliers)``.

    Args:
        shortlist: embedding hits (``whale_id``, cosine ``score``, ``identity_id``), e.g. the top
            ``spec.shortlist_k`` of ``Gallery.search``.
        matches: ``identity_id -> IdentityMatch``; a shortlisted identity without one counts 0 inliers.
        fusion: ``(w_embedding, w_local, bias)`` of :func:`fused_score`.
        calibration: ``(a, b)`` to report each identity's local score too (None: not reported).
        k: identities returned.
        explain: attach the inlier pairs.
        lnbnn: ``identity_id -> LNBNN score`` (LNBNN matcher), reported and used to break ties.

    Returns:
        Up to ``k`` distinct identities, best first; ties by more inliers, then LNBNN score, then whale id.
    """
    entries = []
    for h in shortlist:
        m = matches.get(h.identity_id)
        inliers = m.inliers if m is not None else 0
        lb = None if lnbnn is None else float(lnbnn.get(h.identity_id, 0.0))
        fs = fused_score(float(h.score), inliers, fusion, lb or 0.0)
        entries.append(
            RankedIdentity(
                h.whale_id,
                h.identity_id,
                fs,
                float(h.score),
                inliers,
                m.matches if m is not None else 0,
                local_score(inliers, calibration, lb or 0.0) if calibration is not None else None,
                fs,
                m.image_id if m is not None else None,
                (m.result.pairs if m is not None else np.zeros((0, 2, 2), np.float32)) if explain else None,
                lb,
            )
        )
    return _top_k(entries, k)
