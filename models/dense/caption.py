"""LSTM-DSA caption head (PDVC §2.2): an LSTM that, at every word, samples the video memory around its event.

Per word step: [h_{t-1}; event feature] predicts where to look (M heads × L levels × P points around the
event's reference); the sampled values are pooled by additive soft attention driven by h_{t-1}; the LSTM
reads [word embedding; attended context; event feature]. Training is teacher-forced; inference is greedy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.dense.attention import direction_bias, sampling_locations
from models.dense.config import DenseConfig
from models.dense.sampling import sample_points_1d
from models.dense.transformer import Memory


class DeformableSampler(nn.Module):
    """The caption head's deformable attention: returns the sampled values, the LSTM weighs them itself."""

    def __init__(self, d_model: int, query_dim: int, levels: int, heads: int, points: int):
        super().__init__()
        self.d_model, self.levels, self.heads, self.points = d_model, levels, heads, points
        self.sampling_offsets = nn.Linear(query_dim, heads * levels * points)
        self.value_proj = nn.Linear(d_model, d_model)
        nn.init.zeros_(self.sampling_offsets.weight)
        bias = direction_bias(heads, levels, points)
        with torch.no_grad():  # centred on the reference: points spread on both sides of the event
            self.sampling_offsets.bias.copy_((bias - bias.mean(2, keepdim=True)).flatten())
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)

    def values(self, memory: Memory) -> tuple[Tensor, Tensor, Tensor]:
        """The memory's first `levels` levels, projected once → (value [B, S, M, Dh], lengths, starts)."""
        lengths = memory.lengths[: self.levels]
        starts = memory.level_start[: self.levels]
        s = int(starts[-1] + lengths[-1])
        value = self.value_proj(memory.memory[:, :s]).masked_fill(memory.pad_mask[:, :s, None], 0.0)
        b = value.shape[0]
        return value.view(b, s, self.heads, self.d_model // self.heads), lengths, starts

    def forward(
        self, query: Tensor, reference: Tensor, value: Tensor, lengths: Tensor, starts: Tensor
    ) -> Tensor:
        """query [B, Q, Cq], reference [B, Q, L, 1|2] → samples [B, Q, M, L·P, Dh]."""
        b, q, _ = query.shape
        offsets = self.sampling_offsets(query).view(b, q, self.heads, self.levels, self.points)
        loc = sampling_locations(reference, offsets, lengths)
        samples = sample_points_1d(value, lengths, starts, loc)  # [B, Q, M, L, P, Dh]
        return samples.flatten(3, 4)


@dataclass
class _Context:
    hs: Tensor  # [B, Q, C] event features
    reference: Tensor  # [B, Q, L, 1|2], × valid ratios
    value: Tensor
    lengths: Tensor
    starts: Tensor


class LSTMDSACaptioner(nn.Module):
    def __init__(self, cfg: DenseConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size  # words are 1..V; 0 is BOS / EOS / padding
        self.embed = nn.Embedding(vocab_size + 1, cfg.word_dim)
        self.sampler = DeformableSampler(
            cfg.hidden, cfg.rnn_size + cfg.hidden, cfg.cap_levels, cfg.cap_heads, cfg.cap_points
        )
        head_dim = cfg.hidden // cfg.cap_heads
        self.ctx2att = nn.Linear(head_dim, cfg.att_hid)
        self.h2att = nn.Linear(cfg.rnn_size, cfg.att_hid)
        self.alpha_net = nn.Linear(cfg.att_hid, 1)
        self.rnn = nn.LSTM(
            cfg.word_dim + 2 * cfg.hidden,
            cfg.rnn_size,
            cfg.rnn_layers,
            bias=False,
            dropout=cfg.caption_dropout if cfg.rnn_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(cfg.caption_dropout)
        self.logit = nn.Linear(cfg.rnn_size, vocab_size + 1)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.uniform_(self.logit.weight, -0.1, 0.1)
        nn.init.zeros_(self.logit.bias)

    # ------------------------------------------------------------------ one word
    def _context(self, hs: Tensor, reference: Tensor, memory: Memory) -> _Context:
        value, lengths, starts = self.sampler.values(memory)
        ref = reference[:, :, None] * memory.valid_ratios[:, None, : self.cfg.cap_levels, None]
        return _Context(hs, ref, value, lengths, starts)

    def _init_state(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        z = like.new_zeros(self.cfg.rnn_layers, n, self.cfg.rnn_size)
        return z, z.clone()

    def _step(
        self, word: Tensor, state: tuple[Tensor, Tensor], ctx: _Context
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """word [B·Q] → log-probabilities of the next word [B·Q, V+1]."""
        b, q, c = ctx.hs.shape
        h = state[0][-1]  # [B·Q, rnn]
        samples = self.sampler(
            torch.cat([h.view(b, q, -1), ctx.hs], -1), ctx.reference, ctx.value, ctx.lengths, ctx.starts
        ).flatten(0, 1)  # [B·Q, M, L·P, Dh]
        score = self.alpha_net(torch.tanh(self.ctx2att(samples) + self.h2att(h)[:, None, None, :])).squeeze(
            -1
        )
        attended = (score.softmax(-1)[..., None] * samples).sum(2).flatten(1)  # [B·Q, C]
        x = torch.cat([self.embed(word), attended, ctx.hs.reshape(b * q, c)], -1)
        out, state = self.rnn(x[None], state)
        return F.log_softmax(self.logit(self.dropout(out[0])), dim=-1), state

    # ------------------------------------------------------------------ training
    def forward(self, hs: Tensor, reference: Tensor, memory: Memory, tokens: Tensor) -> Tensor:
        """Teacher forcing: tokens [B, Q, S] = [0, w1..wn, 0, pad] → next-token log-probs [B, Q, S-1, V+1]."""
        b, q, s = tokens.shape
        ctx = self._context(hs, reference, memory)
        state = self._init_state(b * q, hs)
        out = []
        for i in range(s - 1):
            logp, state = self._step(tokens[:, :, i].reshape(-1), state, ctx)
            out.append(logp)
        return torch.stack(out, 1).view(b, q, s - 1, -1)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(
        self, hs: Tensor, reference: Tensor, memory: Memory, max_words: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Greedy decoding → (words [B, Q, n], 0 after the end; their log-probs [B, Q, n]), n ≤ max_words."""
        b, q, _ = hs.shape
        max_words = self.cfg.max_words if max_words is None else max_words
        ctx = self._context(hs, reference, memory)
        state = self._init_state(b * q, hs)
        word = torch.zeros(b * q, dtype=torch.long, device=hs.device)
        unfinished = torch.ones(b * q, dtype=torch.bool, device=hs.device)
        words, logps = [], []
        for _ in range(max_words):
            logp, state = self._step(word, state, ctx)
            lp, word = logp.max(-1)
            unfinished = unfinished & (word > 0)
            if not bool(unfinished.any()):
                break
            word = word * unfinished
            words.append(word)
            logps.append(lp * unfinished)
        if not words:
            empty = hs.new_zeros(b, q, 0)
            return empty.long(), empty
        return torch.stack(words, 1).view(b, q, -1), torch.stack(logps, 1).view(b, q, -1)
