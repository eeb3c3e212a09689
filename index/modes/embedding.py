"""``embedding``: the identities nearest the query's embedding (cosine with their centroids, or
with their best photo under ``image_max``); no local matching."""

from __future__ import annotations

from collections.abc import Sequence

from core.manifest import Manifest
from index.modes.base import Evidence, RankedIdentity, ScoringMode, register


@register
class EmbeddingMode(ScoringMode):
    name = "embedding"
    summary = "cosine similarity of the query's embedding with each identity (FAISS search)"

    def candidates(self, ev: Evidence, manifest: Manifest, k: int) -> list[int]:
        return [h.identity_id for h in ev.ranking[:k] if h.identity_id in ev.names]

    def entries(
        self, ev: Evidence, ids: Sequence[int], params, manifest: Manifest, explain: bool = False
    ) -> list[RankedIdentity]:
        cos = ev.cosines(list(ids))
        return [RankedIdentity(ev.names[i], i, cos[i], cosine=cos[i]) for i in ids]
