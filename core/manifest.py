"""The bundle manifest: the data contract written beside a model.

A bundle is a folder::

    bundle/
      manifest.json      this contract
      model.onnx         the embedding network (never the ArcFace head)
      detector.onnx      optional fluke box regressor
      gallery/           the gallery store (SQLite) and its FAISS index

Everything a consumer needs to turn a photo into an identity is here: preprocessing constants
(timm's ``input_size``/``mean``/``std``/``interpolation``), the TTA box policy, the embedding
dimension, the FAISS factory string, the scoring mode and the new_whale threshold for each mode.
The service reads preprocessing from here and nowhere else. Loading refuses a manifest of an
unknown format version, and :func:`check_embedding_dim` / :func:`check_input_shape` stop
start-up when model, gallery and manifest disagree.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from core.boxes import TTAPolicy
from core.errors import ManifestError, ManifestMismatchError
from core.fileio import atomic_write_json
from core.preprocess import PreprocessSpec

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "whaleid-bundle"
#: The format version this code writes.
MANIFEST_VERSION = 1
#: Format versions this code can read.
SUPPORTED_VERSIONS = frozenset({1})

#: A scoring mode's name: the built-in ``embedding``, ``local`` and ``fused``, or any mode registered in
#: :mod:`index.modes` (checked where a bundle is opened, since ``core`` knows no implementations).
SCORING_MODE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
ScoringModeName = Annotated[str, StringConstraints(pattern=SCORING_MODE_PATTERN)]
NEW_WHALE = "new_whale"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSpec(_Strict):
    """The exported embedding network.

    Attributes:
        file: ONNX file name inside the bundle.
        sha256: hex checksum of that file, checked at load.
        architecture: timm model name of the backbone, e.g. ``"densenet121"``.
        embedding_dim: length of the L2-normalised embedding the model outputs.
        input_name, output_name: ONNX graph input ``(n, 3, H, W) float32`` and output ``(n, d)``.
        opset: ONNX opset of the export.
        precision: ``"fp32"`` or ``"fp16"`` weights (the graph's input and output stay float32).
        head: the training head the embedding was learnt with (``"arcface"`` or ``"binary"``);
            never exported, recorded for provenance.
    """

    file: str = "model.onnx"
    sha256: str
    architecture: str
    embedding_dim: int = Field(gt=0)
    input_name: str = "input"
    output_name: str = "embedding"
    opset: int = 18
    precision: Literal["fp32", "fp16"] = "fp32"
    head: str = "arcface"


class DetectorSpec(_Strict):
    """The optional fluke box regressor (``detector.onnx``).

    Its ONNX input is the whole photo resized to ``preprocess.input_size``; its output is
    ``(n, 4) float32`` box corners as fractions of the photo's width and height, xyxy.
    """

    file: str = "detector.onnx"
    sha256: str
    architecture: str
    preprocess: PreprocessSpec
    input_name: str = "input"
    output_name: str = "box"
    val_mean_iou: float | None = None


class GallerySpec(_Strict):
    """How the gallery is indexed and scored.

    Attributes:
        factory: FAISS index factory string, e.g. ``"IDMap2,Flat"``, ``"IDMap2,HNSW32"``, ``"IVF1024,Flat"``.
        embedding_scoring: ``"centroid"`` (one L2-normalised mean vector per identity, the 3rd-place
            recipe) or ``"image_max"`` (nearest gallery photos, per-identity maximum, as the
            Happywhale 2022 winner scored).
        folder: gallery folder inside the bundle (the store and its index live there).
        include_flipped: whether each photo's mirror image is enrolled as a separate, never-answered
            identity (the Kaggle 2019 trick of doubling classes with flips).
        enrol_boxes: how many of the TTA policy's boxes an enrolled photo is embedded through (the
            first ``n``: 1 is the base box, or the full frame without one); ``None``: all of them, as a
            query is. 1 makes enrolment's network time 5x shorter with the default policy; queries keep
            every box. Change it on a gallery with ``whaleid reindex`` so all its photos agree.
    """

    factory: str = "IDMap2,Flat"
    embedding_scoring: Literal["centroid", "image_max"] = "centroid"
    folder: str = "gallery"
    include_flipped: bool = False
    enrol_boxes: int | None = Field(None, ge=1)


class ThresholdSpec(_Strict):
    """The new_whale threshold of one scoring mode.

    ``new_whale`` takes the first rank whose score falls below ``value`` (3rd-place rule).

    Attributes:
        value: threshold on the mode's score (cosine similarity for ``embedding``).
        rule: how it was chosen: ``max_map5`` on validation, ``new_whale_share`` (a target share of
            queries answered new_whale at rank 1), or ``manual``.
        new_whale_share: the target share when ``rule == "new_whale_share"``.
        val_map5: validation MAP@5 at this threshold, when known.
    """

    value: float
    rule: Literal["max_map5", "new_whale_share", "manual"] = "manual"
    new_whale_share: float | None = None
    val_map5: float | None = None


class LocalFeatureSpec(_Strict):
    """Local-feature matching (SIFT + ratio test + RANSAC) and its score calibration.

    Attributes:
        detector: OpenCV feature detector; only ``"sift"`` is implemented.
        n_keypoints: keypoints kept per photo.
        crop_width_px: width the box crop is resized to before detection, in pixels.
        ratio: Lowe's ratio-test threshold.
        geometry: ``"homography"`` or ``"affine"`` model fitted by RANSAC.
        ransac_reproj_px: RANSAC inlier threshold, in pixels of the resized crop.
        calibration: logistic coefficients ``(a, b)``: ``p = 1 / (1 + exp(-(a * log1p(inliers) + b)))``,
            or ``(a, b, c)`` with ``+ c * lnbnn`` (the LNBNN score, :mod:`index.lnbnn`) in the exponent.
        fusion: logistic coefficients ``(w_embedding, w_local, bias)`` on ``(cosine, log1p(inliers))``,
            or ``(w_embedding, w_local, bias, w_lnbnn)`` with the LNBNN score as a third feature.
        shortlist_k: identities taken from the embedding ranking for ``fused`` re-ranking.
        matcher: ``"lnbnn"``: HotSpotter's LNBNN votes from one descriptor index over every gallery
            photo, then RANSAC on the ``verify_k`` best-voted photos (:mod:`index.lnbnn`);
            ``"brute_force"``: RANSAC against every candidate photo (the reference; linear in the gallery).
        descriptor_factory: FAISS factory string of the descriptor index, or ``"auto"``.
        lnbnn_k: LNBNN's voting neighbours ``K`` (the ``K + 1``-th is the normaliser).
        nprobe: inverted lists visited per query descriptor (IVF descriptor indexes).
        verify_k: best-voted gallery photos verified by RANSAC per query.
        lnbnn_weight: weight of the LNBNN score beside ``log1p(inliers)`` in the local evidence the
            calibrations are fitted on (:func:`index.local.calibrate_from_pairs`).
    """

    detector: Literal["sift"] = "sift"
    n_keypoints: int = Field(400, gt=0)
    crop_width_px: int = Field(512, gt=16)
    ratio: float = Field(0.8, gt=0, lt=1)
    geometry: Literal["homography", "affine"] = "homography"
    ransac_reproj_px: float = Field(8.0, gt=0)
    calibration: tuple[float, float] | tuple[float, float, float] = (1.0, -3.0)
    fusion: tuple[float, float, float] | tuple[float, float, float, float] = (4.0, 1.0, -5.0)
    shortlist_k: int = Field(50, gt=0)
    matcher: Literal["lnbnn", "brute_force"] = "lnbnn"
    descriptor_factory: str = "auto"
    lnbnn_k: int = Field(4, gt=0, le=64)
    nprobe: int = Field(32, gt=0)
    verify_k: int = Field(50, gt=0)
    lnbnn_weight: float = Field(4.0, ge=0)


class EdgeSpec(_Strict):
    """The fluke's trailing edge as a third cue (``index.edge``): extracted and stored per enrolled photo
    when this section is present, used by the ``edge_fused`` scoring mode.

    Attributes:
        band: Sakoe-Chiba half-width of the DTW matching, as a share of the edge's points (0.05: the best of
            0.05, 0.1 and 0.2 on 200 playground queries outside the README's 300, scripts/measure_edge.py).
    """

    band: float = Field(0.05, ge=0, le=1)


class Manifest(_Strict):
    """The bundle's data contract (``manifest.json``). See the module docstring."""

    format: Literal["whaleid-bundle"] = MANIFEST_FORMAT
    format_version: int = MANIFEST_VERSION
    model_version: str
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    model: ModelSpec
    preprocess: PreprocessSpec
    tta: TTAPolicy
    detector: DetectorSpec | None = None
    gallery: GallerySpec = GallerySpec()
    scoring: ScoringModeName = "embedding"
    thresholds: dict[ScoringModeName, ThresholdSpec] = Field(default_factory=dict)
    local_features: LocalFeatureSpec | None = None
    edge: EdgeSpec | None = None
    #: coefficients of scoring modes registered beyond the built-in ones (mode name -> numbers)
    mode_params: dict[ScoringModeName, list[float]] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)

    def threshold_for(self, mode: str | None = None) -> float:
        """The new_whale threshold of ``mode`` (default: the manifest's scoring mode).

        Raises:
            ManifestError: when no threshold was calibrated for that mode.
        """
        mode = mode or self.scoring
        if mode not in self.thresholds:
            raise ManifestError(
                f"no new_whale threshold for scoring mode {mode!r} in the manifest; "
                f"run `whaleid calibrate` (known: {sorted(self.thresholds) or 'none'})"
            )
        return self.thresholds[mode].value

    def with_detector(self, detector: DetectorSpec) -> Manifest:
        """A copy listing ``detector``, with the TTA boxes placed around the fluke it finds
        (``tta.base = "detector"``; the boxes themselves unchanged)."""
        return self.model_copy(update={"detector": detector, "tta": self.tta.model_copy(update={"base": "detector"})})

    def save(self, bundle_dir: str | Path) -> Path:
        """Write ``manifest.json`` into ``bundle_dir`` atomically. Returns its path."""
        return atomic_write_json(Path(bundle_dir) / MANIFEST_NAME, self.model_dump(mode="json"))


def parse_manifest(data: Any, source: str = "manifest") -> Manifest:
    """Validate a decoded manifest object.

    Raises:
        ManifestError: not a whaleid manifest, an unsupported ``format_version``, or invalid fields.
    """
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{source} is not a whaleid bundle manifest (expected format {MANIFEST_FORMAT!r})")
    version = data.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise ManifestError(
            f"{source} has format_version {version!r}, which this whaleid cannot read "
            f"(supported: {sorted(SUPPORTED_VERSIONS)}); re-export the bundle with this version of whaleid"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{source} is invalid: {exc}") from exc


def load_manifest(bundle_or_file: str | Path) -> Manifest:
    """Read a manifest from a bundle folder or a ``manifest.json`` path.

    Raises:
        ManifestError: missing, not JSON, unknown or incompatible version, invalid fields.
    """
    path = Path(bundle_or_file)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"manifest {path} is not valid JSON: {exc}") from exc
    return parse_manifest(data, source=f"manifest {path}")


def check_embedding_dim(manifest: Manifest, dim: int, what: str) -> None:
    """Stop when ``what`` (e.g. ``"model.onnx output"``) has a dimension other than the manifest's.

    Raises:
        ManifestMismatchError: ``dim != manifest.model.embedding_dim``.
    """
    if int(dim) != manifest.model.embedding_dim:
        raise ManifestMismatchError(
            f"{what} has embedding dimension {dim}, but the manifest says {manifest.model.embedding_dim}"
        )


def check_input_shape(manifest: Manifest, shape: tuple, what: str = "model.onnx input") -> None:
    """Stop when the model's fixed input height and width differ from the manifest's ``input_size``.

    Args:
        shape: the ONNX input shape, e.g. ``("batch", 3, 256, 512)``; symbolic axes are skipped.

    Raises:
        ManifestMismatchError: on a channel count other than 3 or a different fixed H or W.
    """
    expected = (3, *manifest.preprocess.input_size)
    got = tuple(shape)[1:]
    for axis, (want, have) in enumerate(zip(expected, got, strict=False), start=1):
        if isinstance(have, int) and have != want:
            raise ManifestMismatchError(
                f"{what} has shape {tuple(shape)}, but the manifest expects (n, {expected[0]}, "
                f"{expected[1]}, {expected[2]}) (axis {axis} differs)"
            )
