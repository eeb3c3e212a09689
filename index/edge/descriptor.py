"""Descriptor of a trailing edge (integral curvature) and its versioned ``WTE`` blob.

**Integral curvature** (Weideman et al., "Integral Curvature Representation and Matching
Algorithms for Identification of Dolphins and Whales", ICCV Workshops 2017; after the integral
invariants of Manay et al., PAMI 2006): at each point of the edge, the share of a disk of radius
``r`` centred on the point that lies on the fluke's side of the edge. A straight edge gives 0.5, a
nick cut into the fluke less, a scallop sticking out more. Before measuring, the edge is moved to a
canonical frame (left tip at the origin, right tip on the +x axis, tip-to-tip distance
:data:`CANVAS_WIDTH_PX`), so the descriptor does not change with the fluke's size in the photo nor
with a rotation of the camera in its plane; disk areas change little with small changes of the
viewing angle. Each side of the notch is resampled by arc length to ``n_points`` points and
described at the radii :data:`DEFAULT_SCALES` (shares of the tip-to-tip distance).

The ``WTE1`` blob (little-endian; no pickle) stores the edge (for drawing it over the photo) and the
descriptor (for matching)::

    magic  b"WTE"              3 bytes
    version 1                  uint8
    n_edge                     uint32   points of the edge, photo pixels
    notch_index                uint32
    n_points                   uint16   per side of the notch
    n_scales                   uint16
    scales                     n_scales x float32
    edge                       n_edge x 2 x float32
    descriptor                 2 x n_points x n_scales x float16
    crc32 of all the above     uint32
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from core.errors import CorruptArtifactError
from index.edge.extract import TrailingEdge

#: Disk radii as shares of the tip-to-tip distance (Weideman et al. used several; these span small
#: nicks to the sweep of a fluke's half). Chosen on 200 queries of the playground split outside the
#: README's 300 (``scripts/measure_edge.py tune``): top-1 of known whales by the edge alone 15.1 %
#: with (0.01, 0.02, 0.04), 21.1 % with (0.02, 0.04, 0.08), 26.3 % with 0.16 added (band 0.1).
DEFAULT_SCALES = (0.02, 0.04, 0.08, 0.16)
#: Points per side of the notch.
DEFAULT_POINTS = 64
#: Tip-to-tip distance of the canonical frame the disks are measured in, pixels.
CANVAS_WIDTH_PX = 400

MAGIC = b"WTE"
VERSION = 1
_HEADER = struct.Struct("<3sBIIHH")
_CRC = struct.Struct("<I")
#: Largest sizes a blob may declare (guards allocations on corrupt input).
MAX_EDGE_POINTS = 100_000
MAX_POINTS = 4096
MAX_SCALES = 16


@dataclass(frozen=True, eq=False)
class EdgeDescriptor:
    """A trailing edge and its integral-curvature descriptor.

    Attributes:
        edge: the :class:`~index.edge.extract.TrailingEdge` it describes (photo pixels).
        curvature: ``(2, n_points, n_scales) float32`` integral curvature in ``[0, 1]`` of the left
            side (left tip to notch) and the right side (notch to right tip), each ordered left to
            right.
        scales: ``(n_scales,)`` disk radii as shares of the tip-to-tip distance.
    """

    edge: TrailingEdge
    curvature: np.ndarray
    scales: tuple[float, ...]


def canonical(points: np.ndarray) -> np.ndarray:
    """The edge in the canonical frame: left tip at (0, 0), right tip at (1, 0), y down.

    Args:
        points: ``(n, 2)`` edge points, first = left tip, last = right tip, photo pixels.

    Returns:
        ``(n, 2) float64``; a similarity transform of ``points`` (scale, rotation, translation).

    Raises:
        ValueError: the tips coincide.
    """
    pts = np.asarray(points, dtype=np.float64)
    axis = pts[-1] - pts[0]
    length = float(np.hypot(*axis))
    if length <= 0:
        raise ValueError("the edge's tips coincide")
    c, s = axis / length
    rot = np.array([[c, s], [-s, c]])  # rotates the tip axis onto +x
    return (pts - pts[0]) @ rot.T / length


def resample(points: np.ndarray, n: int) -> np.ndarray:
    """``(n, 2) float64`` points equally spaced by arc length along a polyline ``(m, 2)`` (m >= 2)."""
    pts = np.asarray(points, dtype=np.float64)
    seg = np.hypot(*np.diff(pts, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] <= 0:
        return np.repeat(pts[:1], n, axis=0)
    t = np.linspace(0.0, arc[-1], n)
    return np.stack([np.interp(t, arc, pts[:, 0]), np.interp(t, arc, pts[:, 1])], axis=1)


def _disk(radius_px: float) -> np.ndarray:
    r = max(1, round(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    k = (xx**2 + yy**2 <= radius_px**2).astype(np.float32)
    return k / k.sum()


def integral_curvature(edge: TrailingEdge, n_points: int = DEFAULT_POINTS, scales=DEFAULT_SCALES) -> EdgeDescriptor:
    """Integral curvature of each side of the notch at several disk radii (Weideman et al. 2017).

    Args:
        edge: the trailing edge (photo pixels).
        n_points: points per side after resampling by arc length.
        scales: disk radii as shares of the tip-to-tip distance.

    Returns:
        The :class:`EdgeDescriptor`; ``curvature`` is ``(2, n_points, len(scales)) float32``.

    Raises:
        ValueError: the tips coincide, or ``n_points < 2`` or no scale is given.
    """
    scales = tuple(float(s) for s in scales)
    if n_points < 2 or not scales:
        raise ValueError("n_points must be >= 2 and at least one scale is needed")
    canon = canonical(edge.points) * CANVAS_WIDTH_PX
    pad = int(np.ceil(max(scales) * CANVAS_WIDTH_PX)) + 4
    x0, y0 = canon[:, 0].min() - pad, canon[:, 1].min() - pad
    # The fluke lies below the edge: close the polygon well below both tips.
    bottom = canon[:, 1].max() + 2 * pad
    poly = np.vstack([canon, [[canon[-1, 0], bottom], [canon[0, 0], bottom]]])
    w = int(np.ceil(canon[:, 0].max() + pad - x0)) + 1
    h = int(np.ceil(bottom + pad - y0)) + 1
    region = np.zeros((h, w), np.uint8)
    shift = 4  # sub-pixel polygon vertices
    verts = np.round((poly - [x0, y0]) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(region, [verts], 1, lineType=cv2.LINE_8, shift=shift)
    region = region.astype(np.float32)
    sides = (canon[: edge.notch_index + 1], canon[edge.notch_index :])
    samples = [resample(side, n_points) - [x0, y0] for side in sides]
    out = np.empty((2, n_points, len(scales)), np.float32)
    for k, s in enumerate(scales):
        share = cv2.filter2D(region, -1, _disk(s * CANVAS_WIDTH_PX), borderType=cv2.BORDER_CONSTANT)
        for side, pts in enumerate(samples):
            mx = pts[:, 0].astype(np.float32).reshape(1, -1)
            my = pts[:, 1].astype(np.float32).reshape(1, -1)
            out[side, :, k] = cv2.remap(share, mx, my, cv2.INTER_LINEAR).reshape(-1)
    return EdgeDescriptor(edge, out, scales)


# --- the WTE1 blob -------------------------------------------------------------------------------


def encode_descriptor(desc: EdgeDescriptor) -> bytes:
    """Serialise an edge and its descriptor to a ``WTE1`` blob (format in the module docstring).

    Returns:
        ``16 + 4 * n_scales + 8 * n_edge + 4 * n_points * n_scales + 4`` bytes.
    """
    edge = np.ascontiguousarray(desc.edge.points, dtype="<f4").reshape(-1, 2)
    curv = np.ascontiguousarray(desc.curvature, dtype="<f2")
    if curv.ndim != 3 or curv.shape[0] != 2 or curv.shape[2] != len(desc.scales):
        raise ValueError(f"curvature must be (2, n_points, {len(desc.scales)}), got {curv.shape}")
    head = _HEADER.pack(MAGIC, VERSION, len(edge), desc.edge.notch_index, curv.shape[1], curv.shape[2])
    body = head + np.asarray(desc.scales, dtype="<f4").tobytes() + edge.tobytes() + curv.tobytes()
    return body + _CRC.pack(zlib.crc32(body))


def decode_descriptor(blob: bytes, source: str = "trailing-edge blob") -> EdgeDescriptor:
    """Parse a ``WTE1`` blob written by :func:`encode_descriptor`.

    Args:
        blob: the bytes.
        source: what the blob is, for the error message (e.g. ``"gallery.sqlite image 12"``).

    Returns:
        The :class:`EdgeDescriptor` (``curvature`` as float32).

    Raises:
        CorruptArtifactError: not a trailing-edge blob, an unknown version, sizes that do not fit
            the length, a failed crc32 check, or non-finite values; the message names ``source``
            and what is wrong.
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CorruptArtifactError(source, f"a trailing-edge blob must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < _HEADER.size + _CRC.size or blob[:3] != MAGIC:
        raise CorruptArtifactError(source, "not a whaleid trailing-edge blob (bad magic or too short)")
    _, version, n_edge, notch, n_points, n_scales = _HEADER.unpack_from(blob, 0)
    if version != VERSION:
        raise CorruptArtifactError(source, f"trailing-edge blob version {version}; this code reads version {VERSION}")
    if not (2 <= n_edge <= MAX_EDGE_POINTS and 2 <= n_points <= MAX_POINTS and 1 <= n_scales <= MAX_SCALES):
        raise CorruptArtifactError(
            source, f"trailing-edge blob declares impossible sizes ({n_edge} edge points, {n_points}x{n_scales})"
        )
    expected = _HEADER.size + 4 * n_scales + 8 * n_edge + 2 * 2 * n_points * n_scales + _CRC.size
    if len(blob) != expected:
        raise CorruptArtifactError(source, f"trailing-edge blob of {len(blob)} bytes, its header needs {expected}")
    if zlib.crc32(blob[: -_CRC.size]) != _CRC.unpack_from(blob, len(blob) - _CRC.size)[0]:
        raise CorruptArtifactError(source, "trailing-edge blob fails its crc32 check")
    if not 0 < notch < n_edge - 1:
        raise CorruptArtifactError(source, f"trailing-edge blob's notch index {notch} is not inside its edge")
    off = _HEADER.size
    scales = np.frombuffer(blob, "<f4", n_scales, off)
    off += 4 * n_scales
    edge = np.frombuffer(blob, "<f4", 2 * n_edge, off).reshape(n_edge, 2).astype(np.float32)
    off += 8 * n_edge
    curv = np.frombuffer(blob, "<f2", 2 * n_points * n_scales, off).reshape(2, n_points, n_scales)
    curv = curv.astype(np.float32)
    if not (np.isfinite(scales).all() and np.isfinite(edge).all() and np.isfinite(curv).all()):
        raise CorruptArtifactError(source, "trailing-edge blob holds non-finite values")
    edge.flags.writeable = False
    curv.flags.writeable = False
    return EdgeDescriptor(TrailingEdge(edge, int(notch)), curv, tuple(float(s) for s in scales))
