"""The text memory bank: one CLIP text vector per train event sentence, with the sentence and its video id.

Built from the text feature store (the tuned CLIP text tower's projected sentence vectors, the same space as
the frame features) and the manifest's train events, one entry per (video, sentence) in manifest order —
CM2's three bank files (embeddings, sentences, video ids) as one zarr group:

    feats       (N, E) float16 sentence vectors
    ids         (N,)   entry ids "<video_id>/<k>"
    sentences   (N,)   str
    video_ids   (N,)   str   (retrieval excludes a video's own sentences in training by this)
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from vidmem.common import UserError
from vidmem.manifest import Manifest
from vidmem.store import ArraySpec, FeatureStore, ShardedWriter


def bank_entries(manifest: Manifest, split: str = "train") -> list[tuple[str, str]]:
    """(video_id, sentence) of every event of `split`, deduplicated within a video, in manifest order."""
    seen: set[tuple[str, str]] = set()
    out = []
    for e in manifest.events:
        if e.split == split and (e.video_id, e.sentence) not in seen:
            seen.add((e.video_id, e.sentence))
            out.append((e.video_id, e.sentence))
    return out


def sentence_vectors(text: FeatureStore, sentences: Iterable[str], hint: str = "rerun `dvc repro extract@text`"
                     ) -> dict[str, np.ndarray]:
    """Unit float32 sentence vectors from the text feature store, one per distinct sentence; a sentence the
    store lacks is one error naming the store, the count and an example."""
    want = sorted(set(sentences))
    missing = [t for t in want if t not in text]
    if missing:
        raise UserError(f"{text.path}: {len(missing)} sentences have no text features (e.g. {missing[0]!r}); {hint}")
    out = {}
    for t in want:
        v = np.asarray(text.get(t, "sentence")[0], dtype=np.float32)
        out[t] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


def write_bank(path: str | os.PathLike, entries: list[tuple[str, str]], text: FeatureStore) -> int:
    if not entries:
        raise UserError("bank: the manifest has no train events to remember")
    missing = [s for _, s in entries if s not in text]
    if missing:
        raise UserError(f"{text.path}: {len(missing)} bank sentences have no text features (e.g. {missing[0]!r}); "
                        "re-run `dvc repro extract@text`")
    vectors = np.stack([text.get(s, "sentence")[0] for _, s in entries]).astype(np.float16)
    counters: dict[str, int] = {}
    ids = []
    for vid, _ in entries:
        ids.append(f"{vid}/{counters.get(vid, 0)}")
        counters[vid] = counters.get(vid, 0) + 1
    writer = ShardedWriter(
        path, ids, [1] * len(ids), {"feats": ArraySpec((vectors.shape[1],), "float16")},
        {"kind": "bank", "source": str(text.path), "encoder": text.attrs.get("encoder"),
         "checkpoint_sha256": text.attrs.get("checkpoint_sha256")},
        rows_per_chunk=4096, chunks_per_shard=4,
        item_arrays={"sentences": np.asarray([s for _, s in entries], dtype=object),
                     "video_ids": np.asarray([v for v, _ in entries], dtype=object)},
    )
    writer.prepare()
    writer.fill(range(writer.n_shards), lambda reqs: [{"feats": vectors[i : i + 1]} for i, _, _ in reqs])
    writer.finish()
    return len(ids)


def read_bank(path: str | os.PathLike) -> tuple[np.ndarray, list[str], list[str]]:
    """(vectors [N, E] float32, video ids, sentences)."""
    store = FeatureStore(path)
    if store.attrs.get("kind") != "bank":
        raise UserError(f"{path}: not a memory bank store")
    vectors = np.asarray(store.array("feats")[:], dtype=np.float32)
    return vectors, [str(v) for v in store.root["video_ids"][:]], [str(s) for s in store.root["sentences"][:]]


@dataclass
class TextBank:
    """The memory: one CLIP text vector per training event sentence, with the id of the video it describes."""

    vectors: Tensor  # [N, D] float32
    video_ids: list[str]
    sentences: list[str] | None = None
    groups: Tensor = field(init=False)  # [N] int64: index of the entry's video among the bank's videos
    largest_group: int = field(init=False)
    _group_of: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.vectors = torch.as_tensor(self.vectors).to(torch.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] == 0:
            raise UserError(f"memory bank: expected vectors [N>0, D], got {tuple(self.vectors.shape)}")
        if len(self.video_ids) != self.vectors.shape[0]:
            raise UserError(
                f"memory bank: {self.vectors.shape[0]} vectors but {len(self.video_ids)} video ids"
            )
        if self.sentences is not None and len(self.sentences) != len(self.video_ids):
            raise UserError(
                f"memory bank: {len(self.video_ids)} video ids but {len(self.sentences)} sentences"
            )
        self._group_of = {}
        for vid in self.video_ids:
            self._group_of.setdefault(vid, len(self._group_of))
        self.groups = torch.as_tensor([self._group_of[v] for v in self.video_ids], dtype=torch.int64)
        self.largest_group = int(torch.bincount(self.groups).max())

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def groups_for(self, video_ids: Sequence[str]) -> Tensor:
        """Group id of each video, −1 for videos without sentences in the bank."""
        return torch.as_tensor([self._group_of.get(v, -1) for v in video_ids], dtype=torch.int64)

    def to(self, device: torch.device | str) -> TextBank:
        self.vectors = self.vectors.to(device)
        self.groups = self.groups.to(device)
        return self


def load_bank(path: str | os.PathLike) -> TextBank:
    """The memory bank store as a TextBank (vectors, video ids, sentences)."""
    vectors, video_ids, sentences = read_bank(path)
    return TextBank(vectors, video_ids, sentences)
