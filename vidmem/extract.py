"""Feature extraction into the feature store: CLIP per frame, a TimeSformer per window, CLIP text per sentence.

Each extractor plans the store (item ids and row counts: frames, windows, or 1 per sentence) and computes the
rows of a batch of items. Videos are decoded in bounded batches with a prefetch thread; compute is per item with
a fixed batch partition, so a video's rows are identical whichever process computes them and whatever else is
in its shard (the store's resume and torchrun guarantees rest on that).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidmem.decode import DecodeError, batched, frame_times, open_video, prefetch, read_frames, video_end, window_frames
from vidmem.manifest import Manifest
from vidmem.store import ArraySpec

log = logging.getLogger(__name__)


@dataclass
class VideoItem:
    video_id: str
    path: Path
    n_rows: int


@dataclass
class Plan:
    """What goes into a store: items with their row counts, plus every input that could not be used."""

    ids: list[str]
    lengths: list[int]
    paths: list[Path]
    failed: dict[str, str]


def plan_videos(manifest: Manifest, compressed: Path, compress_ledger: dict[str, dict[str, Any]],
                rows_of: Any) -> Plan:
    """Open every manifest video's compressed file; `rows_of(vr)` gives its row count.

    Videos that failed compression or do not decode are listed in `failed` with the reason, never stored.
    """
    ids, lengths, paths, failed = [], [], [], {}
    for v in manifest.videos:
        row = compress_ledger.get(v.video_id)
        if row is not None and row.get("status") != "done":
            failed[v.video_id] = f"compress failed: {row.get('reason', 'unknown')}"
            continue
        path = compressed / f"{v.video_id}.mp4"
        try:
            vr = open_video(path)
            n = int(rows_of(vr))
        except DecodeError as e:
            failed[v.video_id] = str(e)
            continue
        ids.append(v.video_id)
        lengths.append(n)
        paths.append(path)
    return Plan(ids, lengths, paths, failed)


@torch.inference_mode()
def _forward_batches(fn, batches: Iterator[np.ndarray]) -> np.ndarray:
    outs = [fn(b) for b in prefetch(batches)]
    return np.concatenate(outs) if outs else np.zeros((0,))


class ClipFrameExtractor:
    """CLIP image embedding of every frame, with its timestamp."""

    kind = "clip"

    def __init__(self, encoder, batch_size: int):
        self.encoder = encoder
        self.batch_size = batch_size

    def arrays(self) -> dict[str, ArraySpec]:
        return {"feats": ArraySpec((self.encoder.embed_dim,), "float16"), "times": ArraySpec((), "float32")}

    @staticmethod
    def rows_of(vr) -> int:
        return len(vr)

    def _encode(self, frames: np.ndarray) -> np.ndarray:
        x = self.encoder.preprocess(torch.from_numpy(frames))
        return self.encoder.encode_image(x).float().numpy()

    def compute(self, path: Path) -> dict[str, np.ndarray]:
        vr = open_video(path)
        times = frame_times(vr)
        batches = (read_frames(vr, range(a, b)) for a, b in batched(len(vr), self.batch_size))
        feats = _forward_batches(self._encode, batches)
        return {"feats": feats.astype(np.float16), "times": times.astype(np.float32)}


class WindowExtractor:
    """TimeSformer CLS per window of `frames` frames sampled from real timestamps (LaViLa-style)."""

    kind = "lavila"

    def __init__(self, encoder, batch_size: int, window: float, frames: int, dense_tokens: bool = False):
        self.encoder = encoder
        self.batch_size = batch_size
        self.window = window
        self.frames = frames
        self.dense_tokens = dense_tokens

    def arrays(self) -> dict[str, ArraySpec]:
        width = self.encoder.visual.cfg.width
        out = {"feats": ArraySpec((width,), "float16"), "times": ArraySpec((), "float32")}
        if self.dense_tokens:
            n_tok = self.frames * self.encoder.visual.cfg.patches_per_frame  # patch tokens; CLS is `feats`
            out["tokens"] = ArraySpec((n_tok, width), "float16")
        return out

    def rows_of(self, vr) -> int:
        times = frame_times(vr)
        starts, _ = window_frames(times, video_end(vr), self.window, self.frames)
        return len(starts)

    def _encode(self, clips: np.ndarray) -> np.ndarray:
        x = self.encoder.preprocess(torch.from_numpy(clips))
        if self.dense_tokens:
            return self.encoder.visual.forward_features(x).float().numpy()  # [B, 1 + T*P, W], CLS first
        return self.encoder(x).float().numpy()

    def compute(self, path: Path) -> dict[str, np.ndarray]:
        vr = open_video(path)
        times = frame_times(vr)
        starts, idx = window_frames(times, video_end(vr), self.window, self.frames)

        def clips() -> Iterator[np.ndarray]:
            for a, b in batched(len(starts), self.batch_size):
                flat = read_frames(vr, idx[a:b].reshape(-1))
                yield flat.reshape(b - a, self.frames, *flat.shape[1:])

        out = _forward_batches(self._encode, clips())
        result = {"times": starts.astype(np.float32)}
        if self.dense_tokens:
            result["feats"] = out[:, 0].astype(np.float16)
            result["tokens"] = out[:, 1:].astype(np.float16)
        else:
            result["feats"] = out.astype(np.float16)
        return result


class TextExtractor:
    """CLIP text tower: the projected sentence vector and the per-token features of every sentence."""

    kind = "text"

    def __init__(self, encoder, batch_size: int, max_tokens: int):
        self.encoder = encoder
        self.batch_size = batch_size
        self.max_tokens = min(max_tokens, encoder.context_length)

    def arrays(self) -> dict[str, ArraySpec]:
        return {
            "sentence": ArraySpec((self.encoder.embed_dim,), "float16"),
            "tokens": ArraySpec((self.max_tokens, self.encoder.text_width), "float16"),
            "n_tokens": ArraySpec((), "int32"),
        }

    @torch.inference_mode()
    def compute_many(self, texts: list[str]) -> list[dict[str, np.ndarray]]:
        out = []
        for a, b in batched(len(texts), self.batch_size):
            tokens = self.encoder.tokenize(texts[a:b])
            feats, eot = self.encoder.text_tokens(tokens)
            sent = self.encoder.encode_text(tokens).float().numpy()
            n = np.minimum(eot.numpy() + 1, self.max_tokens)
            tok = feats[:, : self.max_tokens].float().numpy()
            for i in range(b - a):
                t = tok[i].copy()
                t[n[i]:] = 0.0  # positions after EOT are padding
                out.append({"sentence": sent[i : i + 1].astype(np.float16),
                            "tokens": t[None].astype(np.float16),
                            "n_tokens": np.asarray([n[i]], dtype=np.int32)})
        return out


def manifest_texts(manifest: Manifest) -> list[str]:
    """Every distinct sentence the families encode, in a stable order (first appearance by table)."""
    seen: dict[str, None] = {}
    for rows, field in ((manifest.events, "sentence"), (manifest.queries, "sentence"),
                        (manifest.captions, "sentence"), (manifest.hierarchy, "text"), (manifest.qa, "question")):
        for r in rows:
            seen.setdefault(getattr(r, field), None)
    return list(seen)
