"""metrics/grounding.py against hand-worked values (MMN's evaluation semantics)."""
from __future__ import annotations

import numpy as np
import pytest

from metrics.grounding import evaluate_grounding, iou, nms


def test_iou_is_intersection_over_hull():
    # [0,4] vs [2,6]: inter 2, hull 6 → 1/3; [0,2] vs [3,5]: disjoint → 0; identical → 1
    assert iou(np.array([[0, 4], [0, 2], [3, 5]]), (2, 6)) == pytest.approx([1 / 3, 0.0, 0.5])
    assert iou(np.array([[1, 3]]), (1, 3))[0] == 1.0


def test_nms_drops_only_strictly_above_threshold():
    w = np.array([[0, 4], [0, 2], [1, 4], [6, 8]], dtype=float)
    s = np.array([0.9, 0.8, 0.7, 0.6])
    # [0,2] vs [0,4]: IoU 0.5 (not > 0.5: kept); [1,4] vs [0,4]: 0.75 (dropped); [6,8]: 0 (kept)
    kept, sc = nms(w, s, 0.5)
    assert kept.tolist() == [[0, 4], [0, 2], [6, 8]] and sc.tolist() == [0.9, 0.8, 0.6]
    kept, _ = nms(w, s, 0.49)                                    # now 0.5 > 0.49: [0,2] dropped too
    assert kept.tolist() == [[0, 4], [6, 8]]
    kept, _ = nms(w[::-1], s[::-1], 0.5, top=2)                 # ranked by score whatever the input order
    assert kept.tolist() == [[0, 4], [0, 2]]


def test_recall_and_miou_hand_worked():
    refs = {("a", 0): (0.0, 4.0), ("a", 1): (4.0, 8.0), ("b", 0): (0.0, 10.0)}
    preds = [
        # a/0: top-1 [0,4] IoU 1 → hit at every θ
        {"vid": "a", "query_idx": 0, "query": "x", "pred_relevant_windows": [[0, 4, 0.9], [5, 6, 0.1]]},
        # a/1: top-1 [0,2] IoU 0; second [4,6] IoU 0.5 (≥ 0.5: a hit for R@5 at 0.3 and 0.5, not 0.7)
        {"vid": "a", "query_idx": 1, "query": "y", "pred_relevant_windows": [[0, 2, 0.9], [4, 6, 0.8]]},
        # b/0: no prediction → a miss, IoU 0
    ]
    out = evaluate_grounding(preds, refs, (1, 5), (0.3, 0.5, 0.7))
    assert out["R@1,IoU@0.3"] == pytest.approx(1 / 3)
    assert out["R@1,IoU@0.7"] == pytest.approx(1 / 3)
    assert out["R@5,IoU@0.3"] == pytest.approx(2 / 3)
    assert out["R@5,IoU@0.5"] == pytest.approx(2 / 3)
    assert out["R@5,IoU@0.7"] == pytest.approx(1 / 3)
    assert out["mIoU"] == pytest.approx((1 + 0 + 0) / 3)
    assert out["n_queries"] == 3


def test_threshold_is_inclusive_and_from_params():
    refs = {("v", 0): (0.0, 10.0)}
    preds = [{"vid": "v", "query_idx": 0, "query": "q", "pred_relevant_windows": [[0, 3, 1.0]]}]  # IoU 0.3
    out = evaluate_grounding(preds, refs, (1,), (0.1, 0.3, 0.5))
    assert out["R@1,IoU@0.1"] == 1.0 and out["R@1,IoU@0.3"] == 1.0 and out["R@1,IoU@0.5"] == 0.0
    assert out["mIoU"] == pytest.approx(0.3)
