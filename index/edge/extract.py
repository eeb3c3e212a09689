"""Trailing-edge extraction: the fluke's two tips, its notch and the edge between the tips.

Method: GrabCut segmentation (Rother, Kolmogorov & Blake, SIGGRAPH 2004; OpenCV's ``cv2.grabCut``)
initialised with the fluke's box, as Yoshikawa et al. (2022) segmented 1,850 Okinawa humpback
flukes before reading their trailing edges. The photo is cropped to the box plus a margin and
shrunk to :data:`WORK_WIDTH_PX` pixels wide first (148 ms of CPU a photo on average, p95 357 ms,
over 2,373 playground photos). The largest foreground component's outer contour is split at its
extreme points towards the upper left and the upper right (the **tips**); the upper of the two
paths is the **trailing edge** (a fluke photographed from behind shows its trailing edge on top),
and the **notch** is the trailing edge's point farthest below the tip-to-tip line within the
middle :data:`NOTCH_SPAN` of that line.

A photo without a usable edge gives a :class:`NoEdge` with a stable ``reason``
(:data:`NO_EDGE_REASONS`), never an exception: a side view, a fluke cut off by the frame or a
thumbnail is a normal outcome, and such a photo is scored without its edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from core.boxes import as_box, clip_box

#: Width in pixels of the shrunken crop GrabCut runs on (the edge's resolution: 1 px = 1/240 of
#: the crop, about 0.5 % of the fluke's width with the default margin). GrabCut's cost grows with
#: the pixels: 280 / 190 / 130 ms of CPU a photo at 300 / 240 / 200 px wide (10 playground photos,
#: shared machine).
WORK_WIDTH_PX = 240
#: The shrunken crop is at most this many pixels high (a tall box is shrunk further to fit).
WORK_MAX_HEIGHT_PX = 240
#: Margin added around the box on each side, as a share of the box's width / height, so that a
#: tight box (boxes derived from masks touch the tips) leaves GrabCut some background around it.
BOX_MARGIN = (0.06, 0.15)
#: GrabCut iterations.
GRABCUT_ITERATIONS = 4
#: A box (after clipping to the photo) narrower or lower than these many pixels has no edge.
MIN_BOX_WIDTH_PX = 48
MIN_BOX_HEIGHT_PX = 12
#: The segmented fluke must cover at least this share of the box ...
MIN_AREA_SHARE = 0.08
#: ... and be at least this many times as wide as it is high (a side view or a blob is not a fluke).
MIN_ASPECT = 1.3
#: Where GrabCut's rectangle lies on the photo's left or right border, a segment covering more than
#: CUT_RUN of its own height within BORDER_PX work pixels of that side runs out of the photo: the
#: fluke is cut off (a tip touching the frame covers a few pixels only).
BORDER_PX = 2
CUT_RUN = 0.25
#: The tips are the contour's extreme points along the directions (-1, -TIP_TILT) and (1, -TIP_TILT)
#: (image y down): leftmost and rightmost, tilted upwards.
TIP_TILT = 0.7
#: The notch is searched within this middle share of the tip-to-tip line.
NOTCH_SPAN = (0.3, 0.7)

NO_EDGE_REASONS = ("too_small", "cut_off", "not_found")


@dataclass(frozen=True, eq=False)
class TrailingEdge:
    """A fluke's trailing edge in photo pixels.

    Attributes:
        points: ``(n, 2) float32`` the edge from the left tip to the right tip, ``(x, y)`` photo
            pixels (OpenCV's convention: pixel centres at integer coordinates), about one point
            per pixel of the shrunken crop.
        notch_index: index of the notch in ``points``.
    """

    points: np.ndarray
    notch_index: int

    @property
    def left_tip(self) -> np.ndarray:
        """``(2,) float32`` the left tip (first point)."""
        return self.points[0]

    @property
    def right_tip(self) -> np.ndarray:
        """``(2,) float32`` the right tip (last point)."""
        return self.points[-1]

    @property
    def notch(self) -> np.ndarray:
        """``(2,) float32`` the notch."""
        return self.points[self.notch_index]

    @property
    def width_px(self) -> float:
        """Tip-to-tip distance in photo pixels."""
        return float(np.linalg.norm(self.right_tip - self.left_tip))


@dataclass(frozen=True)
class NoEdge:
    """No trailing edge could be read from the photo.

    Attributes:
        reason: one of :data:`NO_EDGE_REASONS`: ``too_small`` (box or photo under
            :data:`MIN_BOX_WIDTH_PX` x :data:`MIN_BOX_HEIGHT_PX`), ``cut_off`` (a tip lies on the
            photo's left or right border), ``not_found`` (no fluke-shaped segment).
        detail: a human-readable sentence.
    """

    reason: str
    detail: str


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"pixels must be (H, W, 3) RGB, got shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :, :3])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a binary mask, holes filled (uint8 0/1)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros_like(mask)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = (labels == best).astype(np.uint8)
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(comp)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled


def _upper_path(contour: np.ndarray) -> np.ndarray | None:
    """The contour's path from its leftmost to its rightmost point that runs above the other.

    Args:
        contour: ``(m, 2)`` closed outer contour (OpenCV order).

    Returns:
        ``(k, 2) float64`` points from the left tip to the right tip, or None when degenerate.
    """
    x, y = contour[:, 0].astype(np.float64), contour[:, 1].astype(np.float64)
    # The tips are the extreme points towards the upper left and the upper right, not the leftmost
    # and rightmost: a raised or curled tip lies above the lobe's outermost point.
    li = int(np.argmin(x + TIP_TILT * y))
    ri = int(np.argmax(x - TIP_TILT * y))
    if li == ri:
        return None
    m = len(contour)
    fwd = contour[[(li + t) % m for t in range(((ri - li) % m) + 1)]]
    bwd = contour[[(li - t) % m for t in range(((li - ri) % m) + 1)]]
    if len(fwd) < 3 or len(bwd) < 3:
        return None
    up = fwd if fwd[:, 1].mean() <= bwd[:, 1].mean() else bwd
    return up.astype(np.float64)


def _notch_index(path: np.ndarray) -> int | None:
    """Index of the point farthest below the tip-to-tip line within :data:`NOTCH_SPAN` of it."""
    a, b = path[0], path[-1]
    axis = b - a
    length = float(np.hypot(*axis))
    if length <= 0:
        return None
    axis = axis / length
    normal = np.array([-axis[1], axis[0]])  # points "down" in image coordinates when a is left of b
    rel = path - a
    t = rel @ axis / length
    depth = rel @ normal
    inside = np.flatnonzero((t >= NOTCH_SPAN[0]) & (t <= NOTCH_SPAN[1]))
    if inside.size == 0:
        return None
    return int(inside[np.argmax(depth[inside])])


def extract_edge(pixels: np.ndarray, box=None) -> TrailingEdge | NoEdge:
    """Find the fluke's tips, notch and trailing edge in a photo (GrabCut inside the box).

    Args:
        pixels: ``(H, W, 3) uint8`` RGB photo, upright (``(H, W)`` grey is accepted).
        box: optional fluke box ``(x0, y0, x1, y1)`` in photo pixels; the whole frame when None.

    Returns:
        A :class:`TrailingEdge` in photo pixels, or a :class:`NoEdge` with its reason.

    Raises:
        ValueError: ``pixels`` is not a uint8 image, or ``box`` is not 4 finite numbers with
            ``x1 > x0`` and ``y1 > y0``.

    Cost: 148 ms of CPU a photo on average (p50 115, p95 357 ms on 2,373 playground photos; GrabCut
    on the 240 px crop is nearly all of it).
    """
    rgb = _as_rgb(pixels)
    h, w = rgb.shape[:2]
    if w < MIN_BOX_WIDTH_PX or h < MIN_BOX_HEIGHT_PX:
        return NoEdge("too_small", f"the photo is {w} x {h} px, under {MIN_BOX_WIDTH_PX} x {MIN_BOX_HEIGHT_PX}")
    bx = clip_box(as_box(box) if box is not None else (0, 0, w, h), w, h).astype(np.float64)
    bw, bh = bx[2] - bx[0], bx[3] - bx[1]
    if bw < MIN_BOX_WIDTH_PX or bh < MIN_BOX_HEIGHT_PX:
        return NoEdge("too_small", f"the box is {bw:.0f} x {bh:.0f} px, under {MIN_BOX_WIDTH_PX} x {MIN_BOX_HEIGHT_PX}")
    mx, my = BOX_MARGIN[0] * bw, BOX_MARGIN[1] * bh
    cx0, cy0 = int(max(0, np.floor(bx[0] - mx))), int(max(0, np.floor(bx[1] - my)))
    cx1, cy1 = int(min(w, np.ceil(bx[2] + mx))), int(min(h, np.ceil(bx[3] + my)))
    crop = rgb[cy0:cy1, cx0:cx1]
    scale = min(WORK_WIDTH_PX / crop.shape[1], WORK_MAX_HEIGHT_PX / crop.shape[0])
    ww, wh = max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    work = cv2.resize(crop, (ww, wh), interpolation=interp)
    sx, sy = ww / crop.shape[1], wh / crop.shape[0]
    # GrabCut's rectangle: the box in work pixels, at least 2 px inside the crop (it needs background).
    rx0 = int(np.clip(round((bx[0] - cx0) * sx), 2, ww - 4))
    ry0 = int(np.clip(round((bx[1] - cy0) * sy), 2, wh - 4))
    rx1 = int(np.clip(round((bx[2] - cx0) * sx), rx0 + 2, ww - 2))
    ry1 = int(np.clip(round((bx[3] - cy0) * sy), ry0 + 2, wh - 2))
    if rx1 - rx0 < 16 or ry1 - ry0 < 4:
        return NoEdge("too_small", "the box is too thin to segment")
    mask = np.zeros((wh, ww), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = np.ascontiguousarray(work[:, :, ::-1])
    try:
        cv2.grabCut(bgr, mask, (rx0, ry0, rx1 - rx0, ry1 - ry0), bgd, fgd, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # a flat image: GrabCut's colour models cannot be fitted
        return NoEdge("not_found", "the box holds no segmentable fluke (a flat image)")
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    fg = _largest_component(fg)
    area = int(fg.sum())
    if area < MIN_AREA_SHARE * (rx1 - rx0) * (ry1 - ry0):
        return NoEdge("not_found", "no fluke-sized segment in the box")
    ys, xs = np.nonzero(fg)
    if (xs.max() - xs.min() + 1) < MIN_ASPECT * (ys.max() - ys.min() + 1):
        return NoEdge("not_found", "the segment is not fluke-shaped (too narrow for its height: a side view?)")
    contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    path = _upper_path(max(contours, key=len).reshape(-1, 2))
    if path is None or len(path) < 16:
        return NoEdge("not_found", "the segment's outline has no trailing edge")
    # Where GrabCut's rectangle reaches the photo's left or right border, a fluke whose segment runs
    # along that side over CUT_RUN of its height was cut by the frame (a tip merely touching is not).
    height = ys.max() - ys.min() + 1
    left_cut = (
        cx0 == 0 and rx0 <= 2 + BORDER_PX and fg[:, rx0 : rx0 + BORDER_PX + 1].any(axis=1).sum() > CUT_RUN * height
    )
    right_cut = (
        cx1 == w and rx1 >= ww - 2 - BORDER_PX and fg[:, rx1 - 1 - BORDER_PX : rx1].any(axis=1).sum() > CUT_RUN * height
    )
    if left_cut or right_cut:
        return NoEdge("cut_off", "a tip lies on the photo's border: the fluke is cut off")
    photo = np.empty_like(path)
    photo[:, 0] = (path[:, 0] + 0.5) / sx - 0.5 + cx0  # work pixel centres -> photo pixel centres
    photo[:, 1] = (path[:, 1] + 0.5) / sy - 0.5 + cy0
    notch = _notch_index(photo)
    if notch is None or notch in (0, len(photo) - 1):
        return NoEdge("not_found", "no notch between the tips")
    return TrailingEdge(photo.astype(np.float32), notch)
