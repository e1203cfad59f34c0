"""CLIP4Clip meanP / seqTransf and EMCL-Net as one module tree:

    towers (stored CLIP features | CLIP trained end to end)
      → heads (the top of each tower, trained on stored features)
      → temporal model over frames (meanP: none | seqTransf: residual transformer)
      → pooling (mean | EMCL's text-conditioned frame weights, temp 3)
      → EM compact subspace, jointly over pooled videos and texts (EMCL only)
      → cosine similarity × logit scale → symmetric InfoNCE

A similarity entry (t, v) is a function of text t and video v alone at inference (the EM operator is frozen,
`em.py`), so `similarity` gives the same matrix for any `block`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.retrieval.config import RetrievalConfig
from models.retrieval.em import EMSubspace


@dataclass
class TextInputs:
    """Either stored features (tokens [T, L, W] pre-projection, sentence [T, E]) or token ids for the tower."""

    n_tokens: torch.Tensor                      # [T] tokens up to and including EOT
    tokens: torch.Tensor | None = None
    sentence: torch.Tensor | None = None
    ids: torch.Tensor | None = None             # [T, context] (towers: clip)

    def to(self, device) -> TextInputs:
        return TextInputs(*(None if t is None else t.to(device) for t in
                            (self.n_tokens, self.tokens, self.sentence, self.ids)))


@dataclass
class VideoInputs:
    """Frame features [V, F, E] or preprocessed frames [V, F, 3, S, S] (towers: clip), and the frame mask."""

    mask: torch.Tensor                          # [V, F] 1 for a real frame
    feats: torch.Tensor | None = None
    pixels: torch.Tensor | None = None

    def to(self, device) -> VideoInputs:
        return VideoInputs(*(None if t is None else t.to(device) for t in (self.mask, self.feats, self.pixels)))


class TextHead(nn.Module):
    """sentence + W·Block(words)[EOT]: re-trains the top of the text tower over its word tokens (W starts at 0)."""

    def __init__(self, width: int, dim: int, layers: int, heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0,
                                                               batch_first=True, norm_first=True)
                                    for _ in range(layers))
        self.proj = nn.Linear(width, dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, tokens: torch.Tensor, n_tokens: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        if not self.blocks:
            return sentence
        pad = torch.arange(tokens.shape[1], device=tokens.device)[None] >= n_tokens[:, None]
        x = tokens
        for b in self.blocks:
            x = b(x, src_key_padding_mask=pad)
        eot = x[torch.arange(x.shape[0], device=x.device), (n_tokens - 1).clamp(min=0)]
        return sentence + self.proj(eot)


class VideoHead(nn.Module):
    """frame + W·frame (W starts at 0): a per-frame adapter on the stored image features."""

    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lin(x)


class SeqTransf(nn.Module):
    """CLIP4Clip's seqTransf: frames + frame position embeddings through a transformer, added back residually."""

    def __init__(self, dim: int, layers: int, heads: int, max_frames: int):
        super().__init__()
        self.pos = nn.Embedding(max_frames, dim)
        nn.init.normal_(self.pos.weight, std=0.01)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0,
                                                                    batch_first=True, norm_first=True),
                                         layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pos = self.pos(torch.arange(x.shape[1], device=x.device))[None]
        return x + self.enc(x + pos, src_key_padding_mask=mask <= 0)


class RetrievalModel(nn.Module):
    def __init__(self, cfg: RetrievalConfig, text_width: int, dim: int, towers: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.towers = towers                        # a ClipEncoder (towers: clip) or None (stored features)
        self.text_head = TextHead(text_width, dim, cfg.text_head_layers, cfg.heads)
        self.video_head = VideoHead(dim) if cfg.video_head else nn.Identity()
        self.temporal = SeqTransf(dim, cfg.temporal_layers, cfg.heads, cfg.max_frames) \
            if cfg.temporal == "seqtransf" else None
        self.em = EMSubspace(dim, cfg.em_bases, cfg.em_iters, cfg.em_lambda, cfg.em_beta, cfg.em_momentum,
                             cfg.em_init) if cfg.em else None
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))

    # ------------------------------------------------------------------------------------ encoders
    def encode_text(self, t: TextInputs) -> torch.Tensor:
        """The sentence vector ([EOT]) of each text [T, E]."""
        if self.towers is not None:
            tokens, _ = self.towers.text_tokens(t.ids)
            sentence = self.towers.encode_text(t.ids)
            tokens = tokens[:, : self.cfg.max_words]
        else:
            tokens, sentence = t.tokens, t.sentence
        return self.text_head(tokens.float(), t.n_tokens, sentence.float())

    def encode_video(self, v: VideoInputs) -> torch.Tensor:
        """Per-frame features after the head and the temporal model [V, F, E]; padded frames are 0."""
        if self.towers is not None:
            n, f = v.pixels.shape[:2]
            x = self.towers.encode_image(v.pixels.flatten(0, 1)).float().view(n, f, -1)
        else:
            x = v.feats.float()
        x = self.video_head(x)
        if self.temporal is not None:
            x = self.temporal(x, v.mask)
        return x * v.mask[..., None]

    # ------------------------------------------------------------------------------------ scoring
    def pool(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Video vectors per (text, video) [T, V, E]: masked mean (meanP) or EMCL's text-conditioned weights."""
        if self.cfg.pooling == "mean":
            mean = (frames * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            return mean[None].expand(text.shape[0], -1, -1)
        w = torch.softmax(torch.einsum("ad,bfd->abf", text, frames) / self.cfg.temp, dim=-1)
        w = w * mask[None]                          # the code masks after the softmax, without renormalising
        return torch.einsum("abf,bfd->abd", w, frames)

    def pair_scores(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor,
                    em_mode: str = "train") -> torch.Tensor:
        """Cosine similarities [T, V]. em_mode: train (EM on this matrix, states updated), block (EM on this
        matrix, states kept: the seed's evaluation) or running (the frozen operator, row by row)."""
        pooled = self.pool(text, frames, mask)
        a, b, d = pooled.shape
        if self.em is not None:
            if em_mode == "running":
                pooled, text = self.em.apply_frozen(pooled), self.em.apply_frozen(text)
            else:
                joint = self.em(torch.cat([pooled.reshape(a * b, d), text], 0))
                pooled, text = joint[: a * b].view(a, b, d), joint[a * b:]
        return torch.einsum("ad,abd->ab", F.normalize(text, dim=-1), F.normalize(pooled, dim=-1))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)

    def loss(self, t: TextInputs, v: VideoInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """Symmetric InfoNCE over a batch of distinct videos, text i matching video i."""
        sim = self.pair_scores(self.encode_text(t), self.encode_video(v), v.mask, "train") * self.scale()
        target = torch.arange(sim.shape[0], device=sim.device)
        t2v, v2t = F.cross_entropy(sim, target), F.cross_entropy(sim.t(), target)
        loss = (t2v + v2t) / 2
        return loss, {"loss": loss.item(), "t2v": t2v.item(), "v2t": v2t.item(), "scale": self.scale().item()}

    @torch.no_grad()
    def similarity(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor, block: int = 32,
                   em_mode: str = "running") -> torch.Tensor:
        """The [T, V] test matrix from cached text and frame features, in `block`×`block` pieces."""
        out = torch.empty(text.shape[0], frames.shape[0], dtype=torch.float64)
        for i in range(0, text.shape[0], block):
            for j in range(0, frames.shape[0], block):
                out[i:i + block, j:j + block] = self.pair_scores(
                    text[i:i + block], frames[j:j + block], mask[j:j + block], em_mode).double().cpu()
        return out


def clamp_logit_scale(model: RetrievalModel) -> None:
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(model.cfg.max_logit_scale))
