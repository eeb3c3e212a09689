"""MAP@5 and the new_whale rule on hand-worked cases (training.metrics is torch-free)."""

from __future__ import annotations

import numpy as np
import pytest

from index.ranking import (
    choose_threshold_max_map5,
    choose_threshold_share,
    map5_at_thresholds,
    top_k_distinct,
)
from training.metrics import NEW_WHALE, average_precision_at_k, insert_new_whale, map_at_k, top1_accuracy


@pytest.mark.parametrize(
    ("predicted", "truth", "expected"),
    [
        (["a", "b", "c", "d", "e"], "a", 1.0),  # hit at rank 1
        (["a", "b", "c", "d", "e"], "c", 1 / 3),  # hit at rank 3
        (["a", "b", "c", "d", "e"], "z", 0.0),  # no hit
        (["a", "b", "c", "d", "e", "z"], "z", 0.0),  # only 5 predictions count
        (["a", "a", "b"], "b", 1 / 3),  # a label predicted twice still takes a rank
        (["b", "b", "a"], "b", 1.0),  # ... and counts once: the second b adds nothing
        (["w_1", NEW_WHALE, "w_2"], NEW_WHALE, 0.5),  # new_whale is an ordinary label
        (["x", "y"], "y", 0.5),  # fewer than 5 predictions
        ([], "y", 0.0),
    ],
)
def test_average_precision_hand_cases(predicted, truth, expected):
    assert average_precision_at_k(predicted, truth) == pytest.approx(expected)


def test_map_is_the_mean():
    preds = [["a", "b"], ["a", "b", "c"], ["q"]]
    truths = ["a", "c", "z"]
    assert map_at_k(preds, truths) == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert top1_accuracy(preds, truths) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        map_at_k(preds, truths[:2])


def test_insert_new_whale_first_rank_below_threshold():
    ranked = [("a", 0.9), ("b", 0.7), ("c", 0.5), ("d", 0.4), ("e", 0.3)]
    assert [w for w, _ in insert_new_whale(ranked, 0.6)] == ["a", "b", NEW_WHALE, "c", "d"]
    assert insert_new_whale(ranked, 0.6)[2] == (NEW_WHALE, 0.6)
    assert [w for w, _ in insert_new_whale(ranked, 0.95)] == [NEW_WHALE, "a", "b", "c", "d"]
    # all at or above the threshold: new_whale would be rank 6 and is cut off
    assert [w for w, _ in insert_new_whale(ranked, 0.3)] == ["a", "b", "c", "d", "e"]
    # a short list gets new_whale at its end
    assert [w for w, _ in insert_new_whale([("a", 0.9)], 0.1)] == ["a", NEW_WHALE]


def test_top_k_distinct_keeps_first_occurrence_and_skips():
    ids = ["a", "b", "a", "f:flipped", "c", "b", "d"]
    scores = [0.9, 0.8, 0.7, 0.65, 0.6, 0.5, 0.4]
    out = top_k_distinct(ids, scores, 3, skip=lambda w: w.endswith(":flipped"))
    assert out == [("a", 0.9), ("b", 0.8), ("c", 0.6)]


def test_map5_at_thresholds_matches_brute_force():
    rng = np.random.default_rng(0)
    q, m = 40, 6
    scores = -np.sort(-rng.random((q, m)), axis=1)
    truth_rank = rng.integers(-1, m, q)
    truth_is_new = rng.random(q) < 0.3
    truth_rank[truth_is_new] = -1
    thresholds = np.array([-1.0, 0.2, 0.5, 0.8, 2.0])
    fast = map5_at_thresholds(scores, truth_rank, truth_is_new, thresholds)
    for t, got in zip(thresholds, fast, strict=True):
        preds, truths = [], []
        for i in range(q):
            ids = [f"id{j}" for j in range(m)]
            ranked = insert_new_whale(list(zip(ids, scores[i], strict=True)), t, 5)
            preds.append([w for w, _ in ranked])
            truths.append(NEW_WHALE if truth_is_new[i] else (f"id{truth_rank[i]}" if truth_rank[i] >= 0 else "zz"))
        assert got == pytest.approx(map_at_k(preds, truths))


def test_choose_threshold_by_hand():
    # Two known queries whose truth is at rank 1 with scores 0.9 and 0.8, and two new whales
    # whose best scores are 0.5 and 0.4. Any threshold in (0.5, 0.8] is perfect: MAP@5 = 1.
    scores = np.array([[0.9, 0.3], [0.8, 0.2], [0.5, 0.1], [0.4, 0.0]])
    truth_rank = np.array([0, 0, -1, -1])
    truth_is_new = np.array([False, False, True, True])
    t, best = choose_threshold_max_map5(scores, truth_rank, truth_is_new)
    assert best == pytest.approx(1.0)
    assert 0.5 < t <= 0.8
    # the share rule: half the queries answered new_whale -> the median of the top-1 scores
    assert choose_threshold_share(scores[:, 0], 0.5) == pytest.approx(0.65)
