"""Retrieval metrics on hand-worked matrices: strict-rank semantics with ties, both directions, multi-caption
layout, DSL rows kept apart, agreement with EMCL's compute_metrics where it has no ties."""
from __future__ import annotations

import numpy as np
import pytest

from metrics.retrieval import inverted_softmax, ranks, retrieval_metrics, summarise, video_to_text_sim


def emcl_compute_metrics_ranks(x: np.ndarray) -> np.ndarray:
    """EMCL's compute_metrics rank rule (sorted position of the diagonal value), re-derived for the comparison."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, None]
    return np.where(sx - d == 0)[1] + 1


def test_rank_counts_strictly_higher_candidates():
    sim = np.array([[0.9, 0.1, 0.5],
                    [0.2, 0.3, 0.3],    # true 0.3 ties another 0.3: rank 1 (nothing strictly higher)
                    [0.7, 0.8, 0.6]])   # true 0.6 below 0.7 and 0.8: rank 3
    assert ranks(sim, [0, 1, 2]).tolist() == [1, 1, 3]
    assert ranks(sim, [2, 0, 1]).tolist() == [2, 3, 1]  # 0.9 > 0.5; 0.3, 0.3 > 0.2; nothing above 0.8
    nan = np.array([[np.nan, 0.1], [0.5, np.nan]])
    assert ranks(nan, [0, 1]).tolist() == [2, 2]  # NaN counts as -inf


def test_summary_by_hand():
    s = summarise(np.array([1, 1, 3, 7, 60]))
    assert s == {"R1": 40.0, "R5": 60.0, "R10": 80.0, "R50": 80.0, "MedianR": 3.0, "MeanR": 14.4, "queries": 5}


def test_single_caption_both_directions():
    sim = np.array([[0.9, 0.2, 0.1],
                    [0.8, 0.3, 0.0],
                    [0.1, 0.4, 0.5]])
    m = retrieval_metrics(sim, [0, 1, 2])
    # t2v ranks: text0 → 1, text1 → 2 (0.8 > 0.3), text2 → 1
    assert m["t2v"]["R1"] == pytest.approx(200 / 3) and m["t2v"]["MeanR"] == pytest.approx(4 / 3)
    # v2t = sim.T ranks: video0 → 1 (0.9 top), video1 → 2 (0.4 > 0.3), video2 → 1
    assert m["v2t"]["R1"] == pytest.approx(200 / 3) and m["v2t"]["MedianR"] == 1.0
    assert (m["n_texts"], m["n_videos"]) == (3, 3)
    # no ties: the same ranks as EMCL's compute_metrics in both directions
    assert ranks(sim, [0, 1, 2]).tolist() == emcl_compute_metrics_ranks(sim).tolist()
    assert ranks(sim.T, [0, 1, 2]).tolist() == emcl_compute_metrics_ranks(sim.T).tolist()


def test_multi_caption_layout():
    # videos A, B; texts 0,1 describe A, text 2 describes B (rows grouped or not: order does not matter)
    sim = np.array([[0.2, 0.6],    # text0 (A): B scores higher → rank 2
                    [0.9, 0.1],    # text1 (A): rank 1
                    [0.3, 0.4]])   # text2 (B): rank 1
    text_video = [0, 0, 1]
    m = retrieval_metrics(sim, text_video, dsl_temp=None)
    assert m["t2v"]["R1"] == pytest.approx(200 / 3) and m["t2v"]["queries"] == 3
    g, groups = video_to_text_sim(sim, text_video)
    # video A vs group A: best of its sentences = 0.9; vs group B: 0.3.  video B: group A 0.6 (text0), group B 0.4
    assert groups.tolist() == [0, 1] and g.tolist() == [[0.9, 0.3], [0.6, 0.4]]
    assert m["v2t"]["queries"] == 2 and m["v2t"]["R1"] == 50.0 and m["v2t"]["MeanR"] == 1.5
    shuffled = retrieval_metrics(sim[[2, 0, 1]], [1, 0, 0], dsl_temp=None)
    assert shuffled["t2v"] == m["t2v"] and shuffled["v2t"] == m["v2t"]
    assert "t2v_dsl" not in m


def test_dsl_is_a_separate_row_and_can_change_ranks():
    sim = np.array([[0.50, 0.49],
                    [0.48, 0.10]])  # single caption: text i describes video i
    m = retrieval_metrics(sim, [0, 1])
    assert m["t2v"]["R1"] == 50.0  # text1: 0.48 > 0.10 → rank 2
    # DSL: video0's column is shared by both texts, so it is discounted for text1 relative to video1's column
    t2v = inverted_softmax(sim, 0.01, axis=0)
    assert t2v[1, 1] > 0 and m["t2v_dsl"]["R1"] == pytest.approx(100 * np.mean(ranks(t2v, [0, 1]) == 1))
    assert set(m) >= {"t2v", "v2t", "t2v_dsl", "v2t_dsl"}
    col = inverted_softmax(np.array([[1.0], [0.0]]), 1.0, axis=0)  # softmax over the column times n
    assert col[:, 0] == pytest.approx([1.0 * np.e / (np.e + 1) * 2, 0.0])


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError):
        retrieval_metrics(np.zeros((2, 2)), [0])
    with pytest.raises(ValueError):
        retrieval_metrics(np.zeros((2, 2)), [0, 5])
