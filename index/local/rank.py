"""The top-k of the local scoring modes, as pure functions shared by the service and calibration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from index.local.calibration import fused_score, local_score

if TYPE_CHECKING:  # index.gallery imports faiss; this module must not need it
    from index.gallery import Hit
    from index.local.matcher import IdentityMatch


#: Scores equal to this many decimals tie and are ordered by whale id (as in index.gallery).
TIE_DECIMALS = 6

# --- ranking (pure functions) --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RankedIdentity:
    """One identity of a ranking, with the evidence behind its score.

    Attributes:
        whale_id, identity_id: the identity.
        score: the scoring mode's score (cosine, local score or fused score), used for the ranking
            and compared with the mode's new_whale threshold.
        cosine: embedding cosine similarity, when known.
        inliers, matches: RANSAC inliers and ratio-test matches of the best photo (None in
            embedding mode).
        local_score: calibrated local score, fused_score: fused score (None when not computed).
        image_id: the gallery photo with the most inliers.
        pairs: ``(inliers, 2, 2) float32`` inlier pairs (query point, gallery point) in photo
            pixels, only when asked for (``explain``).
        lnbnn: LNBNN score of the identity's best-voted photo (``matcher="lnbnn"``; 0 when no
            vote), which breaks ties of equal scores and inliers.
    """

    whale_id: str
    identity_id: int
    score: float
    cosine: float | None = None
    inliers: int | None = None
    matches: int | None = None
    local_score: float | None = None
    fused_score: float | None = None
    image_id: int | None = None
    pairs: np.ndarray | None = None
    lnbnn: float | None = None


def _top_k(entries: list[RankedIdentity], k: int) -> list[RankedIdentity]:
    entries.sort(
        key=lambda e: (
            -round(e.score, TIE_DECIMALS),
            -(e.inliers or 0),
            -round(e.lnbnn or 0.0, TIE_DECIMALS),
            e.whale_id,
        )
    )
    seen: set[str] = set()
    out = []
    for e in entries:  # keep the first (best) entry of each identity
        if e.whale_id not in seen:
            seen.add(e.whale_id)
            out.append(e)
        if len(out) == k:
            break
    return out


def rank_embedding(shortlist: Sequence[Hit], k: int = 5) -> list[RankedIdentity]:
    """``embedding`` mode in the common shape: the search hits, score = cosine."""
    return _top_k(
        [RankedIdentity(h.whale_id, h.identity_id, float(h.score), cosine=float(h.score)) for h in shortlist], k
    )


def rank_local(
    matches: Mapping[int, IdentityMatch],
    names: Mapping[int, str],
    calibration: Sequence[float],
    k: int = 5,
    explain: bool = False,
    lnbnn: Mapping[int, float] | None = None,
) -> list[RankedIdentity]:
    """``local`` mode: identities ranked by calibrated local score (per-identity maximum inliers).

    Args:
        matches: ``identity_id -> IdentityMatch`` (from :meth:`LocalMatcher.score_identities`).
        names: ``identity_id -> whale_id`` of the identities that may be answered; others are skipped.
        calibration: ``(a, b)`` of :func:`local_score`.
        k: identities returned.
        explain: attach the inlier pairs.
        lnbnn: ``identity_id -> LNBNN score`` (LNBNN matcher): breaks ties of equal inliers, and
            voted identities that were not verified are ranked with 0 inliers after the verified ones.

    Returns:
        Up to ``k`` distinct identities, best first; ties (equal to ``TIE_DECIMALS``) by more
        inliers, then the higher LNBNN score, then whale id.
    """
    entries = []
    for ident, m in matches.items():
        if ident not in names:
            continue
        lb = None if lnbnn is None else float(lnbnn.get(ident, 0.0))
        ls = local_score(m.inliers, calibration, lb or 0.0)
        pairs = m.result.pairs if explain else None
        entries.append(
            RankedIdentity(names[ident], ident, ls, None, m.inliers, m.matches, ls, None, m.image_id, pairs, lb)
        )
    if lnbnn is not None and len(entries) < k:
        for ident, lb in lnbnn.items():
            if ident in names and ident not in matches:
                ls0 = local_score(0, calibration, float(lb))
                pairs = np.zeros((0, 2, 2), np.float32) if explain else None
                entries.append(RankedIdentity(names[ident], ident, ls0, None, 0, 0, ls0, None, None, pairs, float(lb)))
    return _top_k(entries, k)


def rank_fused(
    shortlist: Sequence[Hit],
    matches: Mapping[int, IdentityMatch],
    fusion: Sequence[float],
    calibration: Sequence[float] | None = None,
    k: int = 5,
    explain: bool = False,
    lnbnn: Mapping[int, float] | None = None,
) -> list[RankedIdentity]:
    """``fused`` mode: an embedding shortlist re-ranked by ``fused_score(cosine, inliers)``.

    Args:
        shortlist: embedding hits (``whale_id``, cosine ``score``, ``identity_id``), e.g. the top
            ``spec.shortlist_k`` of ``Gallery.search``.
        matches: ``identity_id -> IdentityMatch``; a shortlisted identity without one counts 0 inliers.
        fusion: ``(w_embedding, w_local, bias)`` of :func:`fused_score`.
        calibration: ``(a, b)`` to report each identity's local score too (None: not reported).
        k: identities returned.
        explain: attach the inlier pairs.
        lnbnn: ``identity_id -> LNBNN score`` (LNBNN matcher), reported and used to break ties.

    Returns:
        Up to ``k`` distinct identities, best first; ties by more inliers, then LNBNN score, then whale id.
    """
    entries = []
    for h in shortlist:
        m = matches.get(h.identity_id)
        inliers = m.inliers if m is not None else 0
        lb = None if lnbnn is None else float(lnbnn.get(h.identity_id, 0.0))
        fs = fused_score(float(h.score), inliers, fusion, lb or 0.0)
        entries.append(
            RankedIdentity(
                h.whale_id,
                h.identity_id,
                fs,
                float(h.score),
                inliers,
                m.matches if m is not None else 0,
                local_score(inliers, calibration, lb or 0.0) if calibration is not None else None,
                fs,
                m.image_id if m is not None else None,
                (m.result.pairs if m is not None else np.zeros((0, 2, 2), np.float32)) if explain else None,
                lb,
            )
        )
    return _top_k(entries, k)
