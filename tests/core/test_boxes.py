from __future__ import annotations

import numpy as np
import pytest

from core.boxes import (
    TTABox,
    TTAPolicy,
    as_box,
    box_iou,
    clip_box,
    expand_box,
    full_frame,
    shift_box,
    tta_boxes,
)


def test_expand_and_shift_by_hand():
    b = (10, 20, 30, 60)  # 20 wide, 40 high, centre (20, 40)
    np.testing.assert_allclose(expand_box(b, 1.5), [5, 10, 35, 70])
    np.testing.assert_allclose(expand_box(b, 0.5), [15, 30, 25, 50])
    np.testing.assert_allclose(shift_box(b, 0.5, -0.25), [20, 10, 40, 50])


def test_clip_keeps_box_inside_and_at_least_one_pixel():
    np.testing.assert_allclose(clip_box((-5, -5, 50, 8), 40, 10), [0, 0, 40, 8])
    # wholly outside on the right -> a 1 px box at the edge
    np.testing.assert_allclose(clip_box((50, 2, 60, 4), 40, 10), [39, 2, 40, 4])
    # 940x2 strip: a zero-height box becomes 1 px high
    b = clip_box((100, 1, 200, 1), 940, 2)
    assert b[3] - b[1] == pytest.approx(1.0) and b[1] >= 0 and b[3] <= 2
    np.testing.assert_allclose(clip_box((0, 0, 5, 5), 1, 1), [0, 0, 1, 1])


def test_as_box_rejects_bad_boxes():
    with pytest.raises(ValueError):
        as_box((0, 0, 0, 5))
    with pytest.raises(ValueError):
        as_box((0, 0, float("nan"), 5))
    with pytest.raises(ValueError):
        as_box((1, 2, 3))


def test_iou_by_hand():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    # identical 1; half overlap 50 / 150 = 1/3; disjoint 0
    np.testing.assert_allclose(box_iou(a, b), [1.0, 1 / 3, 0.0])


def test_detector_policy_gives_five_boxes_in_order():
    policy = TTAPolicy.default("detector")
    boxes = tta_boxes((40, 20, 60, 40), 100, 80, policy)
    assert boxes.shape == (5, 4) and boxes.dtype == np.float32
    np.testing.assert_allclose(boxes[0], [40, 20, 60, 40])
    np.testing.assert_allclose(boxes[1], [39, 19, 61, 41])  # x1.1: 22 x 22 about (50, 30)
    np.testing.assert_allclose(boxes[2], [38, 18, 62, 42])  # x1.2
    np.testing.assert_allclose(boxes[3], [39, 17.9, 61, 39.9], atol=1e-4)  # x1.1, up 5 % of 22
    np.testing.assert_allclose(boxes[4], full_frame(100, 80))


def test_fixed_crops_without_a_box():
    policy = TTAPolicy.default("full_frame")
    boxes = tta_boxes(None, 100, 50, policy)
    assert boxes.shape == (5, 4)
    np.testing.assert_allclose(boxes[0], [0, 0, 100, 50])
    np.testing.assert_allclose(boxes[1], [5, 2.5, 95, 47.5])
    np.testing.assert_allclose(boxes[2], [10, 5, 90, 45])
    assert policy.base == "full_frame"


def test_policy_rejects_unknown_keys():
    with pytest.raises(ValueError):
        TTABox.model_validate({"kind": "box", "scael": 1.1})
