"""Ranking rules shared by evaluation, calibration and the service (torch- and FAISS-free).

* :func:`top_k_distinct` keeps the first (best) occurrence of each identity, so a top-5 never names
  one identity twice (MAP@5 credits only the first hit).
* :func:`insert_new_whale` places ``new_whale`` at the first rank whose score falls below the
  threshold, as the 3rd-place solution of the Kaggle 2019 Humpback Whale Identification
  competition did.
* :func:`map5_at_thresholds`, :func:`choose_threshold_max_map5` and
  :func:`choose_threshold_share` choose that threshold on a validation set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

NEW_WHALE = "new_whale"

Ranked = list[tuple[str, float]]


def top_k_distinct(ids: Iterable[str], scores: Iterable[float], k: int, skip=None) -> Ranked:
    """The first ``k`` distinct identities of a list ranked best first.

    Args:
        ids: identity of each candidate, best first.
        scores: the candidates' scores, same order (not re-sorted here).
        k: how many identities to keep.
        skip: optional predicate; identities for which it is true are never returned (e.g.
            flipped identities).

    Returns:
        Up to ``k`` ``(identity, score)`` pairs; an identity keeps its first (best) score.
    """
    out: Ranked = []
    seen: set[str] = set()
    for wid, score in zip(ids, scores, strict=False):
        if wid in seen or (skip is not None and skip(wid)):
            continue
        seen.add(wid)
        out.append((wid, float(score)))
        if len(out) == k:
            break
    return out


def insert_new_whale(ranked: Sequence[tuple[str, float]], threshold: float, k: int = 5) -> Ranked:
    """Insert ``new_whale`` into a ranked list at the first rank whose score is below ``threshold``.

    ``new_whale`` gets ``threshold`` as its score. When every score is at or above the threshold,
    ``new_whale`` follows the last identity (and is cut off if that is beyond rank ``k``). A list
    that already names ``new_whale`` is returned truncated, unchanged.

    Args:
        ranked: ``(identity, score)`` pairs, best first (scores non-increasing).
        threshold: the new_whale threshold, on the same scale as the scores.
        k: length of the returned list.

    Returns:
        At most ``k`` pairs.
    """
    items = [(w, float(s)) for w, s in ranked]
    if any(w == NEW_WHALE for w, _ in items):
        return items[:k]
    pos = next((i for i, (_, s) in enumerate(items) if s < threshold), len(items))
    items.insert(pos, (NEW_WHALE, float(threshold)))
    return items[:k]


def _ap_with_new_whale_at(pos: np.ndarray, truth_rank: np.ndarray, truth_is_new: np.ndarray, k: int) -> np.ndarray:
    """Average precision of each query when new_whale sits at 0-based rank ``pos``.

    Args:
        pos: ``(q, t) int`` new_whale rank per query and threshold (``k`` or more: not in the list).
        truth_rank: ``(q, 1) int`` 0-based rank of the true identity among the identities, ``-1`` if absent.
        truth_is_new: ``(q, 1) bool`` the truth is new_whale.
    """
    new_ap = np.where(pos < k, 1.0 / (pos + 1.0), 0.0)
    shifted = np.where(truth_rank >= pos, truth_rank + 1, truth_rank)
    known_ap = np.where((truth_rank >= 0) & (shifted < k), 1.0 / np.maximum(shifted + 1.0, 1.0), 0.0)
    return np.where(truth_is_new, new_ap, known_ap)


def map5_at_thresholds(
    scores: np.ndarray, truth_rank: np.ndarray, truth_is_new: np.ndarray, thresholds: np.ndarray, k: int = 5
) -> np.ndarray:
    """MAP@k of a validation set for each candidate threshold, computed in closed form.

    Args:
        scores: ``(q, m) float`` the scores of each query's ranked distinct identities (m >= k-1),
            best first, new_whale not included.
        truth_rank: ``(q,) int`` 0-based rank of each query's true identity in that list, -1 if
            it is not there (or if the truth is new_whale).
        truth_is_new: ``(q,) bool`` the truth is new_whale.
        thresholds: ``(t,) float`` candidate thresholds.
        k: cut-off (5 for MAP@5).

    Returns:
        ``(t,) float64`` MAP@k for each threshold.
    """
    scores = np.asarray(scores, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    # new_whale's rank = number of leading scores >= threshold (scores are sorted, best first).
    pos = (scores[:, None, :] >= thresholds[None, :, None]).sum(axis=2)
    ap = _ap_with_new_whale_at(
        pos, np.asarray(truth_rank).reshape(-1, 1), np.asarray(truth_is_new, bool).reshape(-1, 1), k
    )
    return ap.mean(axis=0)


def choose_threshold_max_map5(
    scores: np.ndarray, truth_rank: np.ndarray, truth_is_new: np.ndarray, k: int = 5
) -> tuple[float, float]:
    """The threshold that maximises validation MAP@k (rule ``max_map5``).

    Candidates are midpoints between consecutive distinct observed scores, plus one below and one
    above all of them; among equal maxima the middle candidate is taken (the most robust choice).

    Returns:
        ``(threshold, map_at_k)``.
    """
    observed = np.unique(np.asarray(scores, dtype=np.float64)[:, :k].ravel())
    if observed.size == 0:
        return 0.0, 0.0
    mids = (observed[1:] + observed[:-1]) / 2.0
    candidates = np.concatenate([[observed[0] - 1e-3], mids, [observed[-1] + 1e-3]])
    maps = map5_at_thresholds(scores, truth_rank, truth_is_new, candidates, k)
    best = np.flatnonzero(maps >= maps.max() - 1e-12)
    i = int(best[len(best) // 2])
    return float(candidates[i]), float(maps[i])


def choose_threshold_share(top1_scores: np.ndarray, share: float) -> float:
    """The threshold that answers ``new_whale`` at rank 1 for a target share of queries.

    For the Kaggle 2019 test set the share of new_whale was about 0.276. With ``share`` s, the
    threshold is the s-quantile of the queries' top-1 scores.

    Args:
        top1_scores: ``(q,) float`` best identity score of each query.
        share: target share in ``[0, 1]``.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    return float(np.quantile(np.asarray(top1_scores, dtype=np.float64), share))
