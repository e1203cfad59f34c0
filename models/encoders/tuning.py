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
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from torch import nn

from models.encoders.clip import ClipConfig, build_clip
from vidmem.common import UserError
from vidmem.decode import DecodeError, frame_times, open_video, read_frames
from vidmem.manifest import Manifest
from vidmem.params import bounded, read, to_dict
from vidmem.paths import Paths
from vidmem.training import EpochContext, Task, read_task_params

log = logging.getLogger(__name__)


TABLES = ("events", "queries", "captions", "hierarchy")


@dataclass
class TuningConfig:
    """What the tuning pairs are (`finetune_clip` params beside the recipe's optimisation keys)."""

    frames_per_text: int = bounded(1, lo=1)  # frames sampled per (sentence, span) each epoch
    videos_per_chunk: int = bounded(256, lo=1)  # videos decoded together; pairs are shuffled within a chunk
    tables: tuple[Literal["events", "queries", "captions", "hierarchy"], ...] = TABLES


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


def iter_batches(videos: list[VideoTexts], cfg: TuningConfig, batch_size: int, rng: np.random.Generator,
                 transform: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[list[Pair]]:
    order = rng.permutation(len(videos))
    for a in range(0, len(order), cfg.videos_per_chunk):
        pairs: list[Pair] = []
        for i in order[a : a + cfg.videos_per_chunk]:
            pairs.extend(sample_pairs(videos[i], cfg.frames_per_text, rng, transform))
        perm = rng.permutation(len(pairs))
        for b in range(0, len(perm), batch_size):
            batch = [pairs[j] for j in perm[b : b + batch_size]]
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


# ---------------------------------------------------------------------------------------------------- task
class ClipTuningTask(Task):
    """finetune_clip on the shared recipe: the open_clip model is the trained module; the validation score is
    val frame→sentence R@1 + R@5, and `keep_initial` lets the untuned weights win (epochs: 0 keeps them)."""

    family = "encoders"
    code = ("models/encoders", "vidmem/decode.py", "stages/finetune_clip.py")

    def __init__(self, name: str, recipe, config: TuningConfig, paths: Paths, params=None):
        super().__init__(name, recipe, config, paths, params)
        self.clip_cfg = read(ClipConfig, (params or {}).get("clip"), "clip")
        self.encoder = None
        self._manifest: Manifest | None = None
        self._train: list[VideoTexts] | None = None
        self._val: list[VideoTexts] | None = None

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = Manifest.read(self.paths.manifest)
        return self._manifest

    @property
    def train_videos(self) -> list[VideoTexts]:
        if self._train is None:
            self._train = collect_spans(self.manifest, "train", self.paths.compressed, self.config.tables)
        return self._train

    @property
    def val_videos(self) -> list[VideoTexts]:
        if self._val is None:
            self._val = collect_spans(self.manifest, "val", self.paths.compressed, ("events",))
        return self._val

    def inputs(self) -> list[Path]:
        return [self.paths.manifest, self.paths.compress_ledger]

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "clip": to_dict(self.clip_cfg)}

    def all_params(self) -> dict[str, Any]:
        return {**super().all_params(), "clip": to_dict(self.clip_cfg)}

    def build(self) -> nn.Module:
        self.encoder = build_clip(self.clip_cfg, self.device)
        return self.encoder.model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """CLIP's rule: no weight decay on gains, biases and embeddings."""
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        return [{"params": decay, "weight_decay": self.recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}]

    def steps_per_epoch(self) -> int:
        pairs = sum(len(v.spans) for v in self.train_videos) * self.config.frames_per_text
        return max(1, pairs // self.recipe.batch_size)

    def batches(self, ctx: EpochContext) -> Iterator[list[Pair]]:
        return iter_batches(self.train_videos, self.config, self.recipe.batch_size, ctx.rng(),
                            self.encoder.preprocess)

    def step(self, model: nn.Module, batch: list[Pair]) -> tuple[torch.Tensor, dict[str, float]]:
        loss = batch_loss(self.encoder, batch)
        return loss, {"loss": loss.item()}

    def after_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        r = frame_to_text_retrieval(self.encoder, self.val_videos, self.manifest, "val")
        log.info("after %d epoch(s): val frame→sentence R@1 %.3f R@5 %.3f (chance %.3f, %d queries)",
                 epoch, r["r1"], r["r5"], r["chance_r1"], r["queries"])
        return {**r, "score": r["r1"] + r["r5"]}


def make_tuning_task(params: dict[str, Any], paths: Paths) -> ClipTuningTask:
    recipe, cfg = read_task_params(TuningConfig, [(params.get("finetune_clip"), "finetune_clip")])
    if recipe.select_by not in ("r1_r5",):
        raise UserError("params.yaml finetune_clip.select_by: must be r1_r5 (val frame→sentence R@1 + R@5)")
    return ClipTuningTask("clip", recipe, cfg, paths, params)
