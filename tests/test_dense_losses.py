"""Each loss term of PDVC/CM2 against a hand computation on a tiny case."""

from __future__ import annotations

import math

import pytest
import torch

from models.dense.losses import (
    caption_nll,
    caption_targets,
    count_bin_rates,
    counter_loss,
    giou_loss,
    l1_loss,
    sigmoid_focal_loss,
)
from models.dense.segments import cl_to_se, generalized_segment_iou, se_to_cl, segment_iou


def _focal_term(x: float, t: int, alpha=0.25, gamma=2.0) -> float:
    p = 1 / (1 + math.exp(-x))
    ce = -math.log(p) if t else -math.log(1 - p)
    p_t = p if t else 1 - p
    a_t = alpha if t else 1 - alpha
    return a_t * (1 - p_t) ** gamma * ce


def test_focal_loss_sums_over_queries_and_divides_by_gt_count():
    logits = torch.tensor([[0.0, 2.0, -1.0], [0.5, -3.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    want = (
        sum(_focal_term(x, int(t)) for x, t in zip(logits.flatten().tolist(), targets.flatten().tolist())) / 2
    )
    assert sigmoid_focal_loss(logits, targets, num_boxes=2).item() == pytest.approx(want, rel=1e-6)
    assert _focal_term(0.0, 1) == pytest.approx(0.25 * 0.25 * math.log(2))


def test_segment_geometry():
    a = torch.tensor([[0.2, 0.6], [0.1, 0.2]])
    b = torch.tensor([[0.5, 0.9]])
    iou, union = segment_iou(a, b)
    assert iou[:, 0].tolist() == pytest.approx([0.1 / 0.7, 0.0])
    assert union[:, 0].tolist() == pytest.approx([0.7, 0.5])
    giou = generalized_segment_iou(a, b)[:, 0]
    assert giou.tolist() == pytest.approx([1 / 7, -0.3 / 0.8])  # disjoint: 0 − (hull 0.8 − union 0.5) / 0.8
    assert torch.allclose(cl_to_se(se_to_cl(a)), a)
    assert generalized_segment_iou(a, a).diagonal().tolist() == pytest.approx([1.0, 1.0])


def test_giou_and_l1_losses():
    pred = se_to_cl(torch.tensor([[0.2, 0.6], [0.1, 0.2]]))
    tgt = se_to_cl(torch.tensor([[0.5, 0.9], [0.5, 0.9]]))
    want = ((1 - 1 / 7) + (1 + 0.3 / 0.8)) / 2
    assert giou_loss(pred, tgt, num_boxes=2).item() == pytest.approx(want, rel=1e-6)
    assert l1_loss(pred, tgt, num_boxes=2).item() == pytest.approx((pred - tgt).abs().sum().item() / 2)
    assert giou_loss(pred[:0], tgt[:0], num_boxes=1).item() == 0.0


def test_counter_loss_near_miss_weighting():
    rates = torch.tensor([0.1, 0.5, 0.3, 0.1])  # E = 3
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.5, 2.0]])
    counts = torch.tensor([1, 7])  # 7 events → the last bin (E)

    def bce(x, t):
        p = 1 / (1 + math.exp(-x))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    want = 0.0
    for row, n in zip(logits.tolist(), [1, 3]):
        per_bin = []
        for k, x in enumerate(row):
            t = 1.0 if k == n else 0.0
            near = math.exp(-((k - n) ** 2) / 8)  # sigma 2
            coef = 1.0 if t else (1 - near)
            per_bin.append(bce(x, t) * (1 - rates[k].item()) * coef)
        want += sum(per_bin) / 4
    want /= 2
    got = counter_loss(logits, counts, rates, sigma=2.0, beta=1.0)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # the near miss (k = n ± 1) costs less than the far miss for the same logit
    near = counter_loss(torch.tensor([[0.0, 0.0, 3.0, 0.0]]), torch.tensor([1]), torch.zeros(4))
    far = counter_loss(torch.tensor([[0.0, 0.0, 0.0, 3.0]]), torch.tensor([1]), torch.zeros(4))
    assert near.item() < far.item()


def test_count_bin_rates_clip_to_last_bin():
    rates = count_bin_rates([1, 2, 2, 5, 9], max_eseq_length=3)
    assert rates.tolist() == pytest.approx([0.0, 0.2, 0.4, 0.4])


def test_caption_nll_per_sentence_mean_of_word_and_end_tokens():
    tokens = torch.tensor([[0, 3, 2, 0, 0], [0, 1, 0, 0, 0]])  # "w3 w2 <end>", "w1 <end>"
    n_words = torch.tensor([2, 1])
    g = torch.Generator().manual_seed(0)
    logprobs = torch.log_softmax(torch.randn(2, 4, 4, generator=g), -1)
    targets, mask = caption_targets(tokens, n_words)
    assert mask.tolist() == [[True, True, True, False], [True, True, False, False]]
    got = caption_nll(logprobs, targets, mask)
    want0 = -(logprobs[0, 0, 3] + logprobs[0, 1, 2] + logprobs[0, 2, 0]) / 3
    want1 = -(logprobs[1, 0, 1] + logprobs[1, 1, 0]) / 2
    assert got.tolist() == pytest.approx([want0.item(), want1.item()], rel=1e-5)
