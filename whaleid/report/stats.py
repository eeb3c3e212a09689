"""The report's numbers from the per-query records: MAP@5, CMC, the threshold curve, confusion, worst cases.

MAP@5 is the project's one definition (:func:`training.metrics.map_at_k`, torch-free) over the
final top-5 lists that :func:`index.ranking.insert_new_whale` makes, exactly as ``whaleid evaluate``
and ``whaleid predict`` score them; the MAP@5-against-threshold curve is
:func:`index.ranking.map5_at_thresholds` (its closed form) and the best threshold on these queries
:func:`index.ranking.choose_threshold_max_map5`, the ``max_map5`` rule of ``whaleid calibrate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from index.ranking import NEW_WHALE, choose_threshold_max_map5, insert_new_whale, map5_at_thresholds
from training.metrics import map_at_k, top1_accuracy

from .queries import CMC_K

K = 5
#: Worst-case categories, in the order the report shows them.
WORST = {
    "missed": "Known whale, not in the final top 5 (highest wrong score first)",
    "new_called_known": "New whale called known (highest score first)",
    "known_called_new": "Known whale called new_whale (lowest score first)",
}


@dataclass
class ModeStats:
    """One scoring mode's (or one submission's) figures on the report's queries.

    Attributes:
        mode: ``embedding``, ``local``, ``fused`` or ``submission``.
        threshold: the new_whale threshold used (None for a submission: its lists are final).
        threshold_source: where it comes from (``bundle``: the manifest's calibrated value, the one
            ``POST /identify`` uses; ``max_map5 on these queries`` when the bundle has none).
        map5, top1: MAP@5 and top-1 accuracy of the final top-5 lists, over all scored queries.
        top1_known, top5_known: share of known-whale queries with the true whale first / in the top 5
            identities (before new_whale is placed).
        best_threshold, best_map5: the ``max_map5`` threshold on these queries and its MAP@5.
        cmc: ``(CMC_K,)`` share of known-whale queries whose whale is among the first k identities.
        curve_thresholds, curve_map5: MAP@5 against the threshold (``(t,)`` each).
        confusion: counts at the threshold: ``known_right``, ``known_wrong``, ``known_called_new``,
            ``new_called_new``, ``new_called_known``.
        genuine, impostor: top-1 identity scores of queries whose first identity is / is not the truth.
        worst: category -> records (see :data:`WORST`), worst first.
        counts: ``queries``, ``scored``, ``known``, ``new``, ``skipped_enrolled``, ``unreadable``.
    """

    mode: str
    threshold: float | None
    threshold_source: str
    map5: float
    top1: float
    top1_known: float
    top5_known: float
    best_threshold: float | None
    best_map5: float | None
    cmc: np.ndarray
    curve_thresholds: np.ndarray | None
    curve_map5: np.ndarray | None
    confusion: dict[str, int]
    genuine: np.ndarray | None
    impostor: np.ndarray | None
    worst: dict[str, list[dict]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        """The headline figures as plain JSON values (unrounded: they compare with ``evaluate``'s to 1e-9)."""

        def r(v):
            return None if v is None else float(v)

        return {
            "mode": self.mode,
            "threshold": r(self.threshold),
            "threshold_source": self.threshold_source,
            "map5": r(self.map5),
            "top1": r(self.top1),
            "top1_known": r(self.top1_known),
            "top5_known": r(self.top5_known),
            "best_threshold": r(self.best_threshold),
            "best_map5": r(self.best_map5),
            "cmc": [r(v) for v in self.cmc],
            "confusion": dict(self.confusion),
            **self.counts,
        }


def _rank_of(truth: str, identities: Sequence[str]) -> int:
    """0-based rank of a known whale among ranked identities; -1 when absent or new_whale."""
    return identities.index(truth) if (truth != NEW_WHALE and truth in identities) else -1


def _counts(records: Sequence[dict], scored: Sequence[dict]) -> dict[str, int]:
    return {
        "queries": len(records),
        "scored": len(scored),
        "known": sum(r["truth"] != NEW_WHALE for r in scored),
        "new": sum(r["truth"] == NEW_WHALE for r in scored),
        "skipped_enrolled": sum(r.get("skipped") == "enrolled" for r in records),
        "unreadable": sum("error" in r for r in records),
    }


def _confusion(preds: Sequence[Sequence[str]], truths: Sequence[str]) -> dict[str, int]:
    c = dict.fromkeys(("known_right", "known_wrong", "known_called_new", "new_called_new", "new_called_known"), 0)
    for p, t in zip(preds, truths, strict=True):
        first = p[0] if p else NEW_WHALE
        if t == NEW_WHALE:
            c["new_called_new" if first == NEW_WHALE else "new_called_known"] += 1
        elif first == NEW_WHALE:
            c["known_called_new"] += 1
        else:
            c["known_right" if first == t else "known_wrong"] += 1
    return c


def _worst(scored, preds, truths, top1_scores, n_worst: int) -> dict[str, list[dict]]:
    """Worst cases per category; the riskiest first when scores are known (else file order)."""
    cats: dict[str, list[tuple[float, dict]]] = {c: [] for c in WORST}
    for rec, p, t, s in zip(scored, preds, truths, top1_scores, strict=True):
        first = p[0] if p else NEW_WHALE
        if t != NEW_WHALE and t not in p:
            cats["missed"].append((-s, rec))
        if t == NEW_WHALE and first != NEW_WHALE:
            cats["new_called_known"].append((-s, rec))
        if t != NEW_WHALE and first == NEW_WHALE:
            cats["known_called_new"].append((s, rec))
    return {c: [rec for _, rec in sorted(v, key=lambda x: x[0])[:n_worst]] for c, v in cats.items()}


def mode_stats(
    records: Sequence[dict], mode: str, threshold: float | None, n_worst: int = 5, curve_points: int = 400
) -> ModeStats:
    """The figures of one scoring mode from :func:`whaleid.report.queries.run_queries` records.

    Args:
        records: the mode's records (skipped and unreadable ones are counted, not scored).
        mode: the scoring mode.
        threshold: the bundle's calibrated new_whale threshold of the mode, or None: then the
            ``max_map5`` threshold of these queries is used (and said so).
        n_worst: worst cases kept per category.
        curve_points: thresholds on the MAP@5 curve (plus the chosen and the best one).

    Raises:
        ValueError: when no query could be scored.
    """
    scored = [r for r in records if "ranked" in r]
    if not scored:
        raise ValueError(f"no query could be scored in mode {mode!r}")
    truths = [r["truth"] for r in scored]
    names = [[w for w, _, _ in r["ranked"]] for r in scored]
    scores = np.full((len(scored), CMC_K), -np.inf)
    for i, r in enumerate(scored):
        for j, (_, s, _) in enumerate(r["ranked"][:CMC_K]):
            scores[i, j] = s
    is_new = np.array([t == NEW_WHALE for t in truths])
    rank20 = np.array([_rank_of(t, row) for row, t in zip(names, truths, strict=True)])
    rank5 = np.where(rank20 < K, rank20, -1)
    s5 = np.nan_to_num(scores[:, :K], neginf=-2.0)  # as index.evaluate pads a short list
    best_t, best_map = choose_threshold_max_map5(s5, rank5, is_new)
    source = "bundle"
    if threshold is None:
        threshold, source = best_t, "max_map5 on these queries"
    finals = [insert_new_whale([(w, s) for w, s, _ in r["ranked"][:K]], threshold, K) for r in scored]
    preds = [[w for w, _ in f] for f in finals]
    known = ~is_new
    cmc = np.array([((rank20[known] >= 0) & (rank20[known] < k)).mean() if known.any() else 0.0 for k in range(1, 21)])
    finite = s5[s5 > -2.0]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    pad = 0.02 * max(hi - lo, 0.05)
    grid = np.unique(np.concatenate([np.linspace(lo - pad, hi + pad, curve_points), [threshold, best_t]]))
    top1 = scores[:, 0]
    first_right = np.array([bool(row) and row[0] == t for row, t in zip(names, truths, strict=True)])
    return ModeStats(
        mode=mode,
        threshold=float(threshold),
        threshold_source=source,
        map5=map_at_k(preds, truths),
        top1=top1_accuracy(preds, truths),
        top1_known=float((rank20[known] == 0).mean()) if known.any() else 0.0,
        top5_known=float((rank5[known] >= 0).mean()) if known.any() else 0.0,
        best_threshold=float(best_t),
        best_map5=float(best_map),
        cmc=cmc,
        curve_thresholds=grid,
        curve_map5=map5_at_thresholds(s5, rank5, is_new, grid),
        confusion=_confusion(preds, truths),
        genuine=top1[first_right & np.isfinite(top1)],
        impostor=top1[~first_right & np.isfinite(top1)],
        worst=_worst(scored, preds, truths, np.nan_to_num(top1, neginf=-2.0), n_worst),
        counts=_counts(records, scored),
    )


def submission_stats(records: Sequence[dict], n_worst: int = 5) -> ModeStats:
    """The figures of a submission's final lists (no scores: no threshold curve, CMC to k = 5).

    Raises:
        ValueError: when no labelled photo is in the submission.
    """
    scored = [r for r in records if "labels" in r]
    if not scored:
        raise ValueError("no labelled photo is in the submission")
    truths = [r["truth"] for r in scored]
    preds = [r["labels"] for r in scored]
    for r in scored:  # the strips' candidates: the submitted identities, no scores
        r.setdefault("ranked", [[w, None, None] for w in r["labels"] if w != NEW_WHALE])
    known = np.array([t != NEW_WHALE for t in truths])
    rank = np.array([p.index(t) if t in p else -1 for p, t in zip(preds, truths, strict=True)])
    cmc = np.array([((rank[known] >= 0) & (rank[known] < k)).mean() if known.any() else 0.0 for k in range(1, K + 1)])
    ident_rank = np.array([_rank_of(t, [w for w in p if w != NEW_WHALE]) for p, t in zip(preds, truths, strict=True)])
    return ModeStats(
        mode="submission",
        threshold=None,
        threshold_source="the submission's lists",
        map5=map_at_k(preds, truths),
        top1=top1_accuracy(preds, truths),
        top1_known=float((ident_rank[known] == 0).mean()) if known.any() else 0.0,
        top5_known=float((ident_rank[known] >= 0).mean()) if known.any() else 0.0,
        best_threshold=None,
        best_map5=None,
        cmc=cmc,
        curve_thresholds=None,
        curve_map5=None,
        confusion=_confusion(preds, truths),
        genuine=None,
        impostor=None,
        worst=_worst(scored, preds, truths, np.zeros(len(scored)), n_worst),
        counts=_counts(records, scored),
    )
