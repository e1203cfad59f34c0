"""MRNet's maskable retention (`xian-sh/MRNet: ret/modeling/ret_model/ret_model.py`), in our own code.

The joint sequence is [query tokens ; N video clips]. The mask multiplies the scaled logits QKᵀ/√d_k and is all
ones except the video→video block, which is D (decay), S (learned sparse mask), D⊙S or ones (`mask_mode`
ret | sparse | both | no). D = γ^|n−m| with the diagonal counted twice (the seed's D + Dᵀ). Query tokens carry
no positional embedding, so the encoder is permutation-equivariant over a video's queries: their order can not
leak the answer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def decay_matrix(n: int, gamma: float | torch.Tensor) -> torch.Tensor:
    """D + Dᵀ of the causal decay D[n,m] = γ^(n−m) (n ≥ m): entry γ^|n−m|, diagonal 2. `gamma` may be a
    tensor of per-head decays [H] → [H, n, n]."""
    idx = torch.arange(n, dtype=torch.float64)
    dist = (idx[:, None] - idx[None, :])
    g = torch.as_tensor(gamma, dtype=torch.float64)
    lower = torch.where(dist >= 0, g.reshape(-1, 1, 1) ** dist.clamp(min=0), torch.zeros(()))
    d = lower + lower.transpose(-1, -2)
    return (d[0] if g.dim() == 0 else d).float()


def head_decays(heads: int) -> torch.Tensor:
    """RetNet's multi-scale decay γ_h = 1 − 2^(−5−h)."""
    return 1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float64))


class SparseMask(nn.Module):
    """A learnable N×N sigmoid mask (MRNet's nn.Embedding(N·N, 1)); the diagonal is forced to 1."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.logits = nn.Embedding(n * n, 1)

    def forward(self) -> torch.Tensor:
        s = torch.sigmoid(self.logits.weight.view(self.n, self.n))
        eye = torch.eye(self.n, dtype=torch.bool, device=s.device)
        return torch.where(eye, torch.ones_like(s), s)

    def sparsity(self) -> torch.Tensor:
        """Mean |S| off the diagonal (the L1 sparsity loss before its weight)."""
        s = self()
        off = ~torch.eye(self.n, dtype=torch.bool, device=s.device)
        return s[off].abs().mean()


def xpos(x: torch.Tensor, scale_base: float, downscale: bool) -> torch.Tensor:
    """xPos (torchscale's rotary with a per-frequency exponential scale) over the last dim of x [..., T, d];
    K is downscaled (ζ^−n) so QKᵀ depends on n − m."""
    t, d = x.shape[-2], x.shape[-1]
    half = d // 2
    pos = torch.arange(t, dtype=torch.float32, device=x.device)
    scale = (torch.arange(0, d, 2, dtype=torch.float32, device=x.device) + 0.4 * d) / (1.4 * d)
    scale = scale[None, :] ** (pos[:, None] / scale_base)          # [T, d/2]
    if downscale:
        scale = 1 / scale
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, dtype=torch.float32, device=x.device) / half))
    ang = pos[:, None] * inv_freq[None, :]
    sin, cos = torch.sin(ang) * scale, torch.cos(ang) * scale
    x1, x2 = x[..., 0:2 * half:2], x[..., 1:2 * half:2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return torch.cat((out, x[..., 2 * half:]), dim=-1) if d % 2 else out


class MaskableRetention(nn.Module):
    """Multi-head attention over [queries ; clips] whose video→video logits are multiplied by a mask."""

    def __init__(self, dim: int, heads: int, n_clips: int, mask_mode: str = "both", softmax: bool = True,
                 att_mode: str = "all", gamma: float = 0.98, per_head_decay: bool = False, use_xpos: bool = True,
                 xpos_scale_base: float = 512.0):
        super().__init__()
        self.dim, self.heads, self.n = dim, heads, n_clips
        self.mask_mode, self.softmax, self.att_mode = mask_mode, softmax, att_mode
        self.use_xpos, self.xpos_scale_base = use_xpos, xpos_scale_base
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        decay = decay_matrix(n_clips, head_decays(heads) if per_head_decay else gamma)
        self.register_buffer("decay", decay if decay.dim() == 3 else decay[None], persistent=False)  # [H|1,N,N]
        self.sparse = SparseMask(n_clips) if mask_mode in ("sparse", "both") else None

    def video_mask(self) -> torch.Tensor:
        """The video→video block of the mask, [H|1, N, N]."""
        m = torch.ones_like(self.decay[:1])
        if self.mask_mode in ("ret", "both"):
            m = m * self.decay
        if self.sparse is not None:
            m = m * self.sparse()[None]
        return m

    def forward(self, x: torch.Tensor, n_query: int, query_valid: torch.Tensor) -> torch.Tensor:
        """x [B, Q+N, dim] (Q query tokens first), query_valid [B, Q] bool → [B, Q+N, dim]."""
        b, L, _ = x.shape
        h, dk = self.heads, self.dim // self.heads
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.use_xpos:  # over the full vector of the video tokens only (MRNet)
            q = torch.cat((q[:, :n_query], xpos(q[:, n_query:], self.xpos_scale_base, False)), 1)
            k = torch.cat((k[:, :n_query], xpos(k[:, n_query:], self.xpos_scale_base, True)), 1)
        split = lambda t: t.view(b, L, h, dk).transpose(1, 2)          # noqa: E731  [B,H,L,dk]
        q, k, v = split(q), split(k), split(v)
        logits = q @ k.transpose(-1, -2) / math.sqrt(dk)              # [B,H,L,L]
        mask = torch.ones(h, L, L, device=x.device, dtype=x.dtype)
        mask = mask.clone()
        mask[:, n_query:, n_query:] = self.video_mask().expand(h, -1, -1)
        logits = logits * mask
        keep = torch.ones(b, L, L, dtype=torch.bool, device=x.device)  # which keys a row may read
        keep[:, :, :n_query] = query_valid[:, None, :]
        if self.att_mode == "v":                                       # video reads video only
            keep[:, n_query:, :n_query] = False
        keep = keep[:, None]
        if self.softmax:
            attn = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
        else:                                                          # retention: masked scores times V
            attn = logits.masked_fill(~keep, 0.0)
        out = (attn @ v).transpose(1, 2).reshape(b, L, self.dim)
        if self.att_mode == "v":                                       # queries: just their value projection
            out = torch.cat((v.transpose(1, 2).reshape(b, L, self.dim)[:, :n_query], out[:, n_query:]), 1)
        return self.o(out)

    def sparsity(self) -> torch.Tensor:
        return self.sparse.sparsity() if self.sparse is not None else self.decay.new_zeros(())


class RetLayer(nn.Module):
    """Pre-LN block: retention + residual, FFN (GELU) + residual."""

    def __init__(self, dim: int, ffn: int, dropout: float, **ret):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ret = MaskableRetention(dim, **ret)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, n_query: int, query_valid: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.ret(self.norm1(x), n_query, query_valid))
        return x + self.drop(self.ffn(self.norm2(x)))


class JointEncoder(nn.Module):
    """Layers of RetLayer over [queries ; clips], then a final LayerNorm; returns both parts and the summed
    sparsity of every layer's mask."""

    def __init__(self, dim: int, layers: int, ffn: int, dropout: float, **ret):
        super().__init__()
        self.layers = nn.ModuleList(RetLayer(dim, ffn, dropout, **ret) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, clips: torch.Tensor, query_valid: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nq = queries.shape[1]
        x = torch.cat((queries, clips), 1)
        for layer in self.layers:
            x = layer(x, nq, query_valid)
        x = self.norm(x)
        sparsity = sum((l.ret.sparsity() for l in self.layers), clips.new_zeros(()))
        return x[:, :nq], x[:, nq:], sparsity
