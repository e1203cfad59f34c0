"""What each ReCap level reads (§1.2), and the generated captions in the Ego4D-HCap layout.

- clip: the window's features (its lavila.zarr CLS row(s), or its clip.zarr frames);
- segment: `segment_feats` window features sampled uniformly inside the segment + the generated clip
  captions whose window starts inside it, joined with no separator;
- video: at most `video_feats` window features ("masking": more are sampled uniformly, fewer are zero-padded
  with a 0/1 mask) + the generated segment descriptions, joined in order.
Uniform sampling is ReCap's rule: indices int(k·N/(n+1)) for k = 1..n (repeats when N < n).

Cross-fitting (`cross_fit_folds`): the train videos are dealt into folds in sorted order; the train-split
captions a level writes for a video in fold k come from the model trained without fold k, so the level above
trains on captions as wrong as the ones it reads at test time.
"""
from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidmem.common import UserError

# generated-caption files per level, as the ego4d_hcap parser reads them
HCAP_FILES = {"clip": "clips_{split}.pkl", "segment": "segments_{split}.pkl", "video": "videos_{split}.json"}
LEVEL_INDEX = {"clip": 0, "segment": 1, "video": 2}


# ---------------------------------------------------------------------------------------------------- sampling
def uniform_indices(n_rows: int, n: int) -> list[int]:
    """ReCap's uniform sampling: int(k·N/(n+1)) for k = 1..n."""
    if n_rows <= 0:
        return []
    return [int(k * n_rows / (n + 1)) for k in range(1, n + 1)]


def masked_sample(feats: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """ReCap's "masking" sampling of a whole video: > k rows → k uniform; else zero-pad to k with a 0/1 mask."""
    n = len(feats)
    if n > k:
        return feats[uniform_indices(n, k)], np.ones(k, dtype=bool)
    out = np.zeros((k, feats.shape[1]), dtype=np.float32)
    out[:n] = feats
    mask = np.zeros(k, dtype=bool)
    mask[:n] = True
    return out, mask


def cross_fit_folds(videos: Sequence[str], folds: int) -> dict[str, int]:
    """The train videos dealt into `folds` folds: the i-th of the sorted ids goes to fold i mod folds."""
    return {v: i % folds for i, v in enumerate(sorted(videos))}


def windows(duration: float, step: float) -> list[tuple[float, float]]:
    """The fixed inference grid [k·step, min((k+1)·step, duration)) (ReCap: 4 s clips, 180 s segments)."""
    out, k = [], 0
    while k * step < duration - 1e-9:
        out.append((round(k * step, 3), round(min((k + 1) * step, duration), 3)))
        k += 1
    return out


def rows_in(times: np.ndarray, start: float, end: float) -> np.ndarray:
    """Rows whose window (or frame) starts in [start, end); at least the row nearest to start."""
    idx = np.nonzero((times >= start - 1e-6) & (times < end - 1e-6))[0]
    if len(idx) == 0 and len(times):
        idx = np.array([int(np.argmin(np.abs(times - start)))])
    return idx


def captions_inside(captions: Sequence[tuple[float, float, str]], start: float, end: float) -> list[str]:
    """The lower level's captions whose window starts in [start, end), in time order."""
    return [c for s, _, c in sorted(captions) if start - 1e-6 <= s < end - 1e-6]


# ---------------------------------------------------------------------------------------------------- samples
@dataclass
class Sample:
    """One caption to write: its inputs and (for training / scoring) its reference."""

    key: str                  # "<vid>@<start>-<end>"
    video_id: str
    level: str
    start: float
    end: float
    feats: np.ndarray         # [N, D] float32
    feat_mask: np.ndarray     # [N] bool
    kind: str                 # lavila | clip (which projection reads feats)
    text: list[int]           # lower-level caption word ids ([] at clip level / flat)
    target: list[int]         # reference word ids ([] when unknown)
    reference: str = ""


def key_of(vid: str, start: float, end: float) -> str:
    return f"{vid}@{start:g}-{end:g}"


@dataclass
class Batch:
    feats: torch.Tensor
    feat_mask: torch.Tensor
    kind: str
    level: int
    text: torch.Tensor | None
    text_mask: torch.Tensor | None
    ids: torch.Tensor         # BOS w1..wn (input)
    targets: torch.Tensor     # w1..wn EOS
    target_mask: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        mv = lambda t: None if t is None else t.to(device)
        return Batch(mv(self.feats), mv(self.feat_mask), self.kind, self.level, mv(self.text), mv(self.text_mask),
                     mv(self.ids), mv(self.targets), mv(self.target_mask))


def collate(samples: Sequence[Sample], use_text: bool) -> Batch:
    """Pad one level's samples (all share level and feature kind)."""
    if len({s.kind for s in samples}) != 1 or len({s.level for s in samples}) != 1:
        raise ValueError("a ReCap batch holds one level and one feature kind")
    n = max(len(s.feats) for s in samples)
    d = samples[0].feats.shape[1]
    feats = torch.zeros(len(samples), n, d)
    fmask = torch.zeros(len(samples), n, dtype=torch.bool)
    for i, s in enumerate(samples):
        feats[i, : len(s.feats)] = torch.from_numpy(np.asarray(s.feats, dtype=np.float32))
        fmask[i, : len(s.feats)] = torch.from_numpy(np.asarray(s.feat_mask, dtype=bool))
        if not fmask[i].any():      # an all-padding key set would give NaN attention
            fmask[i, 0] = True
    text = tmask = None
    if use_text and samples[0].level != "clip":
        t = max(1, max(len(s.text) for s in samples))
        text = torch.zeros(len(samples), t, dtype=torch.long)
        tmask = torch.zeros(len(samples), t, dtype=torch.bool)
        for i, s in enumerate(samples):
            text[i, : len(s.text)] = torch.tensor(s.text, dtype=torch.long)
            tmask[i, : max(1, len(s.text))] = True
    m = max(len(s.target) for s in samples) + 1
    ids = torch.zeros(len(samples), m, dtype=torch.long)
    tgt = torch.zeros(len(samples), m, dtype=torch.long)
    tm = torch.zeros(len(samples), m, dtype=torch.bool)
    for i, s in enumerate(samples):
        w = torch.tensor(s.target, dtype=torch.long)
        ids[i, 1 : len(w) + 1] = w
        tgt[i, : len(w)] = w
        tm[i, : len(w) + 1] = True          # the words and the EOS after them
    return Batch(feats, fmask, samples[0].kind, LEVEL_INDEX[samples[0].level], text, tmask, ids, tgt, tm)


# ---------------------------------------------------------------------------------------------------- HCap IO
def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def hcap_entries(level: str, vid: str, captions: Sequence[tuple[float, float, str]],
                 inputs: Sequence[Sequence[tuple[float, float, str]]] | None = None) -> list[Any]:
    """One video's generated captions as Ego4D-HCap entries (times in seconds from the video start).
    inputs: per caption, the lower-level captions it read (written as captions_pred /
    segment_descriptions_pred)."""
    if level == "clip":
        return [(vid, float(s), float(e), c) for s, e, c in captions]
    if level == "segment":
        return [{"vid": vid, "start_sec": float(s), "end_sec": float(e), "segment_description": c,
                 "captions_pred": [[vid, float(a), float(b), t] for a, b, t in (inputs[i] if inputs else [])]}
                for i, (s, e, c) in enumerate(captions)]
    return [{"vid": vid, "start_sec": float(s), "end_sec": float(e), "video_summary": c,
             "segment_descriptions_pred": [t for _, _, t in (inputs[i] if inputs else [])]}
            for i, (s, e, c) in enumerate(captions)]


def write_hcap(path: Path, level: str, entries: list[Any]) -> None:
    """Write one split's file. Entries pass through JSON first, so the pickle's bytes depend on the content
    alone (pickle shares repeated objects by identity: a resumed run's strings are other objects)."""
    text = json.dumps(entries, indent=1)
    if level == "video":
        write_atomic(path, text.encode())
        return
    plain = json.loads(text)
    if level == "clip":
        plain = [tuple(e) for e in plain]
    write_atomic(path, pickle.dumps(plain, protocol=4))


def read_hcap(folder: Path, level: str, split: str) -> dict[str, list[tuple[float, float, str]]]:
    """{vid: [(start, end, caption), ...]} from a caption stage's file (what the next level reads)."""
    path = Path(folder) / HCAP_FILES[level].format(split=split)
    if not path.is_file():
        raise UserError(f"{path}: generated {level} captions not found; run `dvc repro captions@{level}` first")
    if level == "video":
        data = json.loads(path.read_text())
        rows = [(d["vid"], d["start_sec"], d["end_sec"], d["video_summary"]) for d in data]
    else:
        with open(path, "rb") as f:
            data = pickle.load(f)
        if level == "clip":
            rows = [tuple(t) for t in data]
        else:
            rows = [(d["vid"], d["start_sec"], d["end_sec"], d["segment_description"]) for d in data]
    out: dict[str, list[tuple[float, float, str]]] = {}
    for vid, s, e, c in rows:
        out.setdefault(vid, []).append((float(s), float(e), c))
    return {v: sorted(cs) for v, cs in out.items()}


def join_captions(texts: Sequence[str]) -> str:
    """ReCap joins segment descriptions as "desc. desc."; clip captions with no separator (we keep a space:
    our word tokeniser drops the period anyway)."""
    return " ".join(t.strip().rstrip(".") + "." for t in texts if t.strip())


def as_list(x: Mapping[str, Any]) -> list[Any]:
    return [x[k] for k in sorted(x)]
