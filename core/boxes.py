"""Boxes on the upright photo and the multi-box TTA set built from one box.

A box is ``(x0, y0, x1, y1)`` in pixels of the upright (EXIF-transposed) photo: ``(x0, y0)`` is the
top-left corner, ``(x1, y1)`` the bottom-right one, exclusive, so a box covering the whole of a
``W x H`` photo is ``(0, 0, W, H)``. Arrays of boxes are ``(n, 4) float32``.

Multi-box TTA follows the 3rd-place solution of the Kaggle 2019 Humpback Whale Identification
competition, which embedded each photo through five boxes and used the centre of the five
embeddings. Our default set is the base box (the detector's, or the full frame when the bundle
has no detector), the base box expanded by 1.1 and 1.2, the 1.1 box shifted up by 5 % of its
height, and the full frame.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


def as_box(box) -> np.ndarray:
    """Return ``box`` as a ``(4,) float32`` array ``(x0, y0, x1, y1)``.

    Raises:
        ValueError: when ``box`` does not hold 4 finite numbers with ``x1 > x0`` and ``y1 > y0``.
    """
    arr = np.asarray(box, dtype=np.float32).reshape(-1)
    if arr.shape != (4,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"a box needs 4 finite numbers (x0, y0, x1, y1), got {box!r}")
    if arr[2] <= arr[0] or arr[3] <= arr[1]:
        raise ValueError(f"a box needs x1 > x0 and y1 > y0, got {box!r}")
    return arr


def full_frame(width: int, height: int) -> np.ndarray:
    """The box covering a whole ``width x height`` photo: ``(0, 0, width, height)`` float32."""
    return np.array([0.0, 0.0, float(width), float(height)], dtype=np.float32)


def clip_box(box, width: int, height: int, min_size_px: float = 1.0) -> np.ndarray:
    """Clip a box to the photo, keeping it at least ``min_size_px`` wide and high.

    A box lying wholly outside the photo, or thinner than ``min_size_px`` after clipping, is grown
    around its clipped centre (and kept inside the photo) so that cropping never yields an empty
    array, e.g. for a 940x2 strip.

    Args:
        box: ``(4,)`` pixels, xyxy.
        width, height: size of the upright photo in pixels (each >= 1).
        min_size_px: smallest width and height of the result, in pixels.

    Returns:
        ``(4,) float32`` box inside ``[0, width] x [0, height]``.
    """
    b = np.asarray(box, dtype=np.float32).reshape(4).copy()
    limits = (float(width), float(height))
    for lo, hi, limit in ((0, 2, limits[0]), (1, 3, limits[1])):
        size = min(max(min_size_px, 1.0), limit)
        a, z = float(np.clip(b[lo], 0.0, limit)), float(np.clip(b[hi], 0.0, limit))
        if z - a < size:
            centre = (a + z) / 2.0
            a = min(max(centre - size / 2.0, 0.0), limit - size)
            z = a + size
        b[lo], b[hi] = a, z
    return b


def expand_box(box, factor: float) -> np.ndarray:
    """Scale a box about its centre: width and height multiplied by ``factor`` (> 0).

    ``factor`` < 1 shrinks the box. The result is not clipped; see :func:`clip_box`.
    """
    if factor <= 0:
        raise ValueError(f"expand factor must be > 0, got {factor}")
    b = as_box(box)
    cx, cy = (b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0
    hw, hh = (b[2] - b[0]) * factor / 2.0, (b[3] - b[1]) * factor / 2.0
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh], dtype=np.float32)


def shift_box(box, dx: float, dy: float) -> np.ndarray:
    """Translate a box by ``dx`` of its width and ``dy`` of its height (fractions, may be negative)."""
    b = as_box(box)
    w, h = b[2] - b[0], b[3] - b[1]
    return b + np.array([dx * w, dy * h, dx * w, dy * h], dtype=np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of matching rows of two box arrays.

    Args:
        a, b: ``(n, 4)`` float, xyxy pixels.

    Returns:
        ``(n,) float64`` IoU in ``[0, 1]``.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-12)


class TTABox(BaseModel):
    """One box of the TTA set, derived from the base box or from the full frame.

    Attributes:
        kind: ``"box"`` transforms the base box (the detector's box, or the full frame without a
            detector); ``"full"`` is always the full frame and ignores the other fields.
        scale: size multiplier about the centre (1.1 expands by 10 %, 0.9 shrinks).
        dx, dy: shift as fractions of the scaled box's width and height (``dy < 0`` moves up).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["box", "full"] = "box"
    scale: float = Field(1.0, gt=0.0, le=4.0)
    dx: float = Field(0.0, ge=-1.0, le=1.0)
    dy: float = Field(0.0, ge=-1.0, le=1.0)


_BOXED = (
    TTABox(),
    TTABox(scale=1.1),
    TTABox(scale=1.2),
    TTABox(scale=1.1, dy=-0.05),
    TTABox(kind="full"),
)
_FIXED_CROPS = (
    TTABox(),
    TTABox(scale=0.9),
    TTABox(scale=0.8),
    TTABox(scale=0.9, dy=-0.05),
    TTABox(scale=0.9, dy=0.05),
)


class TTAPolicy(BaseModel):
    """The boxes each photo is embedded through.

    Attributes:
        base: where the service finds a photo's base box: ``"detector"`` (the bundle's fluke
            detector) or ``"full_frame"`` (no detector: ``fallback`` crops are used).
        boxes: TTA boxes around a known base box (a detected box, or one given in a boxes CSV).
        fallback: fixed crops of the full frame, used when no base box is known.

    The embeddings of a photo's boxes are L2-normalised, averaged and renormalised.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: Literal["detector", "full_frame"] = "full_frame"
    boxes: tuple[TTABox, ...] = Field(_BOXED, min_length=1)
    fallback: tuple[TTABox, ...] = Field(_FIXED_CROPS, min_length=1)

    @classmethod
    def default(cls, base: Literal["detector", "full_frame"] = "full_frame") -> TTAPolicy:
        """Five boxes around a base box (box, x1.1, x1.2, x1.1 shifted up 5 %, full frame) and, without
        one, five fixed crops (full frame, centre 90 % and 80 %, 90 % shifted up and down 5 %)."""
        return cls(base=base, boxes=_BOXED, fallback=_FIXED_CROPS)

    @classmethod
    def single(cls, base: Literal["detector", "full_frame"] = "full_frame") -> TTAPolicy:
        """One box only (the base box, or the full frame): no TTA."""
        return cls(base=base, boxes=(TTABox(),), fallback=(TTABox(),))

    def first(self, n: int | None) -> TTAPolicy:
        """The policy with only its first ``n`` boxes and fallback crops (itself when ``n`` is None or
        no smaller than either list): how a gallery with ``enrol_boxes`` embeds an enrolled photo."""
        if n is None or (n >= len(self.boxes) and n >= len(self.fallback)):
            return self
        return TTAPolicy(base=self.base, boxes=self.boxes[: max(1, n)], fallback=self.fallback[: max(1, n)])

    def describe(self, has_box: bool) -> str:
        """Human-readable description for ``/ready`` and logs."""
        specs = self.boxes if has_box else self.fallback
        source = "detected box" if has_box else "full frame"
        return f"{len(specs)} boxes around the {source}"


def tta_boxes(base_box, width: int, height: int, policy: TTAPolicy) -> np.ndarray:
    """Build the TTA boxes of one photo.

    Args:
        base_box: ``(4,)`` xyxy pixels (detected or labelled), or ``None``: then ``policy.fallback``
            is applied to the full frame.
        width, height: size of the upright photo in pixels.
        policy: the TTA policy of the bundle's manifest.

    Returns:
        ``(n_boxes, 4) float32`` boxes, clipped to the photo, each at least 1 px.
    """
    frame = full_frame(width, height)
    if base_box is None:
        base, specs = frame, policy.fallback
    else:
        base, specs = clip_box(base_box, width, height), policy.boxes
    out = np.empty((len(specs), 4), dtype=np.float32)
    for i, spec in enumerate(specs):
        if spec.kind == "full":
            out[i] = frame
            continue
        b = expand_box(base, spec.scale)
        if spec.dx or spec.dy:
            b = shift_box(b, spec.dx, spec.dy)
        out[i] = clip_box(b, width, height)
    return out
