"""From a video's score maps to ranked windows in seconds: cells → moments, greedy NMS, top k."""
from __future__ import annotations

import numpy as np
import torch

from metrics.grounding import nms


def score_map_windows(score2d: torch.Tensor, mask2d: torch.Tensor, duration: float, nms_thresh: float,
                      top: int) -> list[list[float]]:
    """[N, N] scores → up to `top` [start, end, score] rows after NMS (MMN's score2d_to_moments_scores)."""
    n = score2d.shape[-1]
    ij = mask2d.nonzero().cpu().numpy()
    scores = score2d[mask2d].detach().cpu().double().numpy()
    windows = np.stack((ij[:, 0], ij[:, 1] + 1), 1) * duration / n
    w, s = nms(windows, scores, nms_thresh, top)
    return [[round(float(a), 4), round(float(b), 4), round(float(c), 6)] for (a, b), c in zip(w, s)]
