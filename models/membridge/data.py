"""MemBridge data: the word vocabulary, word ids, the closed answer set, batches of distinct videos, and the
dual encoder whose similarities pick hard negatives and retrieval candidates.

Frames and sentence vectors come from the stores through the retrieval family's readers
(`models.retrieval.data`: `Split`, `StoredFrames`, `StoredTexts`), so both families read the same frames.
The dual encoder is CLIP4Clip's meanP on the stored tuned-CLIP features (`finetune_clip` is MemBridge's
contrastive stage): cosine of the mean frame feature and the sentence vector, no trainable part.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.membridge.model import BOS, EOS, PAD, SPECIAL
from vidmem.common import UserError
from vidmem.formats.vocab import UNK, tokenize
from vidmem.manifest import Manifest


class Words:
    """The family's vocabulary: the manifest's caption vocabulary (its order, `<unk>` included) followed by
    the words of the train questions it lacks (sorted), so one embedding table serves captions and QA.
    Ids: 0 PAD, 1 BOS, 2 EOS, 3 MASK, then the words."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self.index = {w: SPECIAL + i for i, w in enumerate(self.words)}
        if UNK not in self.index:
            raise UserError(f"manifest vocab.json: no '{UNK}' word")
        self.unk = self.index[UNK]

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Words:
        vocab = manifest.vocab.get("word_to_ix") if isinstance(manifest.vocab, dict) else None
        if not vocab:
            raise UserError("data/manifest/vocab.json: missing or empty; rerun `dvc repro ingest`")
        words = [w for w, _ in sorted(vocab.items(), key=lambda kv: int(kv[1]))]
        known = set(words)
        extra = sorted({w for q in manifest.qa if q.split == "train" for w in tokenize(q.question)} - known)
        return cls(words + extra)

    def __len__(self) -> int:
        return SPECIAL + len(self.words)

    def encode(self, sentence: str, max_words: int) -> list[int]:
        return [BOS] + [self.index.get(w, self.unk) for w in tokenize(sentence, max_words)] + [EOS]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.words[i - SPECIAL] for i in ids if i >= SPECIAL)

    def batch(self, sentences: Sequence[str], max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, longest] padded with 0, lengths [B] counting BOS and EOS; longest ≤ max_words + 2)."""
        rows = [self.encode(s, max_words) for s in sentences]
        ids = torch.full((len(rows), max(map(len, rows), default=2)), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, torch.tensor([len(r) for r in rows])


def answer_set(manifest: Manifest, answers: dict[str, int] | None) -> list[str]:
    """The closed answer set in label order (ingest's answers.json), or the train answers sorted."""
    if answers:
        return [a for a, _ in sorted(answers.items(), key=lambda kv: int(kv[1]))]
    found = sorted({q.answer for q in manifest.qa if q.split == "train"})
    if not found:
        raise UserError("data/manifest/qa.jsonl: no train questions; the QA task needs an msrvtt_qa source")
    return found


def distinct_video_batches(by_video: Sequence[Sequence[int]], batch_size: int, rng: np.random.Generator,
                           order: Sequence[int]) -> list[list[int]]:
    """Every caption once, in batches whose captions come from distinct videos: round r takes the r-th caption
    (in a shuffled order) of every video that has one, and each round is cut in `order`'s video order
    (a permutation of the videos). A lone caption at a round's end joins the batch before it; a round of
    one caption is dropped (it has no negative)."""
    if batch_size < 2:
        raise UserError("params.yaml: the membridge family's batch_size must be at least 2 (negatives)")
    own = [list(rng.permutation(np.asarray(rows, dtype=np.int64))) for rows in by_video]
    out = []
    for r in range(max((len(rows) for rows in own), default=0)):
        round_ = [int(own[v][r]) for v in order if r < len(own[v])]
        pieces = [round_[a: a + batch_size] for a in range(0, len(round_), batch_size)]
        if len(pieces) > 1 and len(pieces[-1]) == 1:
            lone = pieces.pop()
            pieces[-1] += lone
        out += [p for p in pieces if len(p) >= 2]
    return out


def dual_similarity(frames: torch.Tensor, mask: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
    """meanP cosine [texts, videos] of frame features [V, F, E] (mask [V, F]) and sentence vectors [T, E]."""
    m = mask.float()[..., None]
    mean = (frames.float() * m).sum(1) / m.sum(1).clamp(min=1)
    return F.normalize(sentences.float(), dim=-1) @ F.normalize(mean, dim=-1).t()
