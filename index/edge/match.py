"""Matching trailing edges: dynamic time warping of their integral-curvature sequences.

Each side of the notch is aligned separately by dynamic time warping (DTW; Sakoe & Chiba 1978)
restricted to a Sakoe-Chiba band, as Jablons (2016) and Weideman et al. (ICCV Workshops 2017)
matched fluke and fin edges: the warp absorbs small shifts of a nick along the edge (a slightly
different viewing angle, a curled tip) while the band stops it from pairing unrelated parts. The
local cost is the L1 distance between the curvature vectors (all scales) of two points; a side's
distance is the cost of the best warping path divided by its number of points, and an edge's
distance is the sum of its two sides.

The DTW here is numpy, vectorised over the gallery: one query against ``m`` edges costs
``O(n * band)`` array operations of length ``m`` (no per-pair Python loop and no compiled
dependency; ``dtaidistance`` would do one pair at a time).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from index.edge.descriptor import EdgeDescriptor, integral_curvature

#: Sakoe-Chiba band half-width as a share of the points per side (3 of 64 points). On 200 queries
#: outside the README's 300 (``scripts/measure_edge.py tune``, three scales): top-1 of known whales
#: by the edge alone 24.3 % at 0.05, 21.1 % at 0.1, 20.4 % at 0.2; with four scales 27.6 % at 0.05.
DEFAULT_BAND = 0.05
#: Gallery edges aligned per block (bounds the ``(block, n, n)`` cost array).
BLOCK = 512


def _curvatures(items) -> np.ndarray:
    """Stack descriptors (or ``(2, n, k)`` arrays) into ``(m, 2, n, k) float32``."""
    arrs = [np.asarray(d.curvature if isinstance(d, EdgeDescriptor) else d, dtype=np.float32) for d in items]
    if not arrs:
        return np.zeros((0, 2, 1, 1), np.float32)
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1 or len(arrs[0].shape) != 3 or arrs[0].shape[0] != 2:
        raise ValueError(f"edge descriptors must all be (2, n_points, n_scales) of one shape, got {sorted(shapes)}")
    return np.stack(arrs)


def _same(a, b) -> bool:
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=1e-5, atol=1e-6))


def dtw_banded(query: np.ndarray, gallery: np.ndarray, band: int) -> np.ndarray:
    """DTW distance of one sequence to many, within a Sakoe-Chiba band.

    Args:
        query: ``(n, k) float32`` sequence of n feature vectors.
        gallery: ``(m, n, k) float32`` m sequences of the same length.
        band: half-width of the band in points (``|i - j| <= band``); >= 0.

    Returns:
        ``(m,) float32`` the cost of the best monotone warping path (L1 local cost), divided by n.
    """
    n = query.shape[0]
    m = gallery.shape[0]
    # (n, n, m): the gallery axis last, so every step below works on contiguous rows.
    cost = np.abs(query[:, None, None, :] - gallery.transpose(1, 0, 2)[None, :, :, :]).sum(axis=3)
    acc = np.full((n + 1, n + 1, m), np.inf, np.float32)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(max(1, i - band), min(n, i + band) + 1):
            best = np.minimum(np.minimum(acc[i - 1, j - 1], acc[i - 1, j]), acc[i, j - 1])
            np.add(cost[i - 1, j - 1], best, out=acc[i, j])
    return acc[n, n] / n


def edge_distances(query, gallery: Sequence, band: float = DEFAULT_BAND) -> np.ndarray:
    """Distance of a query edge to each gallery edge (sum of both sides' DTW distances).

    Args:
        query: an :class:`~index.edge.descriptor.EdgeDescriptor` or its ``(2, n, k)`` curvature.
        gallery: m descriptors (or curvature arrays) of the same shape. When ``query`` is an
            :class:`~index.edge.descriptor.EdgeDescriptor`, a gallery descriptor computed with other
            settings (points per side, radii: a blob stored before they changed) is described again
            from its edge with the query's settings.
        band: Sakoe-Chiba half-width as a share of n.

    Returns:
        ``(m,) float32`` distances, >= 0 (0: identical curvature); smaller is more alike.

    Raises:
        ValueError: curvature arrays of different shapes.
    """
    if isinstance(query, EdgeDescriptor):  # a gallery edge stored with other settings is described again
        n, scales = query.curvature.shape[1], tuple(query.scales)
        gallery = [
            integral_curvature(d.edge, n, scales)
            if isinstance(d, EdgeDescriptor) and (d.curvature.shape[1] != n or not _same(d.scales, scales))
            else d
            for d in gallery
        ]
    q = _curvatures([query])[0]
    g = _curvatures(gallery)
    if not len(g):
        return np.zeros(0, np.float32)
    if g.shape[1:] != q.shape:
        raise ValueError(f"query edge {q.shape} and gallery edges {g.shape[1:]} differ in shape")
    width = max(0, round(band * q.shape[1]))
    out = np.zeros(len(g), np.float32)
    for start in range(0, len(g), BLOCK):
        block = g[start : start + BLOCK]
        out[start : start + len(block)] = sum(dtw_banded(q[s], block[:, s], width) for s in range(2))
    return out


def edge_distance(a, b, band: float = DEFAULT_BAND) -> float:
    """Distance between two edges (see :func:`edge_distances`)."""
    return float(edge_distances(a, [b], band)[0])


def rank_identities(
    query, gallery: Sequence, identities: Sequence[str], k: int | None = None, band: float = DEFAULT_BAND
) -> list[tuple[str, float]]:
    """Rank identities for a query edge by their best-matching gallery edge.

    Args:
        query: the query's descriptor.
        gallery: m gallery descriptors.
        identities: the whale id of each gallery descriptor (m strings).
        k: how many identities to return (all when None).
        band: Sakoe-Chiba half-width as a share of n.

    Returns:
        ``(identity, score)`` pairs, best first, each identity once; ``score`` is minus the
        identity's smallest distance (higher is better, 0 is a perfect match).
    """
    if len(gallery) != len(identities):
        raise ValueError(f"{len(gallery)} gallery edges but {len(identities)} identities")
    dist = edge_distances(query, gallery, band)
    best: dict[str, float] = {}
    for wid, d in zip(identities, dist.tolist(), strict=True):
        if d < best.get(wid, np.inf):
            best[wid] = d
    ranked = sorted(best.items(), key=lambda kv: kv[1])
    return [(wid, -d) for wid, d in ranked[: k if k is not None else len(ranked)]]
