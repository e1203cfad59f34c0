"""PDVC / CM2 dense video captioner: the whole module tree.

    frame features ─ BaseEncoder (4 levels + positions) ─ deformable encoder ─┐ memory
    [CM2] retrieved text ─ TextProjection ─ the same encoder (4 equal levels) ┤ text tokens
    event queries ─ decoder layers (self-attn, deformable cross-attn, [text cross-attn], FFN) ─┬ class head
                                                         box refinement (c, l) per layer ──┤ box head
                                                              max over queries ───────────┤ event counter
                                                  LSTM-DSA over the memory around each event ┘ captions

`retrieval=False` is PDVC; `retrieval=True` is CM2 (the same tree plus the text path).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.dense.caption import LSTMDSACaptioner
from models.dense.config import DenseConfig
from models.dense.position import sine_embedding
from models.dense.retrieval import TextProjection
from models.dense.transformer import BaseEncoder, DeformableTransformer, Memory


class MLP(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, layers: int):
        super().__init__()
        dims = [cin] + [hidden] * (layers - 1) + [cout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


@dataclass
class LayerOutput:
    """Predictions of one decoder layer."""

    hs: Tensor  # [B, Q, C] event features
    reference: Tensor  # [B, Q, 1|2] the reference this layer read (caption head samples around it)
    logits: Tensor  # [B, Q] event confidence logits
    boxes: Tensor  # [B, Q, 2] normalised (centre, length)
    count_logits: Tensor  # [B, max_eseq_length + 1]


@dataclass
class DenseOutput:
    layers: list[LayerOutput]
    memory: Memory

    @property
    def last(self) -> LayerOutput:
        return self.layers[-1]


class DenseCaptioner(nn.Module):
    def __init__(self, cfg: DenseConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        c, n_layers = cfg.hidden, cfg.dec_layers
        self.base_encoder = BaseEncoder(cfg)
        self.transformer = DeformableTransformer(cfg)
        self.query_embed = nn.Embedding(cfg.num_queries, 2 * c)  # [positional ; content]
        self.class_head = nn.ModuleList(nn.Linear(c, 1) for _ in range(n_layers))
        self.box_head = nn.ModuleList(MLP(c, c, 2, 3) for _ in range(n_layers))
        self.count_head = nn.ModuleList(nn.Linear(c, cfg.max_eseq_length + 1) for _ in range(n_layers))
        self.caption_head = LSTMDSACaptioner(cfg, vocab_size)  # shared by all decoder layers
        if cfg.retrieval:
            self.text_proj = TextProjection(cfg.bank_dim, c, cfg.text_dropout)
        self._init_heads()

    def _init_heads(self) -> None:
        prior = 0.01  # every query starts as "probably not an event"
        for head in self.class_head:
            nn.init.constant_(head.bias, -math.log((1 - prior) / prior))
        for head in self.box_head:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        nn.init.constant_(self.box_head[0].layers[-1].bias[1:], -2.0)  # first boxes short: sigmoid(-2) ≈ 0.12

    # ------------------------------------------------------------------ text path (CM2)
    def encode_text(self, retrieved: Tensor) -> Tensor:
        """retrieved [B, W, D_bank] → [B, W, C] via the video encoder, as L equal levels (keep level 0)."""
        text = self.text_proj(retrieved)
        b, w, _ = text.shape
        valid = torch.ones(b, w, dtype=torch.bool, device=text.device)
        pos = sine_embedding(valid, self.cfg.hidden)
        memory = self.transformer.encode([(text, valid, pos)] * self.cfg.levels)
        return memory.memory[:, :w]

    # ------------------------------------------------------------------ forward
    def forward(
        self, feats: Tensor, valid: Tensor, durations: Tensor, retrieved: Tensor | None = None
    ) -> DenseOutput:
        """feats [B, T, D], valid [B, T] bool, durations [B] seconds, retrieved [B, W, D_bank] (CM2)."""
        memory = self.transformer.encode(self.base_encoder(feats, valid, durations))
        text = None
        if self.cfg.retrieval:
            if retrieved is None:
                raise ValueError("retrieval is on: pass the retrieved text vectors")
            text = self.encode_text(retrieved)
        b = feats.shape[0]
        query_pos, tgt = self.query_embed.weight.chunk(2, dim=1)
        query_pos = query_pos[None].expand(b, -1, -1)
        tgt = tgt[None].expand(b, -1, -1)
        layers = []
        for i, (hs, reference, boxes) in enumerate(
            self.transformer.decode(tgt, query_pos, memory, self.box_head, text)
        ):
            layers.append(
                LayerOutput(
                    hs=hs,
                    reference=reference,
                    logits=self.class_head[i](hs).squeeze(-1),
                    boxes=boxes,
                    count_logits=self.count_head[i](hs.max(dim=1).values),
                )
            )
        return DenseOutput(layers, memory)
