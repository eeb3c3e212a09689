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
features (:mod:`index.local.matcher`); the scoring modes of :mod:`index.modes` turn its evidence into
each mode's top-k.

Modules: :mod:`~index.local.features` (extraction, blob codec), :mod:`~index.local.match` (one pair),
:mod:`~index.local.calibration` (scores and their logistic fit), :mod:`~index.local.matcher` (a query
against the gallery).

Blob format (``encode``/``decode``; never pickle), little-endian::

    magic b"WLF1" | n uint32 | crop_w uint32 | crop_h uint32 | crop_to_photo 6 float64
    | keypoints n*2 float32 | descriptors n*128 uint8 | crc32 uint32 of everything before

OpenCV's float SIFT descriptors are integers in 0..255 (saturated in OpenCV itself), so storing
them as ``uint8`` is lossless: about 54 KB per photo with 400 keypoints.

This package imports numpy, cv2 and core only (never torch; faiss only for the LNBNN index).
"""

from index.local.calibration import (
    LocalCalibration,
    calibrate_from_pairs,
    fit_logistic,
    fused_score,
    fused_scores,
    fusion_for_map5,
    local_score,
    local_scores,
)
from index.local.features import LocalFeatureExtractor, LocalFeatures, blob_crc, decode_features, encode_features
from index.local.match import MatchResult, match, ratio_matches
from index.local.matcher import IdentityMatch, LocalMatcher

__all__ = [
    "IdentityMatch",
    "LocalCalibration",
    "LocalFeatureExtractor",
    "LocalFeatures",
    "LocalMatcher",
    "MatchResult",
    "blob_crc",
    "calibrate_from_pairs",
    "decode_features",
    "encode_features",
    "fit_logistic",
    "fused_score",
    "fused_scores",
    "fusion_for_map5",
    "local_score",
    "local_scores",
    "match",
    "ratio_matches",
]
