"""``edge_fused``: ``fused`` with the fluke's trailing edge as a third cue (issue 17).

The candidates are ``fused``'s (the embedding's shortlist joined by the whales LNBNN verified). Each is
scored by one logistic regression on four features, fitted on genuine/impostor pairs like ``fused``'s
(WildFusion's recipe with a third cue):

* ``cosine``: the embedding's similarity;
* ``local``: ``log1p(inliers) + lnbnn_weight * lnbnn`` (as ``fused``);
* ``has_edge``: 1 when both the query and one of the whale's photos have a trailing edge, else 0;
* ``edge``: minus the smallest DTW distance between the query's edge and the whale's photos' edges
  (integral curvature, :mod:`index.edge`; Weideman et al. 2017, Jablons 2016), 0 without edges.

A photo whose edge cannot be read (cut off, too small, side view) is scored on the other cues alone:
``has_edge`` and ``edge`` are 0, and the response says why (``trailing_edge``). Coefficients are
``(w_cosine, w_inliers, w_lnbnn, w_has_edge, w_edge, bias)`` in ``manifest.mode_params["edge_fused"]``;
before calibration they are ``fused``'s with no weight on the edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.manifest import Manifest
from index.local.calibration import _sigmoid, fit_logistic, local_scores
from index.modes.base import Evidence, MatchScope, Pairs, RankedIdentity, ScoringMode, local_entry, register
from index.modes.fused import FusedMode


def _edge_cues(ev: Evidence, ids: Sequence[int], band: float) -> tuple[dict[int, float], dict[int, Any]]:
    """``identity -> smallest edge distance`` and ``identity -> that photo's edge`` for the candidates with
    edges (empty when the query has none); decoded edges are cached on the evidence."""
    from index.edge import EdgeDescriptor, decode_descriptor, edge_distances

    query = ev.extras.get("edge")
    if not isinstance(query, EdgeDescriptor) or ev.gallery is None:
        return {}, {}
    cache: dict[int, tuple[int, EdgeDescriptor]] = ev.extras.setdefault("_edges", {})
    todo = [i for i in ids if i not in ev.extras.setdefault("_edges_loaded", set())]
    if todo:
        for image_id, ident, blob in ev.gallery.store.edges_of(todo):
            try:
                desc = decode_descriptor(blob, f"image {image_id} trailing edge")
            except Exception:  # noqa: BLE001 - a corrupt blob counts as a photo without an edge
                continue
            cache[image_id] = (ident, desc)
        ev.extras["_edges_loaded"].update(todo)
    wanted = set(ids)
    rows = [(image_id, ident, desc) for image_id, (ident, desc) in cache.items() if ident in wanted]
    if not rows:
        return {}, {}
    dist = edge_distances(query, [d for _, _, d in rows], band)
    best: dict[int, float] = {}
    edge_of: dict[int, Any] = {}
    for (_, ident, desc), d in zip(rows, dist.tolist(), strict=True):
        if d < best.get(ident, np.inf):
            best[ident], edge_of[ident] = d, desc.edge
    return best, edge_of


@register
class EdgeFusedMode(ScoringMode):
    name = "edge_fused"
    summary = "fused plus the fluke's trailing edge (integral curvature, DTW) as a third cue"
    needs_local_features = True

    def is_available(self, manifest: Manifest) -> bool:
        return manifest.local_features is not None and manifest.edge is not None

    def embedding_k(self, manifest: Manifest, k: int) -> int:
        return FusedMode().embedding_k(manifest, k)

    def match_scope(self, manifest: Manifest) -> MatchScope:
        return "shortlist"

    def candidates(self, ev: Evidence, manifest: Manifest, k: int) -> list[int]:
        return FusedMode().candidates(ev, manifest, k)

    def query_extras(self, manifest: Manifest, pixels: np.ndarray, box) -> dict[str, Any]:
        from index.edge import describe_photo

        return {"edge": describe_photo(pixels, box)}

    def _features(self, ev: Evidence, ids: Sequence[int], manifest: Manifest):
        best, edge_of = _edge_cues(ev, ids, manifest.edge.band)
        has = np.array([1.0 if i in best else 0.0 for i in ids])
        edge = np.array([-best[i] if i in best else 0.0 for i in ids])
        return has, edge, best, edge_of

    def pair_features(self, ev: Evidence, ids: Sequence[int], manifest: Manifest) -> dict[str, np.ndarray]:
        has, edge, _, _ = self._features(ev, ids, manifest)
        return {"has_edge": has, "edge": edge}

    def entries(
        self, ev: Evidence, ids: Sequence[int], params, manifest: Manifest, explain: bool = False
    ) -> list[RankedIdentity]:
        w_e, w_l, w_v, w_h, w_d, bias = (float(v) for v in params)
        cos = ev.cosines(list(ids))
        inliers = np.log1p(np.array([ev.inliers(i) for i in ids], float))
        lnbnn = np.array([ev.lnbnn_of(i) or 0.0 for i in ids])
        has, edge, best, edge_of = self._features(ev, ids, manifest)
        z = w_e * np.array([cos[i] for i in ids]) + w_l * inliers + w_v * lnbnn + w_h * has + w_d * edge + bias
        scores = _sigmoid(z).tolist()
        local = local_scores([ev.inliers(i) for i in ids], manifest.local_features.calibration, lnbnn).tolist()
        out = []
        for j, i in enumerate(ids):
            extra = {"edge_distance": round(best[i], 5) if i in best else None}
            if explain and i in edge_of:
                extra["edge_points"] = np.round(edge_of[i].points, 1).tolist()
            out.append(local_entry(ev, i, scores[j], cos[i], local[j], scores[j], explain, extra))
        return out

    def params(self, manifest: Manifest):
        saved = manifest.mode_params.get(self.name)
        if saved is not None:
            return tuple(saved)
        w_e, w_l, bias, *rest = manifest.local_features.fusion
        return (w_e, w_l, rest[0] if rest else 0.0, 0.0, 0.0, bias)

    def fit(self, pairs: Pairs, manifest: Manifest):
        y = pairs.same_whale.astype(float)
        if not 0 < y.sum() < len(y):
            return None
        weight = manifest.local_features.lnbnn_weight
        local = np.log1p(pairs.inliers) + (weight * pairs.lnbnn if pairs.lnbnn is not None else 0.0)
        X = np.stack([pairs.cosine, local, pairs.extra["has_edge"], pairs.extra["edge"]], axis=1)
        w_e, w_l, w_h, w_d, bias = fit_logistic(X, y)
        return (float(w_e), float(w_l), float(w_l) * weight, float(w_h), float(w_d), float(bias))

    def with_params(self, manifest: Manifest, params) -> Manifest:
        return manifest.model_copy(update={"mode_params": {**manifest.mode_params, self.name: list(params)}})

    def response_extras(self, ev: Evidence, explain: bool) -> dict[str, Any]:
        from index.edge import EdgeDescriptor, NoEdge

        q = ev.extras.get("edge")
        if isinstance(q, NoEdge):
            return {"trailing_edge": {"found": False, "reason": q.reason, "detail": q.detail}}
        if isinstance(q, EdgeDescriptor):
            info: dict[str, Any] = {"found": True, "notch_index": int(q.edge.notch_index)}
            if explain:
                info["points"] = np.round(q.edge.points, 1).tolist()
            return {"trailing_edge": info}
        return {}
