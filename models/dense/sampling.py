"""1-D multi-scale deformable sampling on top of `kernels.msda`.

The encoder/decoder attention is `kernels.msda.ms_deform_attn_1d` (the 2-D op on images of height 1: CPU
reference or CUDA kernel), re-exported here as `deform_attn_1d`. The caption head needs the sampled values
themselves, not their weighted sum: `sample_points_1d` returns them with the kernel's own convention
(pixel = t·T_l − 0.5, zero outside the sequence) via `grid_sample(padding_mode='zeros', align_corners=False)`;
the tests check that weighting and summing its output reproduces the kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.msda import ms_deform_attn_1d as deform_attn_1d

__all__ = ["deform_attn_1d", "sample_points_1d"]


def sample_points_1d(value: Tensor, lengths: Tensor, level_start: Tensor, locations: Tensor) -> Tensor:
    """Linear interpolation of value [N, S, M, D] at locations [N, Lq, M, L, P] → [N, Lq, M, L, P, D].

    Zero padding beyond the sequence (and a linear fade to zero in the half pixel at each end), as the kernel.
    """
    n, _, m, d = value.shape
    lq, p = locations.shape[1], locations.shape[4]
    per_level = []
    for lvl, (t_l, start) in enumerate(zip(lengths.tolist(), level_start.tolist())):
        v = value[:, start : start + t_l].permute(0, 2, 3, 1).reshape(n * m, d, 1, t_l)
        x = locations[:, :, :, lvl].permute(0, 2, 1, 3).reshape(n * m, lq, p)
        grid = torch.stack([2 * x - 1, torch.zeros_like(x)], dim=-1)
        s = F.grid_sample(
            v, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # [N·M, D, Lq, P]
        per_level.append(s.view(n, m, d, lq, p))
    out = torch.stack(per_level, dim=4)  # [N, M, D, Lq, L, P]
    return out.permute(0, 3, 1, 4, 5, 2).contiguous()
