"""1-D segment geometry: (centre, length) ↔ (start, end), IoU and generalized IoU.

The model predicts normalised (centre, length) pairs; matching and losses compare them as intervals.
"""

from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-7  # guards 0/0 for degenerate (zero-length) pairs; far below any real segment length


def cl_to_se(x: Tensor) -> Tensor:
    c, l = x.unbind(-1)
    return torch.stack([c - 0.5 * l, c + 0.5 * l], dim=-1)


def se_to_cl(x: Tensor) -> Tensor:
    s, e = x.unbind(-1)
    return torch.stack([(s + e) / 2, e - s], dim=-1)


def segment_iou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of (start, end) segments a [N, 2] and b [M, 2] → (iou [N, M], union [N, M])."""
    len_a = (a[:, 1] - a[:, 0]).clamp(min=0)
    len_b = (b[:, 1] - b[:, 0]).clamp(min=0)
    inter = (torch.min(a[:, None, 1], b[None, :, 1]) - torch.max(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    union = len_a[:, None] + len_b[None, :] - inter
    return inter / union.clamp(min=_EPS), union


def generalized_segment_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise gIoU = IoU − (hull − union) / hull, in [−1, 1]; (start, end) segments."""
    iou, union = segment_iou(a, b)
    hull = (torch.max(a[:, None, 1], b[None, :, 1]) - torch.min(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    return iou - (hull - union) / hull.clamp(min=_EPS)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
