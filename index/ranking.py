"""Ranking rules shared by evaluation, calibration and the service (torch- and FAISS-free).

* :func:`top_k_distinct` keeps the first (best) occurrence of each identity, so a top-5 never names
  one identity twice (MAP@5 credits only the first hit).
* :func:`insert_new_whale` places ``new_whale`` at the first rank whose score falls below the
  threshold, as the 3rd-place solution of the Kaggle 2019 Humpback Whale Identification
  competition did.
* :func:`map5_at_thresholds`, :func:`choose_threshold_max_map5` and
  :func:`choose_threshold_share` choose that threshold on a validation set.
* :func:`average_precision_at_k`, :func:`map_at_k` and :func:`top1_accuracy` score final rankings: the
  project's one definition of MAP@5 (Kaggle's: at most ``k`` predictions count, the precision at the
  rank of the first correct label, 0 without one; a label predicted twice counts once; ``new_whale``
  is an ordinary label).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

NEW_WHALE = "new_whale"
#: Share of new_whale among the Kaggle 2019 test photos (about 0.276): the default target of the
#: ``new_whale_share`` threshold rule.
DEFAULT_NEW_WHALE_SHARE = 0.276

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


# --- MAP@5, exactly as Kaggle scored the Humpback Whale Identification competition ----------------


def average_precision_at_k(predicted: Sequence[str], truth: str, k: int = 5) -> float:
    """Kaggle's AP@k for one image with one true label.

    Args:
        predicted: labels, best first (any length; only the first ``k`` count).
        truth: the true label (may be ``"new_whale"``).
        k: cut-off.

    Returns:
        ``1 / rank`` of the first correct label within the first ``k``, else 0.0.
    """
    for i, label in enumerate(list(predicted)[:k]):
        if label == truth:
            return 1.0 / (i + 1)
    return 0.0


def map_at_k(predictions: Sequence[Sequence[str]], truths: Sequence[str], k: int = 5) -> float:
    """Mean of :func:`average_precision_at_k` over images.

    Args:
        predictions: one ranked label list per image.
        truths: one true label per image, same order.
        k: cut-off (5 for MAP@5).

    Raises:
        ValueError: when the two sequences differ in length or are empty.
    """
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} prediction lists for {len(truths)} truths")
    if not truths:
        raise ValueError("map_at_k needs at least one image")
    return sum(average_precision_at_k(p, t, k) for p, t in zip(predictions, truths, strict=True)) / len(truths)


def top1_accuracy(predictions: Sequence[Sequence[str]], truths: Sequence[str]) -> float:
    """Share of images whose first prediction is the true label."""
    if len(predictions) != len(truths) or not truths:
        raise ValueError("top1_accuracy needs equally long, non-empty sequences")
    return sum(bool(p) and p[0] == t for p, t in zip(predictions, truths, strict=True)) / len(truths)
