"""Open-set evaluation of a gallery: MAP@5 with new_whale, and the choice of the new_whale threshold.

Each query is ranked against the gallery (top-k distinct identities); ``new_whale`` is inserted at
the first rank below the threshold; MAP@5 is Kaggle's. The threshold is chosen on the validation
queries by two rules: the one maximising MAP@5 (``max_map5``) and the one answering ``new_whale``
first for a target share of queries (``new_whale_share``, 0.276 on the Kaggle 2019 test set).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from index.build import build_gallery, embed_folder
from index.embedder import PhotoEmbedder
from index.gallery import Gallery, Hit
from index.labels import Split
from index.ranking import (
    DEFAULT_NEW_WHALE_SHARE,
    NEW_WHALE,
    choose_threshold_max_map5,
    choose_threshold_share,
    insert_new_whale,
    map5_at_thresholds,
    map_at_k,
    top1_accuracy,
)

K = 5


@dataclass
class EvalReport:
    """Validation figures. MAP@5 values are in ``[0, 1]``; thresholds are cosine similarities."""

    queries: int
    queries_known: int
    queries_new_whale: int
    gallery_identities: int
    top1_known: float
    top5_known: float
    threshold_max_map5: float
    map5_max_map5: float
    threshold_share: float
    map5_share: float
    new_whale_share_target: float
    threshold: float
    threshold_rule: str
    map5: float
    top1: float
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def ranked_scores(hits: Sequence[Sequence[Hit]], k: int = K) -> np.ndarray:
    """``(q, k) float64`` scores of each query's ranked identities, padded with ``-inf``."""
    out = np.full((len(hits), k), -np.inf)
    for i, row in enumerate(hits):
        for j, h in enumerate(row[:k]):
            out[i, j] = h.score
    return out


def evaluate_rankings(
    hits: Sequence[Sequence[Hit]],
    truths: Sequence[str],
    gallery_identities: int,
    new_whale_share: float = DEFAULT_NEW_WHALE_SHARE,
    rule: str = "max_map5",
    fixed_threshold: float | None = None,
) -> tuple[EvalReport, list[list[tuple[str, float]]]]:
    """Score ranked hits against truths and choose the new_whale threshold.

    Args:
        hits: each query's top-k identities (k >= 5), best first, new_whale not included.
        truths: each query's true whale id, or ``new_whale``.
        gallery_identities: size of the gallery (for the report).
        new_whale_share: target of the ``new_whale_share`` rule.
        rule: which rule's threshold becomes ``threshold`` and ``map5``.
        fixed_threshold: when given, use it instead of choosing one (``evaluate`` of a bundle).

    Returns:
        The report and each query's final top-5 ``(label, score)`` list with new_whale inserted.
    """
    truths = list(truths)
    scores = ranked_scores(hits)
    names = [[h.whale_id for h in row[:K]] for row in hits]
    is_new = np.array([t == NEW_WHALE for t in truths])
    truth_rank = np.array(
        [row.index(t) if (t != NEW_WHALE and t in row) else -1 for row, t in zip(names, truths, strict=True)]
    )
    t_max, map_max = choose_threshold_max_map5(np.nan_to_num(scores, neginf=-2.0), truth_rank, is_new)
    top1 = scores[:, 0] if len(scores) else np.zeros(0)
    t_share = choose_threshold_share(np.nan_to_num(top1, neginf=-2.0), new_whale_share) if len(top1) else 0.0
    map_share = float(map5_at_thresholds(np.nan_to_num(scores, neginf=-2.0), truth_rank, is_new, [t_share])[0])
    if fixed_threshold is not None:
        threshold, used_rule = float(fixed_threshold), "fixed"
    else:
        threshold, used_rule = (t_max, "max_map5") if rule == "max_map5" else (t_share, "new_whale_share")
    final = [insert_new_whale([(h.whale_id, h.score) for h in row], threshold, K) for row in hits]
    labels = [[w for w, _ in pred] for pred in final]
    known = ~is_new
    report = EvalReport(
        queries=len(truths),
        queries_known=int(known.sum()),
        queries_new_whale=int(is_new.sum()),
        gallery_identities=int(gallery_identities),
        top1_known=float((truth_rank[known] == 0).mean()) if known.any() else 0.0,
        top5_known=float((truth_rank[known] >= 0).mean()) if known.any() else 0.0,
        threshold_max_map5=float(t_max),
        map5_max_map5=float(map_max),
        threshold_share=float(t_share),
        map5_share=map_share,
        new_whale_share_target=float(new_whale_share),
        threshold=threshold,
        threshold_rule=used_rule,
        map5=float(map_at_k(labels, truths, K)) if truths else 0.0,
        top1=float(top1_accuracy(labels, truths)) if truths else 0.0,
    )
    return report, final


def evaluate_gallery(
    gallery: Gallery,
    query_embeddings: np.ndarray,
    truths: Sequence[str],
    new_whale_share: float = DEFAULT_NEW_WHALE_SHARE,
    rule: str = "max_map5",
    fixed_threshold: float | None = None,
):
    """Search every query (``(q, d) float32``) in the gallery, then :func:`evaluate_rankings`."""
    hits = gallery.search(query_embeddings, K) if len(query_embeddings) else []
    return evaluate_rankings(hits, truths, len(gallery), new_whale_share, rule, fixed_threshold)


def evaluate_embedder(
    embedder: PhotoEmbedder,
    images_dir: str,
    split: Split,
    flipped: bool,
    new_whale_share: float = DEFAULT_NEW_WHALE_SHARE,
    rule: str = "max_map5",
    fixed_threshold: float | None = None,
    progress: bool = True,
) -> tuple[EvalReport, list[tuple[str, str, list[tuple[str, float]]]]]:
    """Build the validation gallery from ``split.train``, rank ``split.queries()``, score MAP@5.

    Returns:
        The report, and ``(image, truth, top-5 with new_whale)`` per query.
    """
    with tempfile.TemporaryDirectory(prefix="whaleid-eval-") as tmp:
        dim = len(next(embedder.embed_many([(np.zeros((8, 8, 3), np.uint8), None)])).embedding)
        gallery = Gallery(tmp, dim, durable=False)
        build_gallery(
            gallery,
            embedder,
            images_dir,
            [(p.image, p.whale_id, p.box) for p in split.train],
            flipped=flipped,
            thumbnails=False,
            originals=False,
            progress=progress,
        )
        queries = split.queries()
        truth_of = {p.image: t for p, t in queries}
        names, embs = [], []
        for ep in embed_folder(
            embedder, images_dir, [(p.image, p.box) for p, _ in queries], desc="queries", progress=progress
        ):
            names.append(ep.image)
            embs.append(ep.embedding.embedding)
        truths = [truth_of[n] for n in names]
        report, final = evaluate_gallery(
            gallery,
            np.asarray(embs, np.float32).reshape(len(embs), dim),
            truths,
            new_whale_share,
            rule,
            fixed_threshold,
        )
        gallery.close()
    return report, [(n, t, f) for n, t, f in zip(names, truths, final, strict=True)]
