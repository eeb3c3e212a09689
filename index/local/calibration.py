"""Calibrated local and fused scores and their logistic fit on genuine/impostor pairs (WildFusion's recipe)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# --- scores and their calibration ----------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _lnbnn_column(lnbnn, n: int) -> np.ndarray:
    return np.zeros(n) if lnbnn is None else np.asarray(lnbnn, dtype=np.float64).reshape(-1)


def local_scores(inliers, calibration: Sequence[float], lnbnn=None) -> np.ndarray:
    """Vectorised :func:`local_score`: ``(n,)`` inlier counts (and ``(n,)`` LNBNN scores) ->
    ``(n,) float64`` in ``(0, 1)``."""
    a, b, *rest = (float(v) for v in calibration)
    x = np.log1p(np.asarray(inliers, dtype=np.float64).reshape(-1))
    c = rest[0] if rest else 0.0
    return _sigmoid(a * x + b + c * _lnbnn_column(lnbnn, len(x)))


def local_score(inliers: float, calibration: Sequence[float], lnbnn: float = 0.0) -> float:
    """Calibrated local score ``sigmoid(a * log1p(inliers) + b [+ c * lnbnn])``.

    ``calibration = (a, b)``, or ``(a, b, c)`` when the LNBNN score of the identity's best-voted
    photo (:mod:`index.lnbnn`) is a second feature.
    """
    return float(local_scores(np.array([inliers]), calibration, np.array([lnbnn]))[0])


def fused_scores(cosine, inliers, fusion: Sequence[float], lnbnn=None) -> np.ndarray:
    """Vectorised :func:`fused_score`: ``(n,)`` cosines, inliers (and LNBNN scores) -> ``(n,) float64``."""
    w_e, w_l, bias, *rest = (float(v) for v in fusion)
    cos = np.asarray(cosine, dtype=np.float64).reshape(-1)
    w_v = rest[0] if rest else 0.0
    x = np.log1p(np.asarray(inliers, dtype=np.float64).reshape(-1))
    return _sigmoid(w_e * cos + w_l * x + bias + w_v * _lnbnn_column(lnbnn, len(cos)))


def fused_score(cosine: float, inliers: float, fusion: Sequence[float], lnbnn: float = 0.0) -> float:
    """WildFusion-style score ``sigmoid(w_e * cosine + w_l * log1p(inliers) + bias [+ w_v * lnbnn])``;
    ``fusion = (w_e, w_l, bias)`` or ``(w_e, w_l, bias, w_v)`` with the LNBNN score as a third cue."""
    return float(fused_scores(np.array([cosine]), np.array([inliers]), fusion, np.array([lnbnn]))[0])


def fit_logistic(
    X: np.ndarray,
    y: np.ndarray,
    l2: float = 1e-3,
    iters: int = 100,
    sample_weight: np.ndarray | None = None,
    tol: float = 1e-10,
) -> np.ndarray:
    """L2-penalised logistic regression by Newton's method (IRLS) with a backtracking line search.

    Minimises ``mean_i w_i * (log(1 + exp(z_i)) - y_i z_i) + l2 / 2 * |coef|^2`` with
    ``z = X @ coef + intercept``; the intercept is not penalised. Weights are rescaled to mean 1.

    Args:
        X: ``(n, f) float64`` features (``(n,)`` is taken as one feature).
        y: ``(n,)`` labels in ``{0, 1}``; both must occur.
        l2: penalty on the coefficients (>= 0); a small one keeps separable data finite.
        iters: most Newton steps.
        sample_weight: optional ``(n,)`` non-negative weights.
        tol: stop when no coefficient moves by more than this.

    Returns:
        ``(f + 1,) float64``: the ``f`` coefficients, then the intercept.

    Raises:
        ValueError: shapes disagree, values are not finite, labels are not 0/1 or one class is missing.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or len(X) != len(y) or not len(y):
        raise ValueError(f"X must be (n, f) and y (n,), got {X.shape} and {y.shape}")
    if not (np.isfinite(X).all() and np.isin(y, (0.0, 1.0)).all()):
        raise ValueError("X must be finite and y must hold only 0 and 1")
    if y.min() == y.max():
        raise ValueError("fit_logistic needs both classes (0 and 1) in y")
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if w.shape != y.shape or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("sample_weight must be (n,) finite, non-negative and not all zero")
    w = w / w.mean()
    n, f = X.shape
    Z = np.hstack([X, np.ones((n, 1))])
    pen = np.full(f + 1, float(l2))
    pen[-1] = 0.0

    def objective(beta: np.ndarray) -> float:
        z = Z @ beta
        return float(np.mean(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * np.sum(pen * beta * beta))

    beta = np.zeros(f + 1)
    current = objective(beta)
    for _ in range(int(iters)):
        p = _sigmoid(Z @ beta)
        grad = Z.T @ (w * (p - y)) / n + pen * beta
        hess = (Z.T * (w * p * (1.0 - p))) @ Z / n + np.diag(pen) + 1e-12 * np.eye(f + 1)
        step = np.linalg.solve(hess, grad)
        t, decrease = 1.0, float(grad @ step)
        for _ in range(40):
            trial = objective(beta - t * step)
            if trial <= current - 1e-4 * t * decrease:
                break
            t *= 0.5
        beta = beta - t * step
        current = objective(beta)
        if np.max(np.abs(t * step)) < tol:
            break
    return beta


@dataclass(frozen=True)
class LocalCalibration:
    """Coefficients fitted by :func:`calibrate_from_pairs`, ready for ``LocalFeatureSpec``.

    Attributes:
        calibration: ``(a, b)`` of the local score, or ``(a, b, c)`` with LNBNN scores.
        fusion: ``(w_embedding, w_local, bias)`` of the fused score (``(..., w_lnbnn)`` with LNBNN
            scores), or None without cosines.
        pairs: pairs used; genuine: how many were same-whale pairs.
    """

    calibration: tuple[float, ...]
    fusion: tuple[float, ...] | None
    pairs: int
    genuine: int


def calibrate_from_pairs(
    inliers: Sequence[float],
    same_whale: Sequence[bool],
    cosines: Sequence[float] | None = None,
    l2: float = 1e-3,
    balanced: bool = False,
    lnbnn: Sequence[float] | None = None,
    lnbnn_weight: float = 4.0,
) -> LocalCalibration:
    """Fit the local and fused logistic calibrations on genuine vs impostor pairs (WildFusion's recipe).

    Typically each validation query is matched against its candidates: a pair is genuine when the
    candidate is the query's whale.

    Args:
        inliers: ``(n,)`` RANSAC inliers of each pair (per-identity maximum).
        same_whale: ``(n,) bool`` the pair shows one whale.
        cosines: optional ``(n,)`` embedding cosine of each pair; without it ``fusion`` is None.
        l2: penalty of :func:`fit_logistic`.
        balanced: weight the classes equally (otherwise the scores estimate the probability at the
            validation set's own genuine/impostor ratio).
        lnbnn: optional ``(n,)`` LNBNN score of each pair (:mod:`index.lnbnn`). The local evidence is
            then ``log1p(inliers) + lnbnn_weight * lnbnn``, one feature whose two parts keep the fixed
            ratio ``lnbnn_weight``: fitted freely, the pair-level fit gave LNBNN a weight near 0
            (its scale varies from query to query), which ranked worse on real flukes (playground
            split, 300 queries: local MAP@5 0.553 against 0.585 at weight 4; weights 2 and 4 within 0.003).
        lnbnn_weight: that ratio.

    Returns:
        ``calibration`` ``(a, b)`` from ``log1p(inliers)``, or ``(a, b, a * lnbnn_weight)`` with
        LNBNN scores; ``fusion`` ``(w_e, w_l, bias)`` from ``(cosine, log1p(inliers))``, or with
        ``w_l * lnbnn_weight`` appended.

    Raises:
        ValueError: lengths differ, or one class is missing.
    """
    x_local = np.log1p(np.asarray(inliers, dtype=np.float64).reshape(-1))
    y = np.asarray(same_whale, dtype=bool).reshape(-1).astype(np.float64)
    if len(x_local) != len(y):
        raise ValueError(f"{len(x_local)} inlier counts but {len(y)} labels")
    x = x_local
    if lnbnn is not None:
        v = np.asarray(lnbnn, dtype=np.float64).reshape(-1)
        if len(v) != len(y):
            raise ValueError(f"{len(v)} LNBNN scores but {len(y)} labels")
        x = x_local + float(lnbnn_weight) * v
    weight = None
    if balanced and 0 < y.sum() < len(y):
        weight = np.where(y > 0, 0.5 / y.mean(), 0.5 / (1.0 - y.mean()))
    a, b = fit_logistic(x[:, None], y, l2=l2, sample_weight=weight)
    calibration = (float(a), float(b)) + ((float(a) * float(lnbnn_weight),) if lnbnn is not None else ())
    fusion = None
    if cosines is not None:
        cos = np.asarray(cosines, dtype=np.float64).reshape(-1)
        if len(cos) != len(y):
            raise ValueError(f"{len(cos)} cosines but {len(y)} labels")
        w_e, w_l, bias = fit_logistic(np.stack([cos, x], axis=1), y, l2=l2, sample_weight=weight)
        fusion = (float(w_e), float(w_l), float(bias))
        fusion += (float(w_l) * float(lnbnn_weight),) if lnbnn is not None else ()
    return LocalCalibration(calibration, fusion, int(len(y)), int(y.sum()))


#: Weights of the cosine beside the local evidence ``log1p(inliers) + lnbnn_weight * lnbnn`` that
#: :func:`fusion_for_map5` tries (the playground split's MAP@5 peaks broadly between 1 and 2).
FUSION_COSINE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)


def fusion_for_map5(
    cosines: Sequence[float],
    inliers: Sequence[float],
    same_whale: Sequence[bool],
    query: Sequence[int],
    query_is_new: Sequence[bool],
    lnbnn: Sequence[float] | None = None,
    lnbnn_weight: float = 4.0,
    grid: Sequence[float] = FUSION_COSINE_GRID,
    l2: float = 1e-3,
) -> tuple[tuple[float, ...], float, float]:
    """``fused``'s coefficients chosen for the ranking they give, not for pair classification.

    A logistic fit on genuine/impostor pairs (:func:`calibrate_from_pairs`) weighs the cosine by how well
    it separates pairs over all queries; what ``fused`` needs is the weight that ranks each query's true
    whale first. For each weight ``w`` of ``grid`` every query's candidates are ranked by
    ``z = w * cosine + e``, ``e = log1p(inliers) + lnbnn_weight * lnbnn`` (the local evidence of
    :func:`calibrate_from_pairs`), and MAP@5 is computed with new_whale placed by its best threshold
    (:func:`index.ranking.choose_threshold_max_map5`); the best ``w`` is kept (the smallest of equals),
    then ``z`` is calibrated to a probability by a one-feature logistic fit ``sigmoid(a * z + b)`` on the
    pairs. On the playground split (300 queries, the starter model's cosines, 2-fold cross-fitted)
    this ranked at MAP@5 0.591 against 0.575 for the pair fit (``scripts/measure_fusion.py``).

    Args:
        cosines, inliers, same_whale: ``(n,)`` the pairs (see :func:`calibrate_from_pairs`).
        query: ``(n,) int`` the query of each pair, ``0 .. q-1``.
        query_is_new: ``(q,) bool`` the query shows a whale the gallery lacks.
        lnbnn, lnbnn_weight: LNBNN scores of the pairs and their weight in ``e`` (None: ``e`` is the inliers').
        grid: the weights tried.
        l2: penalty of :func:`fit_logistic`.

    Returns:
        ``(fusion, w, map5)``: ``fusion = (a * w, a, b)`` (with ``a * lnbnn_weight`` appended when LNBNN
        scores are given, the layout of ``LocalFeatureSpec.fusion``), the weight chosen and its MAP@5.

    Raises:
        ValueError: lengths differ, a query index is out of range, or one class of pairs is missing.
    """
    from index.ranking import choose_threshold_max_map5

    cos = np.asarray(cosines, dtype=np.float64).reshape(-1)
    y = np.asarray(same_whale, dtype=bool).reshape(-1)
    q = np.asarray(query, dtype=np.int64).reshape(-1)
    is_new = np.asarray(query_is_new, dtype=bool).reshape(-1)
    e = np.log1p(np.asarray(inliers, dtype=np.float64).reshape(-1))
    if lnbnn is not None:
        e = e + float(lnbnn_weight) * np.asarray(lnbnn, dtype=np.float64).reshape(-1)
    if not (len(cos) == len(y) == len(q) == len(e)):
        raise ValueError(f"pairs of unequal lengths: {len(cos)} cosines, {len(e)} inliers, {len(y)} labels")
    if len(q) and (q.min() < 0 or q.max() >= len(is_new)):
        raise ValueError(f"query indices must lie in 0..{len(is_new) - 1}")
    if not 0 < y.sum() < len(y):
        raise ValueError("fitting needs both genuine and impostor pairs")
    k = 5
    order = np.argsort(q, kind="stable")
    starts = np.searchsorted(q[order], np.arange(len(is_new) + 1))
    best_w, best_map = float(grid[0]), -1.0
    for w in grid:
        z = w * cos + e
        floor = float(z.min()) - 1.0
        scores = np.full((len(is_new), k), floor)
        truth_rank = np.full(len(is_new), -1)
        for i in range(len(is_new)):
            rows = order[starts[i] : starts[i + 1]]
            ranked = rows[np.argsort(-z[rows], kind="stable")][:k]
            scores[i, : len(ranked)] = z[ranked]
            hit = np.flatnonzero(y[ranked])
            truth_rank[i] = int(hit[0]) if len(hit) and not is_new[i] else -1
        _, map5 = choose_threshold_max_map5(scores, truth_rank, is_new, k)
        if map5 > best_map + 1e-12:
            best_w, best_map = float(w), float(map5)
    a, b = fit_logistic((best_w * cos + e)[:, None], y.astype(np.float64), l2=l2)
    fusion = (float(a) * best_w, float(a), float(b))
    fusion += (float(a) * float(lnbnn_weight),) if lnbnn is not None else ()
    return fusion, best_w, best_map
