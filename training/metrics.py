"""MAP@5 exactly as Kaggle scored the Humpback Whale Identification competition (torch-free).

For each image, at most ``k`` predictions count; the score is the precision at the rank of the
first correct label (1, 1/2, 1/3, ...), 0 when there is none; a label predicted twice counts once
(its second occurrence still takes a rank). ``new_whale`` is an ordinary label. The rule that puts
``new_whale`` into a ranked list lives in :mod:`index.ranking` and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

from index.ranking import NEW_WHALE, insert_new_whale

__all__ = ["NEW_WHALE", "insert_new_whale", "average_precision_at_k", "map_at_k", "top1_accuracy"]


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
