"""Video ReCap (§1.1), small: video mapper + text mapper (Q-Former style) → gated cross-attention decoder.

    window features ─► VideoMapper (learned queries × cross-attention) ─┐
    lower-level captions ─► decoder embedding ─► TextMapper ────────────┴─► VL tokens
    BOS w1 w2 … ─► decoder embedding ─► [GatedCrossBlock → DecoderLayer] × L ─► logits

The decoder is our own, trained from scratch, or a local GPT-2-style checkpoint (`decoder_checkpoint`,
models/recap/gpt2.py, frozen but for its LayerNorms); the gated blocks sit before each decoder layer as in
ReCap's GPT-2: LN → cross-attention → tanh(α₁), LN → FFN → tanh(α₂), both α start at 0, so the untrained
model is exactly the plain decoder and the visual path is switched on by learning.
Ids: 0 is BOS / EOS / padding, 1..V the words of the manifest vocabulary (or GPT-2's tokens shifted by one).
When the decoder is wider than the mappers (`hidden`), the text mapper's input and the VL tokens are projected.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.recap.config import RecapConfig
from models.recap.gpt2 import GPT2Decoder, GPT2Spec


def _ffn(d: int, mult: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d * mult), nn.GELU(), nn.Dropout(dropout), nn.Linear(d * mult, d))


class QueryMapper(nn.Module):
    """Learned queries that cross-attend to a variable-length input (BLIP-2's Q-Former, small): the decoder
    sees a fixed number of tokens whatever the input length."""

    def __init__(self, n_queries: int, d: int, heads: int, layers: int, mult: int, dropout: float):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, d) * d ** -0.5)   # BLIP-2: std d^-1/2
        self.self_attn = nn.ModuleList(nn.MultiheadAttention(d, heads, dropout, batch_first=True)
                                       for _ in range(layers))
        self.cross_attn = nn.ModuleList(nn.MultiheadAttention(d, heads, dropout, batch_first=True)
                                        for _ in range(layers))
        self.ffn = nn.ModuleList(_ffn(d, mult, dropout) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3 * layers))
        self.in_norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, N, d], mask [B, N] True = real → [B, Q, d]."""
        x = self.in_norm(x)
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        pad = ~mask
        for i, (sa, ca, ff) in enumerate(zip(self.self_attn, self.cross_attn, self.ffn)):
            n1, n2, n3 = self.norms[3 * i : 3 * i + 3]
            h = n1(q)
            q = q + sa(h, h, h, need_weights=False)[0]
            q = q + ca(n2(q), x, x, key_padding_mask=pad, need_weights=False)[0]
            q = q + ff(n3(q))
        return q


class GatedCrossBlock(nn.Module):
    """Flamingo / ReCap gated cross-attention: identity at init (tanh(0) = 0 on both residual branches)."""

    def __init__(self, d: int, heads: int, mult: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout, batch_first=True)
        self.ffn = _ffn(d, mult, dropout)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ffn_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, vl: Tensor) -> Tensor:
        x = x + torch.tanh(self.attn_gate) * self.attn(self.norm1(x), vl, vl, need_weights=False)[0]
        return x + torch.tanh(self.ffn_gate) * self.ffn(self.norm2(x))


class DecoderLayer(nn.Module):
    """Pre-LN causal self-attention + FFN (a GPT-2 block)."""

    def __init__(self, d: int, heads: int, mult: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout, batch_first=True)
        self.ffn = _ffn(d, mult, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, causal: Tensor, pad: Tensor | None) -> Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, h, attn_mask=causal, key_padding_mask=pad, need_weights=False)[0])
        return x + self.drop(self.ffn(self.norm2(x)))


class TextDecoder(nn.Module):
    """Word embedding + positions, L × (gated cross block, decoder layer), tied output projection."""

    def __init__(self, vocab_size: int, cfg: RecapConfig, max_positions: int):
        super().__init__()
        d = self.width = cfg.hidden
        self.embed = nn.Embedding(vocab_size + 1, d)
        self.pos = nn.Embedding(max_positions, d)
        self.gated = nn.ModuleList(GatedCrossBlock(d, cfg.heads, cfg.ffn_mult, cfg.dropout)
                                   for _ in range(cfg.decoder_layers))
        self.layers = nn.ModuleList(DecoderLayer(d, cfg.heads, cfg.ffn_mult, cfg.dropout)
                                    for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(d)

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """The decoder's own (word + position) embedding; the text mapper reads captions through it."""
        pos = torch.arange(ids.shape[1], device=ids.device).clamp(max=self.pos.num_embeddings - 1)
        return self.embed(ids) + self.pos(pos)

    def forward(self, ids: Tensor, vl: Tensor | None, pad: Tensor | None = None) -> Tensor:
        """ids [B, T] → logits [B, T, V+1]; vl None skips the gated blocks (the plain decoder)."""
        x = self.embed_tokens(ids)
        t = ids.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=ids.device), 1)
        for gated, layer in zip(self.gated, self.layers):
            if vl is not None:
                x = gated(x, vl)
            x = layer(x, causal, pad)
        return self.norm(x) @ self.embed.weight.T


class ReCap(nn.Module):
    """One ReCap level (or ReCap-U: the same module for every level)."""

    def __init__(self, cfg: RecapConfig, vocab_size: int, gpt2: GPT2Spec | None = None):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        d = cfg.hidden
        self.proj_lavila = nn.Linear(cfg.lavila_dim, d)
        self.proj_clip = nn.Linear(cfg.clip_dim, d)
        self.video_mapper = QueryMapper(cfg.video_queries, d, cfg.heads, cfg.mapper_layers, cfg.ffn_mult,
                                        cfg.dropout)
        self.text_mapper = QueryMapper(cfg.text_queries, d, cfg.heads, cfg.mapper_layers, cfg.ffn_mult,
                                       cfg.dropout)
        self.level_embed = nn.Embedding(3, d)   # which caption to write (matters for ReCap-U only)
        if gpt2 is None:
            self.decoder: TextDecoder | GPT2Decoder = TextDecoder(vocab_size, cfg, cfg.positions)
        else:
            if gpt2.vocab_size != vocab_size:
                raise ValueError(f"GPT-2 decoder of {gpt2.vocab_size} tokens for a vocabulary of {vocab_size}")
            self.decoder = GPT2Decoder(gpt2, cfg.ffn_mult, cfg.dropout)
        width = self.decoder.width
        self.text_in = nn.Identity() if width == d else nn.Linear(width, d)    # decoder embedding → mapper
        self.vl_out = nn.Identity() if width == d else nn.Linear(d, width)     # VL tokens → decoder

    def encode(self, feats: Tensor, feat_mask: Tensor, kind: str, level: int,
               text: Tensor | None = None, text_mask: Tensor | None = None) -> Tensor:
        """VL tokens [B, Qv (+ Qt), d]: video queries, then text queries when captions are given."""
        proj = self.proj_clip if kind == "clip" else self.proj_lavila
        v = self.video_mapper(proj(feats), feat_mask)
        v = v + self.level_embed.weight[level]
        if text is None:
            return self.vl_out(v)
        t = self.text_mapper(self.text_in(self.decoder.embed_tokens(text)), text_mask)
        return self.vl_out(torch.cat([v, t], dim=1))

    def forward(self, vl: Tensor, ids: Tensor, pad: Tensor | None = None) -> Tensor:
        return self.decoder(ids, vl, pad)

    # ---------------------------------------------------------------------------------------------- decoding
    @torch.no_grad()
    def greedy(self, vl: Tensor, max_words: int) -> list[list[int]]:
        """Greedy decoding (ReCap's: argmax, no sampling) → word ids without BOS / EOS."""
        b = vl.shape[0]
        ids = torch.zeros(b, 1, dtype=torch.long, device=vl.device)
        done = torch.zeros(b, dtype=torch.bool, device=vl.device)
        for _ in range(max_words + 1):
            nxt = self.decoder(ids, vl)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.zeros_like(nxt), nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            done |= nxt == 0
            if bool(done.all()):
                break
        return [_strip(row) for row in ids[:, 1:].tolist()]

    @torch.no_grad()
    def beam(self, vl: Tensor, max_words: int, beam_size: int) -> list[list[int]]:
        """Beam search per sample (sum of log-probs; a finished beam stays finished)."""
        out = []
        for i in range(vl.shape[0]):
            beams: list[tuple[float, list[int], bool]] = [(0.0, [0], False)]
            for _ in range(max_words + 1):
                if all(f for _, _, f in beams):
                    break
                live = [b for b in beams if not b[2]]
                ids = torch.tensor([s for _, s, _ in live], device=vl.device)
                logp = self.decoder(ids, vl[i : i + 1].expand(len(live), -1, -1))[:, -1].log_softmax(-1)
                cand = [b for b in beams if b[2]]
                top = logp.topk(min(beam_size, logp.shape[-1]), -1)
                for j, (score, seq, _) in enumerate(live):
                    for lp, w in zip(top.values[j].tolist(), top.indices[j].tolist()):
                        cand.append((score + lp, seq + [w], w == 0))
                beams = sorted(cand, key=lambda b: -b[0])[:beam_size]
            out.append(_strip(beams[0][1][1:]))
        return out

    def generate(self, vl: Tensor, max_words: int, beam_size: int = 1) -> list[list[int]]:
        return self.greedy(vl, max_words) if beam_size <= 1 else self.beam(vl, max_words, beam_size)


def _strip(ids: list[int]) -> list[int]:
    return ids[: ids.index(0)] if 0 in ids else ids
