"""Moment-retrieval metrics with MMN's semantics (`MCG-NJU/MMN: mmn/data/datasets/evaluation.py`).

- IoU of two windows = intersection / (max end − min start) (MMN's `iou`: the union is the hull, so for
  overlapping windows it is the true union; for disjoint ones the intersection is 0 anyway).
- Greedy NMS over windows ranked by score: a window is dropped when its IoU with an already kept one is
  **strictly greater** than the NMS threshold.
- R@k at IoU θ: the fraction of queries with a hit among the top k kept windows, a hit being IoU **≥** θ.
- mIoU: the mean IoU of the top-1 window.

Predictions are the QVHighlights-style JSON lines rows `{"vid", "query_idx", "query", "pred_relevant_windows":
[[start, end, score], ...]}`; references are `{(vid, query_idx): (start, end)}`.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Window = Sequence[float]


def iou(windows: np.ndarray, gt: Window) -> np.ndarray:
    """IoU of each [start, end] row of `windows` with `gt`, MMN's way (hull as the denominator)."""
    w = np.asarray(windows, dtype=np.float64).reshape(-1, 2)
    s, e = float(gt[0]), float(gt[1])
    inter = np.minimum(w[:, 1], e) - np.maximum(w[:, 0], s)
    hull = np.maximum(w[:, 1], e) - np.minimum(w[:, 0], s)
    return np.clip(inter, 0, None) / np.where(hull > 0, hull, 1.0)


def nms(windows: np.ndarray, scores: np.ndarray, thresh: float, top: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy NMS: windows by descending score (stable), drop those with IoU > thresh with a kept one."""
    w = np.asarray(windows, dtype=np.float64).reshape(-1, 2)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-sc, kind="stable")
    w, sc = w[order], sc[order]
    suppressed = np.zeros(len(w), dtype=bool)
    for i in range(len(w) - 1):
        if suppressed[i]:
            continue
        suppressed[i + 1:] |= iou(w[i + 1:], w[i]) > thresh
    keep = ~suppressed
    w, sc = w[keep], sc[keep]
    if top is not None:
        w, sc = w[:top], sc[:top]
    return w, sc


def evaluate_grounding(predictions: Iterable[Mapping[str, Any]], references: Mapping[tuple[str, int], Window],
                       recalls: Sequence[int] = (1, 5), thresholds: Sequence[float] = (0.3, 0.5, 0.7)
                       ) -> dict[str, Any]:
    """R@k,IoU@θ for every k and θ and mIoU of the top-1 window, over every reference query (a query with no
    prediction counts as a miss with IoU 0). Windows are used in the order given (already NMS-ranked)."""
    preds = {(p["vid"], int(p["query_idx"])): p["pred_relevant_windows"] for p in predictions}
    hits = np.zeros((len(recalls), len(thresholds)))
    miou = 0.0
    th = np.asarray(thresholds, dtype=np.float64)
    for key, gt in references.items():
        rows = preds.get(key) or []
        w = np.asarray([r[:2] for r in rows], dtype=np.float64).reshape(-1, 2)
        ious = iou(w, gt) if len(w) else np.zeros(0)
        for i, k in enumerate(recalls):
            top = ious[:k]
            if len(top):
                hits[i] += (top[:, None] >= th[None, :]).any(axis=0)
        miou += float(ious[0]) if len(ious) else 0.0
    n = max(len(references), 1)
    out: dict[str, Any] = {}
    for i, k in enumerate(recalls):
        for j, t in enumerate(thresholds):
            out[f"R@{k},IoU@{t:g}"] = float(hits[i, j] / n)
    out["mIoU"] = miou / n
    out["n_queries"] = len(references)
    return out


def write_predictions(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(dict(r)) + "\n")
    tmp.replace(path)
