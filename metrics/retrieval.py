"""Text-video retrieval metrics with EMCL's semantics (`tvr/utils/metrics.py`): R@1/5/10/50, median and mean rank,
text→video and video→text, for one or several sentences per video.

The input is a similarity matrix `sim` [T texts, V videos] and, for each text, the index of its video.

- **rank** of a query = 1 + the number of candidates scored *strictly higher* than the true one. Without ties
  this is EMCL's rank; with ties EMCL's `compute_metrics` emits one entry per tied position (so a row can count
  several times) and its multi-caption path breaks ties by argsort order — here a tie never hurts the query,
  and every query counts exactly once. NaN scores count as −inf.
- **text→video**: every sentence ranks all V videos; the true one is its own video (multi-caption aware: each
  sentence is a query, as EMCL's `tensor_text_to_video_metrics`).
- **video→text**: every video ranks the *videos' sentence groups*, each group scored by its best sentence for
  that video (EMCL's `tensor_video_to_text_sim`: max over a video's sentences); the true one is its own group.
  With one sentence per video this is ranking the sentences.
- R@K are percentages (×100, as EMCL reports them); MedianR / MeanR are ranks.
- **DSL** (inverted softmax, EMCL's post-processing): sim ⊙ softmax(sim / τ) ⊙ n, over texts for text→video
  and over videos for video→text (τ = 0.01; multiplying by n changes no rank). Reported as separate rows (`t2v_dsl`, `v2t_dsl`), never mixed
  into the raw numbers; EMCL selects models on raw text→video R@1, and so do we.

`python -m metrics.retrieval sim.npy rows.json cols.json` scores a saved matrix (rows: text ids with their
video id; cols: video ids), the format `evaluate@<retrieval model>` writes.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

KS = (1, 5, 10, 50)


def ranks(sim: np.ndarray, truth: Sequence[int]) -> np.ndarray:
    """1 + the number of candidates scored strictly higher than the true one, per query row of `sim` [Q, C]."""
    sim = _clean(sim)
    truth = np.asarray(truth, dtype=np.int64)
    if sim.ndim != 2 or len(truth) != sim.shape[0]:
        raise ValueError(f"ranks: need sim [Q, C] and one true column per row, got {sim.shape} and {truth.shape}")
    true = sim[np.arange(len(truth)), truth][:, None]
    return 1 + (sim > true).sum(axis=1)


def summarise(r: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    r = np.asarray(r, dtype=np.float64)
    if r.size == 0:
        raise ValueError("summarise: no queries")
    out = {f"R{k}": float(np.mean(r <= k) * 100) for k in ks}
    out["MedianR"] = float(np.median(r))
    out["MeanR"] = float(np.mean(r))
    out["queries"] = int(r.size)
    return out


def video_to_text_sim(sim: np.ndarray, text_video: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """[V, G] scores of each video against each video's sentence group (its best sentence), and the group
    videos: group g holds the sentences of video `groups[g]`."""
    sim = _clean(sim)
    text_video = np.asarray(text_video, dtype=np.int64)
    groups = np.unique(text_video)
    out = np.full((sim.shape[1], len(groups)), -np.inf)
    for g, v in enumerate(groups):
        out[:, g] = sim[text_video == v].max(axis=0)
    return out, groups


def inverted_softmax(sim: np.ndarray, temp: float = 0.01, axis: int = 0) -> np.ndarray:
    """EMCL's DSL re-scoring: sim ⊙ softmax(sim / temp, axis) ⊙ (size along axis)."""
    sim = _clean(sim)
    z = sim / temp
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return sim * (e / e.sum(axis=axis, keepdims=True)) * sim.shape[axis]


def retrieval_metrics(sim: np.ndarray, text_video: Sequence[int], dsl_temp: float | None = 0.01) -> dict[str, Any]:
    """Both directions (and, with dsl_temp, the DSL rows) for sim [T, V] with text_video[t] = t's video index."""
    sim = np.asarray(sim, dtype=np.float64)
    text_video = np.asarray(text_video, dtype=np.int64)
    if sim.ndim != 2 or len(text_video) != sim.shape[0]:
        raise ValueError(f"retrieval_metrics: sim {sim.shape} needs one video index per text row")
    if len(text_video) and (text_video.min() < 0 or text_video.max() >= sim.shape[1]):
        raise ValueError("retrieval_metrics: a text's video index is outside the matrix")
    v2t_sim, groups = video_to_text_sim(sim, text_video)
    own = {v: g for g, v in enumerate(groups)}
    queries = np.asarray([v for v in range(sim.shape[1]) if v in own])
    out: dict[str, Any] = {
        "t2v": summarise(ranks(sim, text_video)),
        "v2t": summarise(ranks(v2t_sim[queries], [own[v] for v in queries])),
        "n_texts": int(sim.shape[0]),
        "n_videos": int(sim.shape[1]),
    }
    if dsl_temp is not None:
        t2v = inverted_softmax(sim, dsl_temp, axis=0)
        v2t = inverted_softmax(v2t_sim, dsl_temp, axis=0)[queries]  # over videos, per sentence group
        out["t2v_dsl"] = summarise(ranks(t2v, text_video))
        out["v2t_dsl"] = summarise(ranks(v2t, [own[v] for v in queries]))
    return out


def _clean(sim: np.ndarray) -> np.ndarray:
    sim = np.array(sim, dtype=np.float64)
    sim[np.isnan(sim)] = -np.inf
    return sim


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit("usage: python -m metrics.retrieval sim.npy rows.json cols.json")
    sim = np.load(argv[0])
    rows, cols = (json.loads(open(p, encoding="utf-8").read()) for p in argv[1:])
    col = {vid: j for j, vid in enumerate(cols)}
    print(json.dumps(retrieval_metrics(sim, [col[r["video_id"]] for r in rows]), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
