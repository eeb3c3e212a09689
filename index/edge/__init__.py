"""The fluke's trailing edge as an identification cue (issue 17): extraction, descriptor, matching.

* :func:`extract_edge` finds the tips, the notch and the trailing edge in a photo (GrabCut inside
  the fluke's box) or says why it cannot (:class:`NoEdge`).
* :func:`integral_curvature` describes the edge (Weideman et al. 2017), invariant to the fluke's
  scale and in-plane rotation; :func:`encode_descriptor` / :func:`decode_descriptor` store it as a
  versioned ``WTE1`` blob, like the SIFT features' ``WLF1``.
* :func:`edge_distances` compares a query edge with many (banded DTW, Jablons 2016), and
  :func:`rank_identities` ranks whales by their best-matching photo.

:func:`describe_photo` chains extraction and description for one photo.
"""

from __future__ import annotations

import numpy as np

from index.edge.descriptor import (
    DEFAULT_POINTS,
    DEFAULT_SCALES,
    EdgeDescriptor,
    decode_descriptor,
    encode_descriptor,
    integral_curvature,
)
from index.edge.extract import NO_EDGE_REASONS, NoEdge, TrailingEdge, extract_edge
from index.edge.match import DEFAULT_BAND, edge_distance, edge_distances, rank_identities

__all__ = [
    "DEFAULT_BAND",
    "DEFAULT_POINTS",
    "DEFAULT_SCALES",
    "NO_EDGE_REASONS",
    "EdgeDescriptor",
    "NoEdge",
    "TrailingEdge",
    "decode_descriptor",
    "describe_photo",
    "edge_distance",
    "edge_blob",
    "edge_distances",
    "encode_descriptor",
    "extract_edge",
    "integral_curvature",
    "rank_identities",
]


def describe_photo(pixels: np.ndarray, box=None) -> EdgeDescriptor | NoEdge:
    """Extract a photo's trailing edge and describe it.

    Args:
        pixels: ``(H, W, 3) uint8`` RGB photo, upright.
        box: optional fluke box ``(x0, y0, x1, y1)`` in photo pixels (whole frame when None).

    Returns:
        The :class:`EdgeDescriptor` (store it with :func:`encode_descriptor`), or a :class:`NoEdge`
        with its reason.

    Raises:
        ValueError: ``pixels`` is not a uint8 image or ``box`` is malformed.
    """
    edge = extract_edge(pixels, box)
    if isinstance(edge, NoEdge):
        return edge
    return integral_curvature(edge)


def edge_blob(pixels: np.ndarray, box=None) -> bytes | None:
    """The photo's trailing edge as a stored ``WTE1`` blob, or None when it has none (see :func:`describe_photo`)."""
    desc = describe_photo(pixels, box)
    return None if isinstance(desc, NoEdge) else encode_descriptor(desc)
