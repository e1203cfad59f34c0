"""A video's grounding queries and its clip features, read once and kept in memory (SynthVid is small).

Queries keep their annotation order (`query_idx`, the index in the video's annotation); they are never sorted
by ground-truth time. Training shuffles them per epoch; the model has no positional embedding on them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vidmem.common import UserError
from vidmem.manifest import Manifest


@dataclass
class QueryItem:
    vid: str
    query_idx: int
    query: str
    start: float      # seconds
    end: float
    audio: str | None = None
    key: str = ""     # the row key of its query store (text.zarr: the sentence; audio.zarr: the query id)


@dataclass
class VideoItem:
    vid: str
    duration: float
    clips: np.ndarray                           # [pre_clips, D] float32, L2-normalised
    queries: list[QueryItem] = field(default_factory=list)

    def relative(self) -> np.ndarray:
        """[Q, 2] GT moments as fractions of the duration."""
        m = np.array([[q.start, q.end] for q in self.queries], dtype=np.float32) / max(self.duration, 1e-6)
        return m.clip(0, 1)


def avgfeats(feats: np.ndarray, n: int) -> np.ndarray:
    """MMN/MRNet's `avgfeats`: resample [T, D] to [n, D] by averaging index ranges (a range that rounds to
    empty takes its start row)."""
    t = len(feats)
    idx = np.clip(np.round(np.arange(n + 1) / n * t).astype(int), None, t - 1)
    return np.stack([feats[s:e].mean(0) if s < e else feats[s] for s, e in zip(idx[:-1], idx[1:])])


def prepare_clips(feats: np.ndarray, pre_clips: int) -> np.ndarray:
    f = np.asarray(feats, dtype=np.float32)
    f = f / np.linalg.norm(f, axis=-1, keepdims=True).clip(min=1e-6)
    return avgfeats(f, pre_clips).astype(np.float32)


def manifest_queries(manifest: Manifest, split: str, speech: bool) -> dict[str, list[QueryItem]]:
    """A split's queries per video, once each (SynthVid lists a query under several annotation sources:
    the first occurrence of (video, start, end, sentence) wins; for speech only queries with a WAV count)."""
    seen: set[tuple] = set()
    out: dict[str, list[QueryItem]] = {}
    rows = [q for q in manifest.queries if q.split == split and (q.audio or not speech)]
    for q in rows:
        key = (q.video_id, q.start, q.end, q.sentence)
        if key in seen:
            continue
        seen.add(key)
        idx = int(q.query_id.rsplit("/", 1)[-1]) if q.query_id.rsplit("/", 1)[-1].isdigit() else len(out.get(q.video_id, []))
        out.setdefault(q.video_id, []).append(QueryItem(q.video_id, idx, q.sentence, q.start, q.end, q.audio,
                                                        q.query_id if speech else q.sentence))
    return out


class QueryFeatures:
    """Query inputs by row key: text (sentence [Dt], tokens [T, Dt], n_tokens) or speech (mel [T, M], n)."""

    def __init__(self, rows: Mapping[str, tuple[np.ndarray, ...]]):
        self.rows = dict(rows)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def collate(self, keys: Sequence[Sequence[str]]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Per video a list of keys → batched inputs [B, Q, ...] (zero-padded) and query_valid [B, Q]."""
        b, qmax = len(keys), max(len(k) for k in keys)
        first = next(self.rows[k] for ks in keys for k in ks)
        valid = torch.zeros(b, qmax, dtype=torch.bool)
        if len(first) == 3:                                    # text
            sent = torch.zeros(b, qmax, first[0].shape[-1])
            tok = torch.zeros(b, qmax, *first[1].shape)
            n = torch.zeros(b, qmax, dtype=torch.long)
            for i, ks in enumerate(keys):
                for j, k in enumerate(ks):
                    s, t, c = self.rows[k]
                    sent[i, j], tok[i, j], n[i, j], valid[i, j] = torch.from_numpy(s), torch.from_numpy(t), int(c), True
            return (sent, tok, n), valid
        tmax = max(len(self.rows[k][0]) for ks in keys for k in ks)
        mel = torch.zeros(b, qmax, tmax, first[0].shape[-1])
        n = torch.zeros(b, qmax, dtype=torch.long)
        for i, ks in enumerate(keys):
            for j, k in enumerate(ks):
                m = self.rows[k][0]
                mel[i, j, : len(m)], n[i, j], valid[i, j] = torch.from_numpy(m), len(m), True
        return (mel, n), valid


def check_split(videos: list[VideoItem], split: str) -> None:
    if not videos:
        raise UserError(f"manifest: split {split!r} has no grounding queries with clip features")
