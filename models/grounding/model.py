"""MRNet (and MMN with mask_mode no): queries and clips → a joint maskable-retention encoder → the 2-D
proposal map → contrastive and IoU scores per (query, proposal)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.grounding.config import GroundingConfig
from models.grounding.proposal import ProposalConv, SparseMaxPool
from models.grounding.retention import JointEncoder


@dataclass
class GroundingOutput:
    con_map: torch.Tensor     # [B, C, N, N] contrastive map features
    iou_map: torch.Tensor     # [B, C, N, N]
    sent_con: torch.Tensor    # [B, Q, C]
    sent_iou: torch.Tensor    # [B, Q, C]
    sparsity: torch.Tensor    # summed over layers
    mask2d: torch.Tensor

    def iou_scores(self) -> torch.Tensor:
        """sigmoid(10·cos(sentence_iou, map_iou)) ⊙ mask2d: [B, Q, N, N]."""
        cos = torch.einsum("bqc,bcij->bqij", F.normalize(self.sent_iou, dim=-1), F.normalize(self.iou_map, dim=1))
        return torch.sigmoid(10 * cos) * self.mask2d

    def con_scores(self) -> torch.Tensor:
        return torch.einsum("bqc,bcij->bqij", F.normalize(self.sent_con, dim=-1), F.normalize(self.con_map, dim=1))

    def final_scores(self, p: float) -> torch.Tensor:
        """((cos + 1) / 2)^p × iou score (MMN/MRNet evaluation)."""
        return ((self.con_scores() + 1) / 2).clamp(min=0) ** p * self.iou_scores()


class TextQuery(nn.Module):
    """A query from text.zarr: the sentence vector beside the mean of its token features."""

    def __init__(self, text_dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(2 * text_dim, hidden)

    def forward(self, sentence: torch.Tensor, tokens: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
        valid = (torch.arange(tokens.shape[-2], device=tokens.device) < n_tokens[..., None]).float()
        mean = (tokens * valid[..., None]).sum(-2) / valid.sum(-1, keepdim=True).clamp(min=1)
        return self.proj(torch.cat((sentence, mean), -1))


class SpeechQuery(nn.Module):
    """A small trainable audio encoder: log-mel frames → 2 strided Conv1d → masked mean → hidden."""

    def __init__(self, n_mels: int, hidden: int):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv1d(n_mels, hidden, 5, stride=2, padding=2), nn.GELU(),
                                   nn.Conv1d(hidden, hidden, 5, stride=2, padding=2), nn.GELU())
        self.norm = nn.LayerNorm(n_mels)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, mel: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        """mel [..., T, n_mels], n_frames [...] → [..., hidden]."""
        lead, (t, m) = mel.shape[:-2], mel.shape[-2:]
        x = self.convs(self.norm(mel.reshape(-1, t, m)).transpose(1, 2))           # [*, H, T/4]
        t4 = x.shape[-1]
        valid = (torch.arange(t4, device=x.device)[None] < (n_frames.reshape(-1, 1) + 3) // 4).float()
        pooled = (x * valid[:, None]).sum(-1) / valid.sum(-1, keepdim=True).clamp(min=1)
        return self.proj(pooled).reshape(*lead, -1)


class MRNet(nn.Module):
    def __init__(self, cfg: GroundingConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.featpool = nn.Conv1d(cfg.feature_dim, h, 1)
        self.pool_stride = cfg.pre_clips // cfg.num_clips
        self.video_proj = nn.Sequential(nn.LayerNorm(h), nn.Dropout(cfg.proj_dropout), nn.Linear(h, h))
        self.query = TextQuery(cfg.text_dim, h) if cfg.query == "text" else SpeechQuery(cfg.n_mels, h)
        self.query_proj = nn.Sequential(nn.LayerNorm(h), nn.Dropout(cfg.proj_dropout), nn.Linear(h, h))
        self.encoder = JointEncoder(h, cfg.layers, cfg.ffn_dim, cfg.dropout, heads=cfg.heads, n_clips=cfg.num_clips,
                                    mask_mode=cfg.mask_mode, softmax=cfg.softmax, att_mode=cfg.att_mode,
                                    gamma=cfg.gamma, per_head_decay=cfg.per_head_decay, use_xpos=cfg.xpos,
                                    xpos_scale_base=cfg.xpos_scale_base)
        self.map = SparseMaxPool(cfg.num_clips, tuple(cfg.pooling_counts))
        self.conv = ProposalConv(h, cfg.conv_hidden, h, cfg.kernel, cfg.conv_layers, self.map.mask2d)
        self.sent_con = nn.Linear(h, h)
        self.sent_iou = nn.Linear(h, h)

    def forward(self, clips: torch.Tensor, query_inputs: tuple[torch.Tensor, ...], query_valid: torch.Tensor
                ) -> GroundingOutput:
        """clips [B, pre_clips, D] (L2-normalised); query_inputs batched [B, Q, ...]; query_valid [B, Q]."""
        v = F.avg_pool1d(torch.relu(self.featpool(clips.transpose(1, 2))), self.pool_stride, self.pool_stride)
        v = self.video_proj(v.transpose(1, 2))                                       # [B, N, h]
        q = self.query_proj(self.query(*query_inputs))                              # [B, Q, h]
        q_out, v_out, sparsity = self.encoder(q, v, query_valid)
        con_map, iou_map = self.conv(self.map(v_out.transpose(1, 2)))
        return GroundingOutput(con_map, iou_map, self.sent_con(q_out), self.sent_iou(q_out), sparsity,
                               self.map.mask2d)
