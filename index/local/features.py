"""SIFT features of one photo: extraction (CLAHE, SIFT), the ``WLF1`` blob codec.

See :mod:`index.local` for the pipeline and the blob format.
"""

from __future__ import annotations

import math
import struct
import threading
import zlib
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from core.boxes import as_box, clip_box
from core.errors import CorruptArtifactError
from core.manifest import LocalFeatureSpec

DESCRIPTOR_DIM = 128
#: CLAHE clip limit and tile grid (OpenCV's usual values), applied to the grey crop before resizing.
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILE_GRID = (8, 8)
#: The resized crop is at most this many times ``crop_width_px`` high (a tall box is shrunk to fit).
MAX_HEIGHT_RATIO = 2.0
#: A resized crop with a side shorter than this has no usable keypoints: features are empty.
MIN_SIDE_PX = 8

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

    @cached_property
    def location_ids(self) -> np.ndarray:
        """``(n,) int64``: for each keypoint, the index of the first keypoint at exactly its place. SIFT
        gives a point with two dominant orientations two keypoints (two descriptors) there; matching
        counts such a place once. Computed once per photo (the matcher caches gallery features)."""
        if not len(self):
            return np.zeros(0, np.int64)
        _, first, inverse = np.unique(self.keypoints, axis=0, return_index=True, return_inverse=True)
        return first[inverse.reshape(-1)].astype(np.int64)

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
