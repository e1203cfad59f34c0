"""MMN's 2-D temporal proposal map (`MCG-NJU/MMN: mmn/modeling/mmn/feat2d.py, proposal_conv.py`).

Cell (i, j), i ≤ j, is the moment [i·dur/N, (j+1)·dur/N]; SparseMaxPool fills only the cells its pooling
counts reach (dense for short moments, strided for long ones) and `mask2d` marks them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sparse_cells(n: int, pooling_counts: tuple[int, ...]) -> tuple[torch.Tensor, list[tuple[range, range]]]:
    """mask2d [N, N] bool and, per pooling step, the (i, j) cells it writes."""
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[range(n), range(n)] = True
    stride, offset, cells = 1, 0, []
    for c in pooling_counts:
        for _ in range(c):
            offset += stride
            i, j = range(0, n - offset, stride), range(offset, n, stride)
            mask[list(i), list(j)] = True
            cells.append((i, j))
        stride *= 2
    return mask, cells


class SparseMaxPool(nn.Module):
    """[B, C, N] clip features → [B, C, N, N] map: cell (i, j) is the max over clips i..j (where valid)."""

    def __init__(self, n: int, pooling_counts: tuple[int, ...]):
        super().__init__()
        mask, self.cells = sparse_cells(n, pooling_counts)
        self.register_buffer("mask2d", mask, persistent=False)
        poolers: list[nn.Module] = [nn.MaxPool1d(2, 1) for _ in range(pooling_counts[0])]
        for c in pooling_counts[1:]:
            poolers += [nn.MaxPool1d(3, 2)] + [nn.MaxPool1d(2, 1) for _ in range(c - 1)]
        self.poolers = nn.ModuleList(poolers)
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        out = x.new_zeros(b, c, n, n)
        out[:, :, range(n), range(n)] = x
        for pool, (i, j) in zip(self.poolers, self.cells):
            if len(i) == 0:
                break
            x = pool(x)
            out[:, :, list(i), list(j)] = x[..., : len(i)]
        return out


def mask_weight(mask2d: torch.Tensor, kernel: int, padding: int) -> torch.Tensor:
    """1 / (valid cells under the kernel) at each cell, 0 where none: MMN's masked re-weighting."""
    w = F.conv2d(mask2d[None, None].float(), torch.ones(1, 1, kernel, kernel, device=mask2d.device),
                 padding=padding)[0, 0]
    return torch.where(w > 0, 1 / w.clamp(min=1), torch.zeros_like(w))


class ProposalConv(nn.Module):
    """Stacked Conv2d + BN + ReLU over the map with masked re-weighting, then the two 1×1 heads."""

    def __init__(self, dim: int, hidden: int, out: int, kernel: int, layers: int, mask2d: torch.Tensor):
        super().__init__()
        pad = (kernel - 1) // 2
        self.convs = nn.ModuleList(nn.Conv2d(dim if i == 0 else hidden, hidden, kernel, padding=pad)
                                   for i in range(layers))
        self.bns = nn.ModuleList(nn.BatchNorm2d(hidden) for _ in range(layers))
        self.register_buffer("mask2d", mask2d, persistent=False)
        self.register_buffer("weight", mask_weight(mask2d, kernel, pad) * (kernel * kernel), persistent=False)
        self.con_head = nn.Conv2d(hidden, out, 1)
        self.iou_head = nn.Conv2d(hidden, out, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.mask2d.float()
        for conv, bn in zip(self.convs, self.bns):
            x = torch.relu(bn(conv(x * m) * self.weight)) * m
        return self.con_head(x), self.iou_head(x)
