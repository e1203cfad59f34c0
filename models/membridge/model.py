"""MemBridge's fusion encoder with memory-generated bridge tokens, and its heads (IEEE TIP 2023).

    frames (stored CLIP features) ─ proj ─┐                   text ids ─ causal text encoder ─┐
    [mean frame ; text end token] (detached) ─ LN ─ K projections ─ attention over the memory slots ─ bridges
    sequence  [frames][video mean][bridges][text]  + its own positional table (none on the video mean token)
    attention video → video + bridges, text → text + bridges, bridges → everything the prefix allows
    heads     matching (two bilinear forms on the normalised video-mean and text-end outputs),
              masked / prefix LM (tied word embeddings × a projection, plus a bias), QA (answer classes)

The baseline (`bridge: false`) is the same encoder with full attention between video and text and no bridge
tokens. In prefix-LM mode the text is causal and whatever text the video (baseline) or the bridges
(MemBridge) see is the prefix only, so no output that a loss reads has seen a token it predicts.

Word ids: 0 padding, 1 BOS, 2 EOS, 3 MASK, then the words (data.py builds the vocabulary).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.membridge.config import MemBridgeConfig

PAD, BOS, EOS, MASK = 0, 1, 2, 3
SPECIAL = 4


# ---------------------------------------------------------------------------------------------------- masks
def fusion_mask(frame_mask: Tensor, text_len: Tensor, text_max: int, bridges: int,
                prefix: Tensor | None = None, causal: bool = False, bridge: bool = True) -> Tensor:
    """Who may attend to whom: bool [B, L, L] (True: allowed) over [frames][video mean][bridges][text].

    frame_mask [B, F] marks real frames; text_len [B] real text tokens (BOS..EOS); prefix [B] the text tokens
    the other modality (baseline) or the bridges (MemBridge) may see (default: all of them); causal makes text
    attend to earlier text only. Padding is seen by nobody; every position sees itself (no empty row).
    """
    b, f = frame_mask.shape
    dev = frame_mask.device
    k = bridges if bridge else 0
    n_video = f + 1
    length = n_video + k + text_max
    prefix = text_len if prefix is None else prefix
    pos = torch.arange(text_max, device=dev)
    text_real = pos[None] < text_len[:, None]                                  # [B, T]
    text_prefix = pos[None] < prefix[:, None]
    key_ok = torch.cat([frame_mask > 0, torch.ones(b, 1 + k, dtype=torch.bool, device=dev), text_real], 1)

    v, br, t = slice(0, n_video), slice(n_video, n_video + k), slice(n_video + k, length)
    allow = torch.zeros(b, length, length, dtype=torch.bool, device=dev)
    allow[:, v, v] = True
    text_text = torch.ones(text_max, text_max, dtype=torch.bool, device=dev)
    if causal:
        text_text = torch.tril(text_text)
    allow[:, t, t] = text_text
    if bridge:
        allow[:, v, br] = True
        allow[:, t, br] = True
        allow[:, br, v] = True
        allow[:, br, br] = True
        allow[:, br, t] = text_prefix[:, None, :]
    else:
        allow[:, v, t] = text_prefix[:, None, :]
        allow[:, t, v] = True
    allow &= key_ok[:, None, :]
    allow |= torch.eye(length, dtype=torch.bool, device=dev)[None]
    return allow


# ---------------------------------------------------------------------------------------------------- blocks
class Block(nn.Module):
    """Pre-LN transformer block whose attention takes a per-sample boolean mask."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Linear(ffn, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, allow: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allow[:, None],
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TextEncoder(nn.Module):
    """Word embeddings + positions through causal blocks: token i summarises words 0..i, so the output at a
    prefix's last token is that prefix's "text end token" (the role of CLIP's EOT)."""

    def __init__(self, vocab: int, width: int, heads: int, ffn: int, layers: int, max_len: int,
                 dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(max_len, width) * 0.01)
        self.blocks = nn.ModuleList(Block(width, heads, ffn, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        n = ids.shape[1]
        x = self.embed(ids) + self.pos[:n]
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool, device=ids.device))
        causal = causal[None].expand(ids.shape[0], -1, -1)
        for blk in self.blocks:
            x = blk(x, causal)
        return self.ln(x)


class BridgeGenerator(nn.Module):
    """K bridge tokens read from a learnable memory: bridge_i = softmax(q_i Mᵀ) M, q_i = W_i · LN(query).

    The memory slots are ordinary parameters (no queue, no momentum); no temperature, as the paper's code."""

    def __init__(self, query_dim: int, width: int, slots: int, bridges: int):
        super().__init__()
        self.ln = nn.LayerNorm(query_dim)
        self.query = nn.Parameter(torch.randn(bridges, query_dim, width) * query_dim ** -0.5)
        self.memory = nn.Parameter(torch.randn(slots, width) * width ** -0.5)

    def forward(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """query [B, Q] → (bridges [B, K, D], attention over the slots [B, K, S])."""
        q = torch.einsum("bq,kqd->bkd", self.ln(query), self.query)
        attn = torch.softmax(q @ self.memory.t(), dim=-1)
        return attn @ self.memory, attn


# ---------------------------------------------------------------------------------------------------- model
@dataclass
class Fused:
    """The fusion encoder's output and where each part sits."""

    hidden: Tensor            # [B, L, D]
    text: Tensor              # [B, T, D] the text part
    video_sep: Tensor         # [B, D] the video mean token
    text_start: int


class MemBridgeModel(nn.Module):
    def __init__(self, cfg: MemBridgeConfig, clip_dim: int, vocab: int, answers: int = 0):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.text_max = cfg.max_words + 2                      # BOS + words + EOS
        self.frame_proj = nn.Sequential(nn.LayerNorm(clip_dim), nn.Linear(clip_dim, d))
        self.text = TextEncoder(vocab, d, cfg.heads, cfg.ffn, cfg.text_layers, self.text_max, cfg.dropout)
        self.bridge = BridgeGenerator(clip_dim + d, d, cfg.memory_slots, cfg.bridges) if cfg.bridge else None
        k = cfg.bridges if cfg.bridge else 0
        self.pos = nn.Parameter(torch.randn(cfg.max_frames + 1 + k + self.text_max, d) * 0.01)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.ffn, cfg.dropout) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(d)
        self.lm_proj = nn.Linear(d, d)                         # × the (tied) word embeddings, + a bias
        self.lm_bias = nn.Parameter(torch.zeros(vocab))
        self.vtm = nn.Parameter(torch.randn(2, d, d) * d ** -0.5)   # bilinear "unmatch" (0) and "match" (1)
        self.vtm_drop = nn.Dropout(cfg.vtm_dropout)
        self.qa = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, answers)) if answers else None

    # -------------------------------------------------------------------------------- encoder
    def fuse(self, frames: Tensor, frame_mask: Tensor, ids: Tensor, text_len: Tensor,
             prefix: Tensor | None = None, causal: bool = False, masked: Tensor | None = None) -> Fused:
        """frames [B, F, E] (F ≤ max_frames), frame_mask [B, F], ids [B, T] (T ≤ max_words + 2), text_len [B];
        prefix [B]: the text the bridges (or, baseline, the video) see; masked [B, T]: MLM positions (the text
        encoder reads MASK there and the fusion input is a zero vector)."""
        b, f = frame_mask.shape
        t = ids.shape[1]
        fm = frame_mask.float()
        if masked is not None:
            ids = ids.masked_fill(masked, MASK)
        words = self.text(ids)                                  # [B, T, D]
        text_in = words if masked is None else words * (~masked)[..., None].float()
        video = self.frame_proj(frames.float()) * fm[..., None]
        count = fm.sum(1, keepdim=True).clamp(min=1)
        video_mean = video.sum(1) / count
        parts = [video + self.pos[:f], video_mean[:, None]]
        k = 0
        if self.bridge is not None:
            end = ((text_len if prefix is None else prefix) - 1).clamp(min=0)
            end_token = words[torch.arange(b, device=ids.device), end]
            frame_mean = (frames.float() * fm[..., None]).sum(1) / count
            bridges, _ = self.bridge(torch.cat([frame_mean, end_token], -1).detach())
            k = bridges.shape[1]
            parts.append(bridges + self.pos[f + 1: f + 1 + k])
        start = f + 1 + k
        parts.append(text_in + self.pos[f + 1 + k: f + 1 + k + t])
        x = torch.cat(parts, 1)
        allow = fusion_mask(frame_mask, text_len, t, k, prefix, causal, self.bridge is not None)
        for blk in self.blocks:
            x = blk(x, allow)
        x = self.ln(x)
        return Fused(x, x[:, start:], x[:, f], start)

    # -------------------------------------------------------------------------------- heads
    def lm_logits(self, h: Tensor) -> Tensor:
        return self.lm_proj(h) @ self.text.embed.weight.t() + self.lm_bias

    def match_logits(self, fused: Fused, text_len: Tensor) -> Tensor:
        """[B, 2] (unmatch, match) from the normalised video-mean and text-end (EOS) outputs."""
        eos = fused.text[torch.arange(text_len.shape[0], device=text_len.device), text_len - 1]
        v = self.vtm_drop(F.normalize(fused.video_sep, dim=-1))
        t = self.vtm_drop(F.normalize(eos, dim=-1))
        return torch.einsum("bd,cde,be->bc", v, self.vtm, t)

    def answer_logits(self, fused: Fused, text_len: Tensor) -> Tensor:
        eos = fused.text[torch.arange(text_len.shape[0], device=text_len.device), text_len - 1]
        return self.qa(torch.cat([fused.video_sep, eos], -1))

    # -------------------------------------------------------------------------------- losses
    def vtm_loss(self, frames: Tensor, frame_mask: Tensor, ids: Tensor, text_len: Tensor, dual: Tensor,
                 same: Tensor, temp: float,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Video-text matching, one hard negative per direction: for text i a video drawn from
        softmax(dual[i] / temp) and for video j a text drawn from softmax(dual[:, j] / temp), with the pairs
        of the same video (`same` [B, B], the diagonal included) left out. → (loss, accuracy)."""
        neg_video, neg_text = hard_negatives(dual, same, temp, generator)
        n = ids.shape[0]
        rows = torch.arange(n, device=ids.device)
        v_idx = torch.cat([rows, neg_video, rows])
        t_idx = torch.cat([rows, rows, neg_text])
        fused = self.fuse(frames[v_idx], frame_mask[v_idx], ids[t_idx], text_len[t_idx])
        logits = self.match_logits(fused, text_len[t_idx])
        target = torch.cat([torch.ones(n), torch.zeros(2 * n)]).long().to(ids.device)
        return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()

    def mlm_loss(self, frames: Tensor, frame_mask: Tensor, ids: Tensor, text_len: Tensor, prob: float,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Masked language modelling: `prob` of the words (never BOS/EOS; at least one per sentence) →
        cross-entropy of the original words at the masked positions. → (loss, accuracy)."""
        masked = mlm_positions(ids, text_len, prob, generator)
        fused = self.fuse(frames, frame_mask, ids, text_len, masked=masked)
        logits = self.lm_logits(fused.text[masked])
        target = ids[masked]
        return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()

    def plm_loss(self, frames: Tensor, frame_mask: Tensor, ids: Tensor, text_len: Tensor,
                 prefix: Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Prefix language modelling: a random prefix length p ∈ [1, n−1] per sentence (BOS is the shortest
        prefix); causal text, the bridges see the prefix only; next-token cross-entropy at positions p−1..n−2
        (the words after the prefix and EOS). → (loss, accuracy)."""
        if prefix is None:
            u = torch.rand(ids.shape[0], generator=generator).to(ids.device)
            prefix = torch.minimum(1 + (u * (text_len - 1).float()).long(), text_len - 1)
        fused = self.fuse(frames, frame_mask, ids, text_len, prefix=prefix, causal=True)
        pos = torch.arange(ids.shape[1] - 1, device=ids.device)[None]
        scored = (pos >= (prefix - 1)[:, None]) & (pos < (text_len - 1)[:, None])
        logits = self.lm_logits(fused.text[:, :-1][scored])
        target = ids[:, 1:][scored]
        return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()

    # -------------------------------------------------------------------------------- decoding
    def _next_logp(self, frames: Tensor, frame_mask: Tensor, seqs: Tensor) -> Tensor:
        """log p(next word | video, seqs) [N, V]; the bridges are regenerated from the whole prefix."""
        n, t = seqs.shape
        length = torch.full((n,), t, dtype=torch.long, device=seqs.device)
        fused = self.fuse(frames, frame_mask, seqs, length, prefix=length, causal=True)
        logp = torch.log_softmax(self.lm_logits(fused.text[:, -1]), -1)
        logp[:, [PAD, BOS, MASK]] = -torch.inf                   # EOS and the words remain
        return logp

    @torch.no_grad()
    def greedy(self, frames: Tensor, frame_mask: Tensor, max_words: int | None = None) -> list[list[int]]:
        """The most likely next word at each step, until EOS or max_words words."""
        max_words = max_words or self.cfg.max_words
        n = frames.shape[0]
        seqs = torch.full((n, 1), BOS, dtype=torch.long, device=frames.device)
        done = torch.zeros(n, dtype=torch.bool, device=frames.device)
        for _ in range(max_words):
            nxt = self._next_logp(frames, frame_mask, seqs).argmax(-1)
            nxt = nxt.masked_fill(done, PAD)
            done |= nxt == EOS
            seqs = torch.cat([seqs, nxt[:, None]], 1)
            if bool(done.all()):
                break
        return [_words(s[1:]) for s in seqs.tolist()]

    @torch.no_grad()
    def beam_search(self, frames: Tensor, frame_mask: Tensor, beam: int | None = None,
                    max_words: int | None = None, alpha: float | None = None) -> list[list[int]]:
        """Beam search: keep the `beam` best unfinished prefixes by summed log-probability; a prefix that
        takes EOS is finished with score log p / length^alpha (length: words + EOS); at max_words the open
        prefixes finish too. Returns the best finished word list per video."""
        beam = beam or self.cfg.beam_size
        max_words = max_words or self.cfg.max_words
        alpha = self.cfg.length_penalty if alpha is None else alpha
        n, dev = frames.shape[0], frames.device
        fr = frames.repeat_interleave(beam, 0)
        fm = frame_mask.repeat_interleave(beam, 0)
        seqs = torch.full((n * beam, 1), BOS, dtype=torch.long, device=dev)
        scores = torch.full((n, beam), -torch.inf, device=dev)
        scores[:, 0] = 0.0                                         # one live prefix at the start
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
        for step in range(max_words + 1):
            logp = self._next_logp(fr, fm, seqs)
            vocab = logp.shape[1]
            cand = scores[:, :, None] + logp.view(n, beam, vocab)
            length = step + 1
            ends = cand[:, :, EOS]
            for i, b in torch.nonzero(torch.isfinite(ends), as_tuple=False).tolist():
                finished[i].append((float(ends[i, b]) / length ** alpha, seqs[i * beam + b, 1:].tolist()))
            if step == max_words:
                break
            cand[:, :, EOS] = -torch.inf
            top, idx = cand.view(n, -1).topk(beam, dim=1)
            parent = idx // vocab + torch.arange(n, device=dev)[:, None] * beam
            seqs = torch.cat([seqs[parent.view(-1)], (idx % vocab).view(-1, 1)], 1)
            scores = top
        out = []
        for i in range(n):
            if not finished[i]:
                out.append(seqs[i * beam, 1:].tolist())
                continue
            out.append(max(finished[i], key=lambda s: s[0])[1])
        return [_words(s) for s in out]


def _words(ids: list[int]) -> list[int]:
    out = []
    for i in ids:
        if i in (EOS, PAD):
            break
        out.append(int(i))
    return out


def hard_negatives(dual: Tensor, same: Tensor, temp: float,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One negative per direction by a multinomial draw from the softmax of the dual-encoder similarities
    (`dual` [texts, videos] of a batch, pair i = text i with video i), pairs of the same video excluded."""
    logits = (dual.float() / temp).masked_fill(same, -torch.inf)
    if bool((~same).sum(1).eq(0).any()):
        raise ValueError("hard negatives: a batch needs at least two distinct videos")
    neg_video = torch.multinomial(torch.softmax(logits, 1).cpu(), 1, generator=generator).view(-1)
    neg_text = torch.multinomial(torch.softmax(logits, 0).t().cpu(), 1, generator=generator).view(-1)
    return neg_video.to(dual.device), neg_text.to(dual.device)


def mlm_positions(ids: Tensor, text_len: Tensor, prob: float,
                  generator: torch.Generator | None = None) -> Tensor:
    """Bernoulli(prob) over the word positions 1..n−2 of each sentence, at least one per sentence [B, T]."""
    b, t = ids.shape
    pos = torch.arange(t, device=ids.device)[None]
    words = (pos >= 1) & (pos < (text_len - 1)[:, None])
    draw = torch.rand(b, t, generator=generator).to(ids.device)
    masked = (draw < prob) & words
    # a sentence with no draw masks its word of lowest draw
    fallback = draw.masked_fill(~words, 2.0).argmin(1)
    none = ~masked.any(1) & words.any(1)
    masked[none, fallback[none]] = True
    return masked
