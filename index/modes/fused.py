"""``fused``: the embedding's ``shortlist_k`` identities joined by the identities LNBNN verified,
re-ranked by ``sigmoid(w_e * cosine + w_l * log1p(inliers) + bias [+ w_v * lnbnn])``
(:func:`index.local.fused_scores`; WildFusion, Cermak et al. 2024), the cosine's weight chosen for the
MAP@5 it ranks at (:func:`index.local.fusion_for_map5`)."""

from __future__ import annotations

from collections.abc import Sequence

from core.manifest import Manifest
from index.local.calibration import calibrate_from_pairs, fused_scores, fusion_for_map5, local_scores
from index.modes.base import Evidence, MatchScope, Pairs, RankedIdentity, ScoringMode, local_entry, register


@register
class FusedMode(ScoringMode):
    name = "fused"
    summary = "the embedding's shortlist and LNBNN's verified whales, re-ranked by cosine and local evidence"
    needs_local_features = True

    def embedding_k(self, manifest: Manifest, k: int) -> int:
        return max(k, manifest.local_features.shortlist_k)

    def match_scope(self, manifest: Manifest) -> MatchScope:
        return "shortlist"

    def candidates(self, ev: Evidence, manifest: Manifest, k: int) -> list[int]:
        """The embedding's first ``shortlist_k`` identities, joined under LNBNN by the verified ones (with
        the brute-force matcher the shortlist alone: only its photos are matched in the service)."""
        short = [h.identity_id for h in ev.ranking[: manifest.local_features.shortlist_k]]
        joined = [*short, *ev.verified] if ev.lnbnn is not None else short
        return [i for i in dict.fromkeys(joined) if i in ev.names]

    def entries(
        self, ev: Evidence, ids: Sequence[int], params, manifest: Manifest, explain: bool = False
    ) -> list[RankedIdentity]:
        cos = ev.cosines(list(ids))
        inliers = [ev.inliers(i) for i in ids]
        lnbnn = [ev.lnbnn_of(i) or 0.0 for i in ids]
        fused = fused_scores([cos[i] for i in ids], inliers, params, lnbnn).tolist()
        local = local_scores(inliers, manifest.local_features.calibration, lnbnn).tolist()
        return [
            local_entry(ev, i, f, cosine=cos[i], local_score=s, fused_score=f, explain=explain)
            for i, f, s in zip(ids, fused, local, strict=True)
        ]

    def params(self, manifest: Manifest):
        return manifest.local_features.fusion

    def fit(self, pairs: Pairs, manifest: Manifest):
        """The cosine's weight chosen by MAP@5 over the queries (:func:`index.local.fusion_for_map5`) when
        the pairs know their queries; else a logistic fit on the pairs alone (WildFusion's)."""
        if not 0 < pairs.same_whale.sum() < len(pairs.same_whale):
            return None
        spec = manifest.local_features
        if pairs.query is not None and pairs.query_is_new is not None:
            fusion, _w, _map5 = fusion_for_map5(
                pairs.cosine,
                pairs.inliers,
                pairs.same_whale,
                pairs.query,
                pairs.query_is_new,
                lnbnn=pairs.lnbnn,
                lnbnn_weight=spec.lnbnn_weight,
            )
            return fusion
        return calibrate_from_pairs(
            pairs.inliers, pairs.same_whale, pairs.cosine, lnbnn=pairs.lnbnn, lnbnn_weight=spec.lnbnn_weight
        ).fusion

    def with_params(self, manifest: Manifest, params) -> Manifest:
        spec = manifest.local_features.model_copy(update={"fusion": tuple(params)})
        return manifest.model_copy(update={"local_features": spec})
