"""Attention blocks: 1-D multi-scale deformable attention (PDVC §2.1), CM2's text cross-attention (§1.3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.dense.sampling import deform_attn_1d


def direction_bias(heads: int, levels: int, points: int) -> Tensor:
    """Offset bias that fans the heads out in time: head m points along x of angle 2πm/M, point p at (p+1)×.

    The 2-D Deformable-DETR init keeps only its x component in 1-D (so some heads start at offset 0).
    """
    thetas = torch.arange(heads, dtype=torch.float32) * (2 * math.pi / heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    x = (grid / grid.abs().max(-1, keepdim=True)[0])[:, 0]
    bias = x.view(heads, 1, 1).repeat(1, levels, points)
    return bias * torch.arange(1, points + 1, dtype=torch.float32).view(1, 1, points)


def sampling_locations(reference: Tensor, offsets: Tensor, lengths: Tensor) -> Tensor:
    """Where each head samples, normalised to [0, 1] over each (padded) level.

    reference [N, Lq, L, 1] (points, already × valid ratio): t + offset / T_l (offsets in level steps);
    reference [N, Lq, L, 2] (centre, length): c + offset / P · length / 2 (offsets span the segment).
    offsets [N, Lq, M, L, P] → [N, Lq, M, L, P].
    """
    if reference.shape[-1] == 1:
        return (
            reference[:, :, None, :, None, 0] + offsets / lengths.to(offsets.dtype)[None, None, None, :, None]
        )
    if reference.shape[-1] == 2:
        points = offsets.shape[-1]
        return reference[:, :, None, :, None, 0] + offsets / points * reference[:, :, None, :, None, 1] * 0.5
    raise ValueError(f"reference must end in 1 (point) or 2 (segment), got {tuple(reference.shape)}")


class MSDeformAttn1d(nn.Module):
    """Each query attends to M heads × L levels × P points sampled around its reference on the memory."""

    def __init__(self, d_model: int, levels: int, heads: int, points: int):
        super().__init__()
        self.d_model, self.levels, self.heads, self.points = d_model, levels, heads, points
        self.sampling_offsets = nn.Linear(d_model, heads * levels * points)
        self.attention_weights = nn.Linear(d_model, heads * levels * points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(direction_bias(self.heads, self.levels, self.points).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference: Tensor,
        source: Tensor,
        lengths: Tensor,
        level_start: Tensor,
        pad_mask: Tensor | None = None,
    ) -> Tensor:
        """query [N, Lq, C], reference [N, Lq, L, 1|2], source [N, S, C], pad_mask [N, S] (True = padding)."""
        n, lq, _ = query.shape
        s = source.shape[1]
        value = self.value_proj(source)
        if pad_mask is not None:
            value = value.masked_fill(pad_mask[..., None], 0.0)
        value = value.view(n, s, self.heads, self.d_model // self.heads)
        offsets = self.sampling_offsets(query).view(n, lq, self.heads, self.levels, self.points)
        weights = self.attention_weights(query).view(n, lq, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(n, lq, self.heads, self.levels, self.points)
        locations = sampling_locations(reference, offsets, lengths)
        return self.output_proj(deform_attn_1d(value, lengths, level_start, locations, weights))


class TextCrossAttention(nn.Module):
    """CM2's MCA: event queries attend to the W retrieved-text tokens; bias-free q/k/v, out projection."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.q, self.k, self.v, self.proj):
            nn.init.xavier_uniform_(lin.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, text: Tensor) -> Tensor:
        """x [B, Q, C] queries, text [B, W, C] → [B, Q, C]."""
        b, q, c = x.shape
        w = text.shape[1]
        h = self.heads
        qh = self.q(x).view(b, q, h, c // h).transpose(1, 2)
        kh = self.k(text).view(b, w, h, c // h).transpose(1, 2)
        vh = self.v(text).view(b, w, h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(qh, kh, vh)
        return self.proj(out.transpose(1, 2).reshape(b, q, c))
