"""Dense-captioning data: per video, frame features + ground-truth events and tokenised sentences; batching.

Features come from anything with `get(video_id, name)` → array, i.e. `vidmem.store.FeatureStore` (`'feats'`
[T, D] float16, `'times'` [T] seconds) or `InMemoryFeatures`; annotations from the manifest (`events`, one
reference file = one annotator; training targets use annotator 0) with durations from `videos`.
Batches pad frames to the longest video and carry a validity mask that the model honours end to end.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vidmem.common import UserError
from vidmem.formats.vocab import Vocab

log = logging.getLogger(__name__)


class FeatureSource(Protocol):
    def get(self, video_id: str, name: str = "feats") -> np.ndarray: ...

    def __contains__(self, video_id: str) -> bool: ...


class InMemoryFeatures:
    """A FeatureSource over dicts (tests, small experiments): feats[vid] [T, D], times[vid] [T] seconds."""

    def __init__(self, feats: Mapping[str, np.ndarray], times: Mapping[str, np.ndarray],
                 **more: Mapping[str, np.ndarray]):
        """more: further per-frame arrays by name (e.g. queries=... for what CM2's memory reads)."""
        self.arrays = {"feats": dict(feats), "times": dict(times), **{k: dict(v) for k, v in more.items()}}

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.arrays["feats"]

    def get(self, video_id: str, name: str = "feats") -> np.ndarray:
        return self.arrays[name][video_id]


@dataclass
class VideoAnnotation:
    video_id: str
    duration: float  # seconds
    events: list[tuple[float, float]] = field(default_factory=list)  # (start, end) seconds
    sentences: list[str] = field(default_factory=list)


@dataclass
class DenseBatch:
    video_ids: list[str]
    feats: Tensor  # [B, T, D] float32, zeros at padding
    valid: Tensor  # [B, T] bool
    lengths: Tensor  # [B] frames per video
    times: Tensor  # [B, T] seconds, zeros at padding
    durations: Tensor  # [B] seconds
    boxes: list[Tensor]  # per video [n, 2] normalised (centre, length)
    tokens: list[Tensor]  # per video [n, max_words + 2] int64: 0, words, 0, padding 0
    n_words: list[Tensor]  # per video [n]
    queries: Tensor | None = None  # [B, T, D] what queries CM2's memory per frame (None: the frame features)

    def to(self, device: torch.device | str) -> DenseBatch:
        return DenseBatch(
            self.video_ids,
            self.feats.to(device),
            self.valid.to(device),
            self.lengths.to(device),
            self.times.to(device),
            self.durations.to(device),
            [b.to(device) for b in self.boxes],
            self.tokens,
            self.n_words,
            None if self.queries is None else self.queries.to(device),
        )


def resample_nearest(x: np.ndarray, n: int) -> np.ndarray:
    """PDVC's fixed-length resizing: nearest frame at n evenly spaced positions over [0, T−1]."""
    t = len(x)
    if t == n:
        return x
    idx = np.floor(np.linspace(0, t - 1, n) + 0.5).astype(np.int64) if n > 1 else np.zeros(1, np.int64)
    return x[np.clip(idx, 0, t - 1)]


class DenseCaptionDataset(Dataset):
    def __init__(
        self,
        videos: Sequence[VideoAnnotation],
        features: FeatureSource,
        vocab: Vocab,
        max_words: int = 30,
        resample_len: int = 0,
        where: str = "dense dataset",
        queries: str | None = None,
    ):
        """queries: the name of a per-frame array of `features`, row-aligned with 'feats', that CM2's memory
        retrieval reads instead of the frame features (`DenseTask` names it 'queries')."""
        self.videos = list(videos)
        self.queries = queries
        self.features = features
        self.vocab = vocab
        self.max_words = max_words
        self.resample_len = resample_len
        self.where = where
        self._validate()

    def _validate(self) -> None:
        missing = [v.video_id for v in self.videos if v.video_id not in self.features]
        if missing:
            raise UserError(
                f"{self.where}: {len(missing)} video(s) have no frame features, e.g. {missing[0]!r}; "
                "rerun the feature extraction or drop them from the annotations"
            )
        for v in self.videos:
            if not (math.isfinite(v.duration) and v.duration > 0):
                raise UserError(
                    f"{self.where}: video {v.video_id!r}: duration must be > 0 seconds, got {v.duration}"
                )
            if len(v.events) != len(v.sentences):
                raise UserError(
                    f"{self.where}: video {v.video_id!r}: {len(v.events)} events but "
                    f"{len(v.sentences)} sentences"
                )
            for i, (s, e) in enumerate(v.events):
                if not (math.isfinite(s) and math.isfinite(e) and 0 <= s <= e and s < v.duration):
                    raise UserError(
                        f"{self.where}: video {v.video_id!r} event {i}: timestamp [{s}, {e}] is not "
                        f"a segment inside the video (duration {v.duration})"
                    )

    @classmethod
    def from_manifest(
        cls,
        manifest,
        split: str,
        features: FeatureSource,
        vocab: Vocab | None = None,
        annotator: int | None = 0,
        max_words: int = 30,
        resample_len: int = 0,
        on_missing: str = "error",
        queries: str | None = None,
    ) -> DenseCaptionDataset:
        """Videos of `split` that have events of `annotator` (a `vidmem.manifest.Manifest`).

        annotator=None: every video of the split with events of any reference file (to predict on all of
        them); its targets are those of its lowest-numbered reference file.

        on_missing: 'error' (default) or 'skip' — skip, with a warning naming each, videos without features.
        """
        if on_missing not in ("error", "skip"):
            raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
        vocab = vocab or Vocab.from_json(manifest.vocab, "manifest vocab.json")
        index = manifest.video_index()
        videos = []
        for vid, rows in manifest.by_video(manifest.events, split).items():
            first = min(r.annotator for r in rows) if annotator is None else annotator
            rows = [r for r in rows if r.annotator == first]
            if not rows:
                continue
            if vid not in index or index[vid].duration is None:
                raise UserError(
                    f"manifest videos.jsonl: video {vid!r} (events of split {split!r}) has no duration"
                )
            if vid not in features and on_missing == "skip":  # with 'error', the constructor names them
                log.warning("dense %s: video %s has no frame features; skipped", split, vid)
                continue
            rows = sorted(rows, key=lambda r: (r.start, r.end))
            videos.append(
                VideoAnnotation(
                    vid,
                    float(index[vid].duration),
                    [(r.start, r.end) for r in rows],
                    [r.sentence for r in rows],
                )
            )
        return cls(
            videos, features, vocab, max_words, resample_len, where=f"manifest events, split {split!r}",
            queries=queries,
        )

    def __len__(self) -> int:
        return len(self.videos)

    def event_counts(self) -> list[int]:
        return [len(v.events) for v in self.videos]

    def __getitem__(self, i: int) -> dict[str, Any]:
        v = self.videos[i]
        feats = np.asarray(self.features.get(v.video_id, "feats"), dtype=np.float32)
        times = np.asarray(self.features.get(v.video_id, "times"), dtype=np.float32)
        if feats.ndim != 2 or len(feats) == 0 or len(times) != len(feats):
            raise UserError(
                f"{self.where}: video {v.video_id!r}: expected features [T>0, D] with T times, got "
                f"{feats.shape} and {times.shape}"
            )
        if not np.isfinite(feats).all():
            raise UserError(f"{self.where}: video {v.video_id!r}: frame features contain NaN or inf")
        queries = None
        if self.queries is not None:
            queries = np.asarray(self.features.get(v.video_id, self.queries), dtype=np.float32)
            if queries.shape != feats.shape:
                raise UserError(f"{self.where}: video {v.video_id!r}: {self.queries} vectors {queries.shape} do "
                                f"not match its frame features {feats.shape}")
        if self.resample_len:
            feats, times = (
                resample_nearest(feats, self.resample_len),
                resample_nearest(times, self.resample_len),
            )
            queries = None if queries is None else resample_nearest(queries, self.resample_len)
        se = np.clip(np.asarray(v.events, dtype=np.float32).reshape(-1, 2) / v.duration, 0.0, 1.0)
        boxes = (
            np.stack([(se[:, 0] + se[:, 1]) / 2, se[:, 1] - se[:, 0]], -1) if len(se) else np.zeros((0, 2))
        )
        tokens = np.zeros((len(v.sentences), self.max_words + 2), dtype=np.int64)
        n_words = np.zeros(len(v.sentences), dtype=np.int64)
        for j, s in enumerate(v.sentences):
            ids = self.vocab.encode(s, self.max_words)
            tokens[j, 1 : 1 + len(ids)] = ids
            n_words[j] = len(ids)
        return {
            "video_id": v.video_id,
            "feats": torch.from_numpy(feats),
            "times": torch.from_numpy(times),
            "duration": v.duration,
            "boxes": torch.as_tensor(boxes, dtype=torch.float32),
            "tokens": torch.from_numpy(tokens),
            "n_words": torch.from_numpy(n_words),
            **({} if queries is None else {"queries": torch.from_numpy(queries)}),
        }


def collate(items: Sequence[dict[str, Any]]) -> DenseBatch:
    lengths = torch.as_tensor([len(it["feats"]) for it in items], dtype=torch.int64)
    b, t, d = len(items), int(lengths.max()), items[0]["feats"].shape[1]
    feats = torch.zeros(b, t, d)
    times = torch.zeros(b, t)
    for i, it in enumerate(items):
        feats[i, : lengths[i]] = it["feats"]
        times[i, : lengths[i]] = it["times"]
    queries = None
    if "queries" in items[0]:
        queries = torch.zeros(b, t, items[0]["queries"].shape[1])
        for i, it in enumerate(items):
            queries[i, : lengths[i]] = it["queries"]
    valid = torch.arange(t)[None, :] < lengths[:, None]
    return DenseBatch(
        video_ids=[it["video_id"] for it in items],
        feats=feats,
        valid=valid,
        lengths=lengths,
        times=times,
        durations=torch.as_tensor([it["duration"] for it in items], dtype=torch.float32),
        boxes=[it["boxes"] for it in items],
        tokens=[it["tokens"] for it in items],
        n_words=[it["n_words"] for it in items],
        queries=queries,
    )
