"""Hungarian matching of event queries: optimal against brute force, costs as PDVC defines them."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from models.dense.matcher import HungarianMatcher, focal_class_cost


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_cost_entry_matches_hand_formula():
    m = HungarianMatcher(cost_class=2, cost_giou=4, cost_bbox=0, alpha=0.25, gamma=2)
    logits = torch.tensor([0.3])
    box = torch.tensor([[0.4, 0.4]])  # [0.2, 0.6]
    gt = torch.tensor([[0.7, 0.4]])  # [0.5, 0.9]
    p = _sigmoid(0.3)
    focal = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8) - 0.75 * p**2 * -math.log(1 - p + 1e-8)
    giou = 0.1 / 0.7 - (0.7 - 0.7) / 0.7  # intersection 0.1, union 0.7, hull 0.7
    assert m.cost_matrix(logits, box, gt).item() == pytest.approx(2 * focal - 4 * giou, abs=1e-6)
    assert focal_class_cost(logits, 0.25, 2).item() == pytest.approx(focal, abs=1e-7)


def test_l1_cost_is_added_when_weighted():
    m0 = HungarianMatcher(cost_bbox=0)
    m5 = HungarianMatcher(cost_bbox=5)
    logits, box, gt = torch.tensor([0.0]), torch.tensor([[0.4, 0.4]]), torch.tensor([[0.7, 0.2]])
    diff = m5.cost_matrix(logits, box, gt) - m0.cost_matrix(logits, box, gt)
    assert diff.item() == pytest.approx(5 * (0.3 + 0.2), abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_matching_is_the_minimal_cost_assignment(seed):
    g = torch.Generator().manual_seed(seed)
    q, n = 6, 1 + seed % 4
    logits = torch.randn(1, q, generator=g)
    boxes = torch.stack(
        [torch.rand(1, q, generator=g) * 0.8 + 0.1, torch.rand(1, q, generator=g) * 0.5 + 0.05], -1
    )
    target = torch.stack(
        [torch.rand(n, generator=g) * 0.8 + 0.1, torch.rand(n, generator=g) * 0.5 + 0.05], -1
    )
    m = HungarianMatcher()
    ((rows, cols),) = m(logits, boxes, [target])
    cost = m.cost_matrix(logits[0], boxes[0], target)
    got = cost[rows, cols].sum().item()
    brute = min(
        sum(cost[perm[j], j].item() for j in range(n)) for perm in itertools.permutations(range(q), n)
    )
    assert len(rows) == n and sorted(cols.tolist()) == list(range(n))
    assert got == pytest.approx(brute, abs=1e-5)


def test_batch_matches_per_video_and_handles_videos_without_events():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, generator=g)
    boxes = torch.rand(3, 5, 2, generator=g) * 0.4 + 0.1
    targets = [torch.tensor([[0.3, 0.2], [0.7, 0.3]]), torch.zeros(0, 2), torch.tensor([[0.5, 0.5]])]
    m = HungarianMatcher()
    out = m(logits, boxes, targets)
    assert out[1][0].numel() == 0 and out[1][1].numel() == 0
    for b in (0, 2):
        alone = m(logits[b : b + 1], boxes[b : b + 1], [targets[b]])[0]
        assert torch.equal(out[b][0], alone[0]) and torch.equal(out[b][1], alone[1])
