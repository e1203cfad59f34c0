"""Retrieval data: the manifest's `captions` table (several sentences per video, MSR-VTT style), frames sampled
uniformly in time from the clip store (or decoded from the compressed videos, end to end) and the word tokens
of the text store. Everything is small and read once into memory.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.retrieval.model import TextInputs, VideoInputs
from vidmem.common import UserError
from vidmem.manifest import Manifest

log = logging.getLogger(__name__)


def uniform_frames(times: np.ndarray, k: int) -> np.ndarray:
    """Indices of ≤ k frames at uniformly spaced times over [first, last] (all frames when there are ≤ k)."""
    n = len(times)
    if n <= k:
        return np.arange(n)
    targets = np.linspace(float(times[0]), float(times[-1]), k)
    return np.clip(np.searchsorted(times, targets, side="left"), 0, n - 1)


@dataclass
class Split:
    """Rows (texts) and columns (videos) of one split's retrieval matrix."""

    caption_ids: list[str]
    sentences: list[str]
    text_video: list[int]                         # column index of each row's video
    videos: list[str]
    by_video: list[list[int]] = field(default_factory=list)   # row indices of each video's captions
    missing: list[str] = field(default_factory=list)          # videos of the split without frames, left out
    texts_missing: int = 0                                    # ... and their captions

    @classmethod
    def from_manifest(cls, manifest: Manifest, split: str, available: set[str] | None = None) -> Split:
        rows = [c for c in manifest.captions if c.split == split]
        missing = sorted({c.video_id for c in rows if available is not None and c.video_id not in available})
        n_rows = len(rows)
        if missing:
            log.warning("%s: %d video(s) without frames left out: %s", split, len(missing), ", ".join(missing[:5]))
            rows = [c for c in rows if c.video_id not in missing]
        videos = list(dict.fromkeys(c.video_id for c in rows))
        col = {v: j for j, v in enumerate(videos)}
        s = cls([c.caption_id for c in rows], [c.sentence for c in rows], [col[c.video_id] for c in rows], videos)
        s.by_video = [[] for _ in videos]
        s.missing, s.texts_missing = missing, n_rows - len(rows)
        for i, j in enumerate(s.text_video):
            s.by_video[j].append(i)
        return s

    def __len__(self) -> int:
        return len(self.caption_ids)

    def coverage(self) -> dict[str, Any]:
        """What the split's scores leave out: videos without frames (failed compression or extraction)."""
        return {"n_videos_missing": len(self.missing), "videos_missing": list(self.missing),
                "n_texts_missing": self.texts_missing}

    def row_ids(self) -> list[dict[str, str]]:
        return [{"text_id": t, "video_id": self.videos[j], "sentence": s}
                for t, j, s in zip(self.caption_ids, self.text_video, self.sentences)]


class StoredTexts:
    """Word tokens / n_tokens / sentence vectors of the text store, keyed by sentence, cut to max_words.
    Read in one orthogonal selection per array (a read per sentence costs ~5 ms)."""

    def __init__(self, store, sentences: Sequence[str], max_words: int):
        uniq = list(dict.fromkeys(sentences))
        for s in uniq:
            if s not in store:
                raise UserError(f"{store.path}: no features for the sentence {s!r}; rerun `dvc repro extract@text`")
        rows = np.asarray([store.rows(s)[0] for s in uniq], dtype=np.int64)
        order = np.argsort(rows)
        pick = np.empty_like(order)
        pick[order] = np.arange(len(order))

        def read(name: str) -> np.ndarray:
            return np.asarray(store.array(name).oindex[rows[order]])[pick] if len(rows) else np.zeros((0,))

        tokens, sentence, n = read("tokens"), read("sentence"), read("n_tokens")
        self.tokens = {s: np.asarray(tokens[i, :max_words], dtype=np.float32) for i, s in enumerate(uniq)}
        self.sentence = {s: np.asarray(sentence[i], dtype=np.float32) for i, s in enumerate(uniq)}
        self.n = {s: int(min(int(n[i]), max_words)) for i, s in enumerate(uniq)}

    @classmethod
    def from_arrays(cls, tokens: dict[str, np.ndarray], sentence: dict[str, np.ndarray], n: dict[str, int]) -> StoredTexts:
        """In memory (tests, notebooks): per sentence tokens [L, W], sentence [E] and n_tokens."""
        out = cls.__new__(cls)
        out.tokens, out.sentence, out.n = dict(tokens), dict(sentence), dict(n)
        return out

    def batch(self, sentences: Sequence[str]) -> TextInputs:
        return TextInputs(n_tokens=torch.tensor([self.n[s] for s in sentences]),
                          tokens=torch.from_numpy(np.stack([self.tokens[s] for s in sentences])),
                          sentence=torch.from_numpy(np.stack([self.sentence[s] for s in sentences])))


class StoredFrames:
    """`max_frames` frame features per video, uniformly sampled by the store's timestamps, zero-padded."""

    def __init__(self, store, videos: Sequence[str], max_frames: int):
        uniq = list(dict.fromkeys(videos))
        times = np.asarray(store.array("times")[:], dtype=np.float64)
        picks = []
        for v in uniq:
            a, b = store.rows(v)
            picks.append(a + uniform_frames(times[a:b], max_frames))
        flat = np.concatenate(picks) if picks else np.zeros(0, np.int64)
        uniq_rows, inverse = np.unique(flat, return_inverse=True)
        feats = np.asarray(store.array("feats").oindex[uniq_rows], dtype=np.float32)[inverse]
        self.feats: dict[str, np.ndarray] = {}
        at = 0
        for v, p in zip(uniq, picks):
            self.feats[v] = feats[at: at + len(p)]
            at += len(p)
        self.max_frames = max_frames

    @classmethod
    def from_arrays(cls, feats: dict[str, np.ndarray], max_frames: int) -> StoredFrames:
        """In memory (tests, notebooks): per video its (already sampled) frame features [≤ max_frames, E]."""
        out = cls.__new__(cls)
        out.feats, out.max_frames = {v: np.asarray(f, np.float32) for v, f in feats.items()}, max_frames
        return out

    def batch(self, videos: Sequence[str]) -> VideoInputs:
        dim = next(iter(self.feats.values())).shape[1]
        x = np.zeros((len(videos), self.max_frames, dim), np.float32)
        m = np.zeros((len(videos), self.max_frames), np.float32)
        for i, v in enumerate(videos):
            f = self.feats[v]
            x[i, : len(f)], m[i, : len(f)] = f, 1
        return VideoInputs(mask=torch.from_numpy(m), feats=torch.from_numpy(x))


class DecodedFrames:
    """End to end: `max_frames` frames per video decoded from its compressed file and preprocessed for the
    tower (uniform in time by the container's timestamps), kept as float16."""

    def __init__(self, paths_of: dict[str, Path], max_frames: int, preprocess):
        from vidmem.decode import frame_times, open_video, read_frames

        self.pixels: dict[str, torch.Tensor] = {}
        for v, path in paths_of.items():
            vr = open_video(path)
            idx = uniform_frames(frame_times(vr), max_frames)
            self.pixels[v] = preprocess(read_frames(vr, idx)).half()
        self.max_frames = max_frames

    def batch(self, videos: Sequence[str]) -> VideoInputs:
        first = next(iter(self.pixels.values()))
        x = torch.zeros((len(videos), self.max_frames, *first.shape[1:]))
        m = torch.zeros((len(videos), self.max_frames))
        for i, v in enumerate(videos):
            p = self.pixels[v]
            x[i, : len(p)], m[i, : len(p)] = p.float(), 1
        return VideoInputs(mask=m, pixels=x)


class TokenizedTexts:
    """End to end: token ids for the tower; n_tokens = EOT position + 1, cut to max_words."""

    def __init__(self, encoder, max_words: int):
        self.encoder, self.max_words = encoder, max_words

    def batch(self, sentences: Sequence[str]) -> TextInputs:
        ids = self.encoder.tokenize(list(sentences))
        n = (self.encoder.eot_index(ids) + 1).clamp(max=self.max_words)
        return TextInputs(n_tokens=n, ids=ids)
