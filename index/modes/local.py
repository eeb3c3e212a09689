"""``local``: identities ranked by their local-feature evidence alone (SIFT + RANSAC inliers, and the
LNBNN votes of HotSpotter's matcher), calibrated as ``sigmoid(a * log1p(inliers) + b [+ c * lnbnn])``
(:func:`index.local.local_scores`)."""

from __future__ import annotations

from collections.abc import Sequence

from core.manifest import Manifest
from index.local.calibration import calibrate_from_pairs, local_scores
from index.modes.base import Evidence, MatchScope, Pairs, RankedIdentity, ScoringMode, local_entry, register


@register
class LocalMode(ScoringMode):
    name = "local"
    summary = "SIFT + RANSAC inliers (and LNBNN votes), calibrated; recognises whales the model never saw"
    needs_local_features = True

    def match_scope(self, manifest: Manifest) -> MatchScope:
        return "all"

    def candidates(self, ev: Evidence, manifest: Manifest, k: int) -> list[int]:
        """Under LNBNN: the verified identities, then (when fewer than ``k``) those voted for but not
        verified, ranked with 0 inliers; under brute force: every identity matched."""
        ids = ev.verified
        if ev.lnbnn is not None and len(ids) < k:
            have = set(ids)
            ids = ids + [i for i in ev.lnbnn if i in ev.names and i not in have]
        return ids

    def entries(
        self, ev: Evidence, ids: Sequence[int], params, manifest: Manifest, explain: bool = False
    ) -> list[RankedIdentity]:
        lnbnn = [ev.lnbnn_of(i) or 0.0 for i in ids]
        scores = local_scores([ev.inliers(i) for i in ids], params, lnbnn).tolist()
        return [local_entry(ev, i, s, local_score=s, explain=explain) for i, s in zip(ids, scores, strict=True)]

    def params(self, manifest: Manifest):
        return manifest.local_features.calibration

    def fit(self, pairs: Pairs, manifest: Manifest):
        if not 0 < pairs.same_whale.sum() < len(pairs.same_whale):
            return None
        spec = manifest.local_features
        return calibrate_from_pairs(
            pairs.inliers, pairs.same_whale, lnbnn=pairs.lnbnn, lnbnn_weight=spec.lnbnn_weight
        ).calibration

    def with_params(self, manifest: Manifest, params) -> Manifest:
        spec = manifest.local_features.model_copy(update={"calibration": tuple(params)})
        return manifest.model_copy(update={"local_features": spec})
