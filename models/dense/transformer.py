"""Multi-scale base encoder and the deformable encoder/decoder (PDVC §2.1-2.2, CM2 §1.3).

Padding is handled exactly so a padded batch gives each video the outputs it gets alone: level lengths
follow the strided convolution (v_l = ceil(v_{l-1} / 2)) instead of PDVC's nearest-interpolated masks, the
group norm uses valid positions only and zeroes the padding, and references are scaled by valid ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.dense.attention import MSDeformAttn1d, TextCrossAttention
from models.dense.config import DenseConfig
from models.dense.position import VideoPositionEmbedding
from models.dense.segments import inverse_sigmoid


@dataclass
class Memory:
    """Encoder output over all levels, flat in time, and what deformable attention needs to read it."""

    memory: Tensor  # [B, S, C], S = sum of padded level lengths
    lengths: Tensor  # [L] int64 padded level lengths
    level_start: Tensor  # [L] int64
    valid_ratios: Tensor  # [B, L] valid length / padded length
    pad_mask: Tensor  # [B, S] True = padding


class MaskedGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics ignore padded positions; padding comes out as zeros."""

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:  # type: ignore[override]
        b, c, n = x.shape
        g = self.num_groups
        m = valid[:, None, None, :].to(x.dtype)
        xg = x.view(b, g, c // g, n)
        count = (m.sum(-1, keepdim=True) * (c // g)).clamp(min=1)
        mean = (xg * m).sum((2, 3), keepdim=True) / count
        var = (((xg - mean) * m) ** 2).sum((2, 3), keepdim=True) / count
        y = ((xg - mean) / torch.sqrt(var + self.eps)).view(b, c, n)
        return (y * self.weight[None, :, None] + self.bias[None, :, None]) * valid[:, None, :].to(x.dtype)


class LevelProjection(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        k = 1 if stride == 1 else 3
        self.conv = nn.Conv1d(cin, cout, kernel_size=k, stride=stride, padding=k // 2)
        self.norm = MaskedGroupNorm(groups, cout)
        nn.init.xavier_uniform_(self.conv.weight, gain=1)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        return self.norm(self.conv(x), valid)


def downsample_valid(valid: Tensor, length: int) -> Tensor:
    """Valid mask after a stride-2, kernel-3, pad-1 convolution: ceil(v / 2) valid positions of `length`."""
    v = (valid.sum(1) + 1) // 2
    return torch.arange(length, device=valid.device)[None, :] < v[:, None]


class BaseEncoder(nn.Module):
    """Frame features → L levels: Conv1d k1 + GN at full rate, then stride-2 Conv1d + GN; with positions."""

    def __init__(self, cfg: DenseConfig):
        super().__init__()
        c = cfg.hidden
        self.levels = nn.ModuleList([LevelProjection(cfg.feature_dim, c, 1, cfg.norm_groups)])
        for lvl in range(1, cfg.levels):
            self.levels.append(LevelProjection(cfg.feature_dim if lvl == 1 else c, c, 2, cfg.norm_groups))
        self.position = VideoPositionEmbedding(c, cfg.duration_unit_s)

    def forward(self, feats: Tensor, valid: Tensor, durations: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """feats [B, T, D], valid [B, T] → per level (src [B, T_l, C], valid [B, T_l], pos [B, T_l, C])."""
        x = feats.transpose(1, 2) * valid[:, None, :].to(feats.dtype)
        src, v = self.levels[0](x, valid), valid
        out = [(src, v)]
        for lvl in range(1, len(self.levels)):
            inp = x if lvl == 1 else src  # level 1 reads the frames, deeper levels the level above
            v = downsample_valid(v, (inp.shape[-1] + 1) // 2)
            src = self.levels[lvl](inp, v)
            out.append((src, v))
        return [(s.transpose(1, 2), m, self.position(m, durations)) for s, m in out]


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout1 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout2 = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout2(self.linear2(self.dropout1(F.relu(self.linear1(x))))))


class EncoderLayer(nn.Module):
    """Deformable self-attention over all levels → add & norm → FFN."""

    def __init__(self, cfg: DenseConfig):
        super().__init__()
        self.self_attn = MSDeformAttn1d(cfg.hidden, cfg.levels, cfg.heads, cfg.enc_points)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.ffn = FeedForward(cfg.hidden, cfg.ffn_dim, cfg.dropout)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference: Tensor,
        lengths: Tensor,
        level_start: Tensor,
        pad_mask: Tensor,
    ) -> Tensor:
        out = self.self_attn(src + pos, reference, src, lengths, level_start, pad_mask)
        return self.ffn(self.norm(src + self.dropout(out)))


class DecoderLayer(nn.Module):
    """Query self-attention → deformable cross-attention to the video → [CM2: text cross-attention] → FFN.

    The text block reuses the visual cross-attention's norm, as CM2 does.
    """

    def __init__(self, cfg: DenseConfig):
        super().__init__()
        c = cfg.hidden
        self.self_attn = nn.MultiheadAttention(c, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.dropout_self = nn.Dropout(cfg.dropout)
        self.norm_self = nn.LayerNorm(c)
        self.cross_attn = MSDeformAttn1d(c, cfg.levels, cfg.heads, cfg.dec_points)
        self.dropout_cross = nn.Dropout(cfg.dropout)
        self.norm_cross = nn.LayerNorm(c)
        if cfg.retrieval:
            self.text_attn = TextCrossAttention(c, cfg.heads)
            self.dropout_text = nn.Dropout(cfg.dropout)
        self.ffn = FeedForward(c, cfg.ffn_dim, cfg.dropout)

    def forward(
        self, tgt: Tensor, query_pos: Tensor, reference: Tensor, memory: Memory, text: Tensor | None = None
    ) -> Tensor:
        q = tgt + query_pos
        tgt = self.norm_self(tgt + self.dropout_self(self.self_attn(q, q, tgt, need_weights=False)[0]))
        out = self.cross_attn(
            tgt + query_pos, reference, memory.memory, memory.lengths, memory.level_start, memory.pad_mask
        )
        tgt = self.norm_cross(tgt + self.dropout_cross(out))
        if hasattr(self, "text_attn"):
            if text is None:
                raise ValueError("retrieval is on: the decoder needs the encoded retrieved text")
            tgt = self.norm_cross(tgt + self.dropout_text(self.text_attn(tgt, text)))
        return self.ffn(tgt)


def encoder_reference_points(lengths: Tensor, valid_ratios: Tensor) -> Tensor:
    """Centre of every position of every level, normalised by that level's valid length, seen from each level.

    → [B, S, L, 1]: (i + 0.5) / v_l, then × valid ratio of each level read.
    """
    refs = []
    for lvl, t_l in enumerate(lengths.tolist()):
        r = (torch.arange(t_l, device=valid_ratios.device, dtype=torch.float32) + 0.5)[None, :]
        refs.append(r / (valid_ratios[:, lvl, None] * t_l))
    ref = torch.cat(refs, 1)
    return (ref[:, :, None] * valid_ratios[:, None, :])[..., None]


class DeformableTransformer(nn.Module):
    def __init__(self, cfg: DenseConfig):
        super().__init__()
        self.encoder = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.enc_layers)])
        self.decoder = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.dec_layers)])
        self.level_embed = nn.Parameter(torch.empty(cfg.levels, cfg.hidden))
        self.reference_points = nn.Linear(cfg.hidden, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, (MSDeformAttn1d, TextCrossAttention)):
                m.reset_parameters()
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def encode(self, levels: list[tuple[Tensor, Tensor, Tensor]]) -> Memory:
        """levels: per level (src [B, T_l, C], valid [B, T_l], pos [B, T_l, C]) → Memory."""
        src = torch.cat([s for s, _, _ in levels], 1)
        valid = torch.cat([v for _, v, _ in levels], 1)
        pos = torch.cat([p + self.level_embed[lvl] for lvl, (_, _, p) in enumerate(levels)], 1)
        lengths = torch.as_tensor([s.shape[1] for s, _, _ in levels], dtype=torch.int64, device=src.device)
        level_start = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
        valid_ratios = torch.stack([v.sum(1).to(torch.float32) / v.shape[1] for _, v, _ in levels], 1)
        reference = encoder_reference_points(lengths, valid_ratios)
        pad_mask = ~valid
        out = src
        for layer in self.encoder:
            out = layer(out, pos, reference, lengths, level_start, pad_mask)
        return Memory(out, lengths, level_start, valid_ratios, pad_mask)

    def decode(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        memory: Memory,
        box_heads: nn.ModuleList,
        text: Tensor | None = None,
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Iterative box refinement → per decoder layer (hs [B, Q, C], input reference, box (c, l) [B, Q, 2]).

        Layer 0 starts from a learned centre; each layer's box becomes the (detached) reference of the next.
        """
        reference = self.reference_points(query_pos).sigmoid()  # [B, Q, 1]
        out = []
        hs = tgt
        for layer, box_head in zip(self.decoder, box_heads):
            ref_in = reference[:, :, None] * memory.valid_ratios[:, None, :, None]
            hs = layer(hs, query_pos, ref_in, memory, text)
            delta = box_head(hs)
            if reference.shape[-1] == 1:
                box = torch.cat([delta[..., :1] + inverse_sigmoid(reference), delta[..., 1:]], -1).sigmoid()
            else:
                box = (delta + inverse_sigmoid(reference)).sigmoid()
            out.append((hs, reference, box))
            reference = box.detach()
        return out
