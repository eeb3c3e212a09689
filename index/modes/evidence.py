"""Gathering one query's :class:`~index.modes.base.Evidence` from the gallery and the local matcher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from index.modes.base import Evidence, MatchScope

if TYPE_CHECKING:
    from index.gallery import Gallery, Hit
    from index.local import LocalFeatures, LocalMatcher


def gather(
    gallery: Gallery,
    ranking: Sequence[Hit],
    embedding: np.ndarray | None = None,
    matcher: LocalMatcher | None = None,
    features: LocalFeatures | None = None,
    scope: MatchScope = "none",
    names: Mapping[int, str] | None = None,
    extras: dict | None = None,
) -> Evidence:
    """The evidence a mode needs about one query.

    With HotSpotter's matcher (``matcher.descriptors`` set) any scope but ``"none"`` runs LNBNN votes
    then RANSAC on the ``verify_k`` best-voted photos (:meth:`LocalMatcher.lnbnn_candidates`); with the
    brute-force matcher ``"shortlist"`` verifies every photo of the ranking's identities and ``"all"``
    every photo of every answerable identity (about 1-3 ms a photo).

    Args:
        gallery: the gallery searched.
        ranking: the embedding search's hits for the query, best first.
        embedding: ``(d,) float32`` the query's L2-normalised embedding (cosines of identities outside
            ``ranking``), or None.
        matcher, features: the local matcher and the query's local features (needed unless ``scope`` is
            ``"none"``).
        scope: how much local matching to run.
        names: ``identity_id -> whale_id`` of the answerable identities (default: the gallery's).
        extras: per-query data of other cues (:meth:`ScoringMode.query_extras`).
    """
    names = gallery.answerable_names() if names is None else names
    similarity = None if embedding is None else (lambda ids: gallery.similarities(embedding, ids))
    more = {"extras": dict(extras or {}), "gallery": gallery}
    if scope == "none" or matcher is None or features is None:
        return Evidence(names, ranking, similarity=similarity, **more)
    if matcher.descriptors is not None:
        lnbnn, matches = matcher.lnbnn_candidates(features)
        return Evidence(names, ranking, matches, lnbnn, similarity, **more)
    ids = list(names) if scope == "all" else [h.identity_id for h in ranking]
    return Evidence(names, ranking, matcher.score_identities(features, ids), None, similarity, **more)
