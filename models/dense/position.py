"""Position embeddings: normalised sine over the valid positions, plus PDVC's duration embedding.

The video position code is half sine (hidden/2) and half a learned projection of a "thermometer" vector
of the video's duration (slot i on when duration > i · unit). PDVC fixes unit = 1 s and 256 slots; we keep
the design with hidden/2 slots and a configurable unit (`DenseConfig.duration_unit_s`) so that short
SynthVid clips do not all share one or two lit slots and long videos do not saturate at once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sine_embedding(valid: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """valid [B, L] bool → [B, L, dim]: positions 1..n of the valid prefix scaled to (0, 2π), sin/cos pairs.

    Padding does not change the code of valid positions (the scale is the count of valid positions).
    """
    x = valid.to(torch.float32).cumsum(1)
    x = (x - 0.5) / (x[:, -1:] + 1e-6) * (2 * math.pi)
    i = torch.arange(dim, dtype=torch.float32, device=valid.device)
    freq = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / dim)
    pos = x[:, :, None] / freq
    return torch.stack([pos[:, :, 0::2].sin(), pos[:, :, 1::2].cos()], dim=3).flatten(2)


class DurationEmbedding(nn.Module):
    def __init__(self, slots: int, unit_s: float):
        super().__init__()
        self.slots = slots
        self.unit_s = unit_s
        self.proj = nn.Linear(slots, slots)

    def forward(self, durations: Tensor) -> Tensor:
        """durations [B] seconds → [B, slots]."""
        lit = torch.floor(durations.to(torch.float32) / self.unit_s).clamp(0, self.slots)
        idx = torch.arange(self.slots, device=durations.device, dtype=torch.float32)
        return self.proj((idx[None, :] < lit[:, None]).to(self.proj.weight.dtype))


class VideoPositionEmbedding(nn.Module):
    """[sine (hidden/2) ; duration (hidden/2)] per position."""

    def __init__(self, hidden: int, duration_unit_s: float):
        super().__init__()
        self.sine_dim = hidden // 2
        self.duration = DurationEmbedding(hidden - self.sine_dim, duration_unit_s)

    def forward(self, valid: Tensor, durations: Tensor) -> Tensor:
        pos = sine_embedding(valid, self.sine_dim)
        dur = self.duration(durations)[:, None, :].expand(-1, valid.shape[1], -1)
        return torch.cat([pos, dur], dim=-1)
