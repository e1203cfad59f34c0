"""The window encoder: T per-frame CLIP vectors of one window → one vector in the CLIP text space.

    x      = the window's frame vectors [B, T, D], L2-normalised (tuned CLIP image tower, `clip.zarr`)
    h      = Linear(D → width)(x) + temporal[t]                    (frame order is what motion is)
    h      = TransformerEncoder(h)  (pre-norm, `layers` blocks)    every frame sees every other frame
    out    = normalise(mean_t x + Linear(width → D)(LayerNorm(mean_t h)))

The output projection starts at zero, so the untrained encoder is exactly the frame mean (CM2's window
query): training starts from the "before" measurement and can only move away from it where the text loss
asks. The text side is the shared CLIP text tower, kept as tuned by `finetune_clip` (its vectors are the
`text.zarr` sentence vectors and the memory bank), so frames, windows, sentences and the bank stay in one space.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WindowEncoder(nn.Module):
    def __init__(self, dim: int, frames: int, width: int = 256, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        self.frames = frames
        self.inp = nn.Linear(dim, width)
        self.temporal = nn.Parameter(torch.zeros(frames, width))
        nn.init.normal_(self.temporal, std=0.02)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.logit_scale = nn.Parameter(torch.tensor(2.659260036932778))  # log(1 / 0.07), CLIP's start

    def forward(self, x: Tensor) -> Tensor:
        """x [B, T, D] frame vectors (any scale) → [B, D] unit window vectors."""
        if x.shape[1] != self.frames:
            raise ValueError(f"window encoder: built for {self.frames} frames per window, got {x.shape[1]}")
        x = F.normalize(x.float(), dim=-1)
        h = self.blocks(self.inp(x) + self.temporal)
        return F.normalize(x.mean(1) + self.out(self.norm(h.mean(1))), dim=-1)
