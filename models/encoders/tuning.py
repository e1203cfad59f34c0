"""Contrastive tuning of the CLIP towers on (frame, caption) pairs of the train split.

Every train sentence tied to a time span (dense events, grounding queries, clip captions) pairs with frames
inside its span; whole-video captions pair with any frame of their video. A frame's positives are *all* the
texts valid at its time (events overlap), so the symmetric InfoNCE uses multi-positive targets over the
batch's distinct sentences — identical sentences in one batch are one text, never each other's negatives.

Evaluation: frame → sentence retrieval on a split — each event's middle frame ranks all distinct event
sentences of the split; a hit when a sentence valid at that frame is ranked first (R@1) or in the top 5.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidmem.decode import DecodeError, frame_times, open_video, read_frames
from vidmem.manifest import Manifest

log = logging.getLogger(__name__)


@dataclass
class TuningConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 20
    frames_per_text: int = 1          # frames sampled per (sentence, span) each epoch
    videos_per_chunk: int = 256       # videos decoded together; pairs are shuffled within a chunk
    grad_clip: float = 1.0
    seed: int = 0
    tables: tuple[str, ...] = ("events", "queries", "captions", "hierarchy")

    @classmethod
    def from_params(cls, p: dict) -> TuningConfig:
        p = dict(p)
        if "tables" in p:
            p["tables"] = tuple(p["tables"])
        return cls(**p)


@dataclass
class Span:
    text: str
    start: float  # seconds; whole-video captions span the whole video
    end: float


@dataclass
class VideoTexts:
    video_id: str
    path: Path
    spans: list[Span] = field(default_factory=list)

    def valid_at(self, t: float) -> set[str]:
        return {s.text for s in self.spans if s.start <= t <= s.end}


def collect_spans(manifest: Manifest, split: str, compressed: Path, tables: tuple[str, ...]) -> list[VideoTexts]:
    videos: dict[str, VideoTexts] = {}
    seen: set[tuple[str, str, float, float]] = set()

    def add(vid: str, text: str, start: float, end: float) -> None:
        path = compressed / f"{vid}.mp4"
        if not path.is_file() or (vid, text, start, end) in seen:
            return  # failed compression (listed in the compress ledger), or the same span from another file
        seen.add((vid, text, start, end))
        videos.setdefault(vid, VideoTexts(vid, path)).spans.append(Span(text, start, end))

    if "events" in tables:
        for e in manifest.events:
            if e.split == split and e.annotator == 0:
                add(e.video_id, e.sentence, e.start, e.end)
    if "queries" in tables:
        for q in manifest.queries:
            if q.split == split:
                add(q.video_id, q.sentence, q.start, q.end)
    if "captions" in tables:
        for c in manifest.captions:
            if c.split == split:
                add(c.video_id, c.sentence, 0.0, math.inf)
    if "hierarchy" in tables:
        for h in manifest.hierarchy:
            if h.split == split and h.level == "clip":
                add(h.video_id, h.text, h.start, h.end)
    return [videos[k] for k in sorted(videos)]


@dataclass
class Pair:
    frame: torch.Tensor  # preprocessed [3, S, S] float16 (videos differ in size and orientation)
    valid: frozenset[str]


def sample_pairs(video: VideoTexts, k: int, rng: np.random.Generator,
                 transform: Callable[[torch.Tensor], torch.Tensor]) -> list[Pair]:
    """k frames inside each span of the video (all its frames are candidates for whole-video captions)."""
    try:
        vr = open_video(video.path)
    except DecodeError as e:
        log.warning("skipping %s: %s", video.video_id, e)
        return []
    times = frame_times(vr)
    picks: list[int] = []
    for s in video.spans:
        inside = np.flatnonzero((times >= s.start) & (times <= s.end))
        if len(inside) == 0:  # a span shorter than the frame spacing: nearest frame
            inside = np.asarray([int(np.argmin(np.abs(times - (s.start + min(s.end, times[-1])) / 2)))])
        picks.extend(rng.choice(inside, size=min(k, len(inside)), replace=False).tolist())
    frames = transform(torch.from_numpy(read_frames(vr, picks))).to(torch.float16)  # half the memory
    return [Pair(frames[i], frozenset(video.valid_at(times[p]))) for i, p in enumerate(picks)]


def iter_batches(videos: list[VideoTexts], cfg: TuningConfig, rng: np.random.Generator,
                 transform: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[list[Pair]]:
    order = rng.permutation(len(videos))
    for a in range(0, len(order), cfg.videos_per_chunk):
        pairs: list[Pair] = []
        for i in order[a : a + cfg.videos_per_chunk]:
            pairs.extend(sample_pairs(videos[i], cfg.frames_per_text, rng, transform))
        perm = rng.permutation(len(pairs))
        for b in range(0, len(perm), cfg.batch_size):
            batch = [pairs[j] for j in perm[b : b + cfg.batch_size]]
            if len(batch) > 1:
                yield batch


def multi_positive_infonce(img: torch.Tensor, txt: torch.Tensor, pos: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with a 0/1 positive matrix pos [n_img, n_txt] (each row and column has ≥1 positive)."""
    logits = scale * img @ txt.t()
    t_i = pos / pos.sum(1, keepdim=True)
    t_t = pos.t() / pos.t().sum(1, keepdim=True)
    loss_i = -(t_i * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(t_t * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def batch_loss(encoder, batch: list[Pair]) -> torch.Tensor:
    texts = sorted(set().union(*(p.valid for p in batch)))
    col = {t: j for j, t in enumerate(texts)}
    pos = torch.zeros(len(batch), len(texts))
    for i, p in enumerate(batch):
        for t in p.valid:
            pos[i, col[t]] = 1.0
    img = encoder.encode_image(torch.stack([p.frame for p in batch]).float(), normalize=True)
    txt = encoder.encode_text(encoder.tokenize(texts), normalize=True)
    scale = encoder.model.logit_scale.exp().clamp(max=100)
    return multi_positive_infonce(img, txt, pos, scale)


@torch.inference_mode()
def frame_to_text_retrieval(encoder, videos: list[VideoTexts], manifest: Manifest, split: str) -> dict[str, float]:
    """R@1 / R@5 of each event's middle frame against all distinct event sentences of the split."""
    encoder.eval()
    events = [e for e in manifest.events if e.split == split and e.annotator == 0]
    by_vid = {v.video_id: v for v in videos}
    sentences = sorted({e.sentence for e in events if e.video_id in by_vid})
    if not sentences:
        return {"r1": float("nan"), "r5": float("nan"), "chance_r1": float("nan"), "queries": 0}
    col = {s: j for j, s in enumerate(sentences)}
    txt = torch.cat([encoder.encode_text(encoder.tokenize(sentences[a : a + 256]), normalize=True)
                     for a in range(0, len(sentences), 256)])
    per_video: dict[str, list] = defaultdict(list)
    for e in events:
        if e.video_id in by_vid:
            per_video[e.video_id].append(e)
    r1 = r5 = chance = 0.0
    n = 0
    for vid, evs in per_video.items():
        video = by_vid[vid]
        vr = open_video(video.path)
        times = frame_times(vr)
        idx = [int(np.argmin(np.abs(times - (e.start + e.end) / 2))) for e in evs]
        frames = read_frames(vr, idx)
        img = encoder.encode_image(encoder.preprocess(torch.from_numpy(frames)), normalize=True)
        ranks = (img @ txt.t()).argsort(dim=1, descending=True)
        for i, e in enumerate(evs):
            valid = {col[s.text] for s in video.spans if s.start <= times[idx[i]] <= s.end and s.text in col}
            valid.add(col[e.sentence])
            top = ranks[i].tolist()
            r1 += float(top[0] in valid)
            r5 += float(any(j in valid for j in top[:5]))
            chance += len(valid) / len(sentences)
            n += 1
    return {"r1": r1 / n, "r5": r5 / n, "chance_r1": chance / n, "queries": n}


def lr_at(step: int, total: int, cfg: TuningConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def tune(encoder, train: list[VideoTexts], cfg: TuningConfig, state: dict | None = None,
         on_epoch: Callable[[int, float, dict], None] | None = None) -> dict:
    """Train in place; resumes from `state` ({'epoch', 'optimizer', 'rng'}) when given. Returns the final state."""
    model = encoder.model
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    start = 0
    if state:
        opt.load_state_dict(state["optimizer"])
        start = state["epoch"]
    steps_per_epoch = max(1, sum(len(v.spans) for v in train) * cfg.frames_per_text // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    step = start * steps_per_epoch
    for epoch in range(start, cfg.epochs):
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 1000 + epoch)
        losses = []
        for batch in iter_batches(train, cfg, rng, encoder.preprocess):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, cfg)
            loss = batch_loss(encoder, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            step += 1
        state = {"epoch": epoch + 1, "optimizer": opt.state_dict()}
        model.eval()
        if on_epoch:
            on_epoch(epoch + 1, float(np.mean(losses)) if losses else float("nan"), state)
    return state or {"epoch": start, "optimizer": opt.state_dict()}
