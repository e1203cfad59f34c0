"""Hungarian matching of event queries to ground-truth events (PDVC §2.3), one video at a time.

cost = cost_class · focal class cost + cost_giou · (−gIoU) + cost_bbox · L1, minimised by scipy's
`linear_sum_assignment`; each ground-truth event gets one query (when there are enough queries).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from models.dense.config import DenseConfig
from models.dense.segments import cl_to_se, generalized_segment_iou


def focal_class_cost(logits: Tensor, alpha: float, gamma: float) -> Tensor:
    """Cost of calling each query an event: α(1−p)^γ(−log p) − (1−α)p^γ(−log(1−p))."""
    p = logits.sigmoid()
    pos = alpha * (1 - p) ** gamma * -(p + 1e-8).log()
    neg = (1 - alpha) * p**gamma * -(1 - p + 1e-8).log()
    return pos - neg


class HungarianMatcher:
    def __init__(
        self,
        cost_class: float = 2.0,
        cost_giou: float = 4.0,
        cost_bbox: float = 0.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ):
        self.cost_class, self.cost_giou, self.cost_bbox = cost_class, cost_giou, cost_bbox
        self.alpha, self.gamma = alpha, gamma

    @classmethod
    def from_config(cls, cfg: DenseConfig) -> HungarianMatcher:
        return cls(cfg.cost_class, cfg.cost_giou, cfg.cost_bbox, cfg.cost_alpha, cfg.cost_gamma)

    def cost_matrix(self, logits: Tensor, boxes: Tensor, target: Tensor) -> Tensor:
        """logits [Q], boxes [Q, 2] and target [n, 2] in (centre, length) → [Q, n]."""
        cost = self.cost_class * focal_class_cost(logits, self.alpha, self.gamma)[:, None]
        cost = cost - self.cost_giou * generalized_segment_iou(cl_to_se(boxes), cl_to_se(target))
        if self.cost_bbox:
            cost = cost + self.cost_bbox * torch.cdist(boxes, target, p=1)
        return cost

    @torch.no_grad()
    def __call__(
        self, logits: Tensor, boxes: Tensor, targets: Sequence[Tensor]
    ) -> list[tuple[Tensor, Tensor]]:
        """logits [B, Q], boxes [B, Q, 2], targets per video [n_b, 2] → per video (query idx, target idx)."""
        out = []
        for b, target in enumerate(targets):
            if len(target) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                out.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(logits[b].float(), boxes[b].float(), target.to(boxes.device).float())
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out
