"""CM2 cross-modal retrieval (§1.2-1.3): window-mean frame features → cosine top-k in the text memory bank.

Each video's raw CLIP frame features [T, D] (the same embedding space as the bank's CLIP text vectors) are
cut into W temporal windows; each window's mean queries the bank and the k nearest sentence vectors are
averaged into one retrieved vector per window → [B, W, D_bank]. Retrieval is not differentiable.

Windows are proportional: window w covers frames [⌊wT/W⌋, ⌊(w+1)T/W⌋), so every frame is used (CM2 uses
⌊T/W⌋ frames per window and drops the T mod W last frames). When T < W, a window with no frame of its own
takes the single frame under its start — i.e. frames are repeated — so there are always W windows and no
mean is ever taken over zero frames (CM2 produces NaN there).

In training the video's own sentences are excluded by group id (one group per bank video); CM2 instead drops
the single best hit, which does not remove its other own sentences.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kernels.topk import cosine_topk
from vidmem.bank import TextBank
from vidmem.common import UserError


def window_edges(lengths: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """lengths [B] → start, end [B, W] frame indices (end exclusive, at least one frame per window)."""
    w = torch.arange(window, device=lengths.device)[None, :]
    t = lengths.to(torch.int64)[:, None]
    start = torch.div(w * t, window, rounding_mode="floor")
    end = torch.maximum(torch.div((w + 1) * t, window, rounding_mode="floor"), start + 1)
    return start, end


def window_means(feats: Tensor, lengths: Tensor, window: int) -> Tensor:
    """feats [B, T, D] (any padding), lengths [B] ≥ 1 → [B, W, D] float32 means over each window's frames."""
    if bool((lengths < 1).any()):
        raise ValueError("window_means: every video needs at least one frame")
    start, end = window_edges(lengths, window)
    t = torch.arange(feats.shape[1], device=feats.device)[None, None, :]
    member = ((t >= start[..., None]) & (t < end[..., None])).to(torch.float32)  # [B, W, T]
    member = member / member.sum(-1, keepdim=True)
    return member @ feats.to(torch.float32)


@torch.no_grad()
def retrieve(
    feats: Tensor, lengths: Tensor, bank: TextBank, window: int, k: int, exclude_groups: Tensor | None = None
) -> Tensor:
    """Mean of the k nearest bank vectors for every window → [B, W, D_bank].

    exclude_groups [B]: in training, the group id of each video (−1: nothing to exclude); None in evaluation.
    """
    if feats.shape[-1] != bank.dim:
        raise UserError(
            f"memory bank vectors have {bank.dim} dims but the frame features {feats.shape[-1]}: "
            "both must come from the same CLIP model"
        )
    b = feats.shape[0]
    queries = window_means(feats, lengths, window).reshape(b * window, -1)
    k_eff = min(k, len(bank) - (bank.largest_group if exclude_groups is not None else 0))
    if k_eff < 1:
        raise UserError(
            f"memory bank of {len(bank)} sentences is too small to retrieve from once a video's own "
            f"{bank.largest_group} are excluded"
        )
    if exclude_groups is None:
        _, idx = cosine_topk(queries, bank.vectors, k_eff)
    else:
        qg = exclude_groups.to(queries.device).repeat_interleave(window)
        _, idx = cosine_topk(queries, bank.vectors, k_eff, query_group=qg, bank_group=bank.groups)
    return bank.vectors[idx].mean(1).view(b, window, -1)


class ProjectionLayer(nn.Module):
    """LayerNorm → Dropout → Linear (→ ReLU)."""

    def __init__(self, cin: int, cout: int, dropout: float, relu: bool):
        super().__init__()
        self.norm = nn.LayerNorm(cin)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(cin, cout)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(self.dropout(self.norm(x)))
        return torch.relu(x) if self.relu else x


class TextProjection(nn.Module):
    """CM2's 2-layer down-projection of the retrieved CLIP text vectors to the transformer width."""

    def __init__(self, bank_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.layers = nn.Sequential(
            ProjectionLayer(bank_dim, hidden, dropout, relu=True),
            ProjectionLayer(hidden, hidden, dropout, relu=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
