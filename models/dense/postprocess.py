"""From model outputs to ActivityNet dense-captioning results (PDVC §2.4).

Every query gives a segment c ± l/2 (clipped to the video) and a greedy caption. With re-ranking, the joint
score proposal + α · caption log-prob / (#words)² orders them, the top max(1, counter) are kept, sorted by
time. Entries carry the public result fields (`timestamp`, `sentence`, `proposal_score`) plus PDVC's extras.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from models.dense.segments import cl_to_se


def select_events(
    boxes: Tensor,
    scores: Tensor,
    sentences: Sequence[str],
    sentence_scores: Tensor,
    count: int,
    duration: float,
    ec_alpha: float = 1.0,
    rerank: bool = True,
) -> list[dict]:
    """One video: boxes [Q, 2] normalised (centre, length), scores [Q] in (0, 1), sentence_scores [Q]."""
    se = (cl_to_se(boxes.float()).clamp(0, 1) * duration).tolist()
    count = max(1, int(count))
    entries = []
    for q, ((s, e), p, sent, ss) in enumerate(zip(se, scores.tolist(), sentences, sentence_scores.tolist())):
        n = len(sent.split())
        entries.append(
            {
                "timestamp": [s, e],
                "sentence": sent,
                "proposal_score": p,
                "sentence_score": ss,
                "joint_score": p + ec_alpha * ss / (n**2 + 1e-5),
                "pred_event_count": count,
                "query_id": q,
            }
        )
    if not rerank:
        return sorted(entries, key=lambda x: (-x["proposal_score"], x["query_id"]))
    kept = sorted(entries, key=lambda x: (-x["joint_score"], x["query_id"]))[:count]
    return sorted(kept, key=lambda x: (x["timestamp"], x["query_id"]))


def postprocess(
    logits: Tensor,
    boxes: Tensor,
    count_logits: Tensor,
    words: Tensor,
    word_logprobs: Tensor,
    durations: Tensor,
    video_ids: Sequence[str],
    decode,
    ec_alpha: float = 1.0,
    rerank: bool = True,
) -> dict[str, list[dict]]:
    """A batch of last-layer outputs → {video_id: entries}.

    logits [B, Q], boxes [B, Q, 2], count_logits [B, E+1], words/word_logprobs [B, Q, n] (0 after the end),
    decode: word ids → sentence.
    """
    scores = logits.sigmoid()
    counts = count_logits.argmax(-1).clamp(min=1)
    sentence_scores = (word_logprobs * (words > 0)).sum(-1) if words.shape[-1] else torch.zeros_like(scores)
    out = {}
    for b, vid in enumerate(video_ids):
        sentences = [decode(w) for w in words[b].tolist()]
        out[vid] = select_events(
            boxes[b],
            scores[b],
            sentences,
            sentence_scores[b],
            int(counts[b]),
            float(durations[b]),
            ec_alpha,
            rerank,
        )
    return out


def results_json(results: dict[str, list[dict]], details: str = "CLIP frame features") -> dict:
    """The ActivityNet Captions result file."""
    return {"version": "VERSION 1.0", "results": results, "external_data": {"used": True, "details": details}}
