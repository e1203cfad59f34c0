"""CM2 retrieval: windows (T < W guarded), window means under padding, own-sentence exclusion in training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.dense.retrieval import TextBank, retrieve, window_edges, window_means
from vidmem.common import UserError


def test_window_edges_cover_every_frame():
    start, end = window_edges(torch.tensor([10]), 4)
    assert start.tolist() == [[0, 2, 5, 7]] and end.tolist() == [[2, 5, 7, 10]]
    start, end = window_edges(torch.tensor([40]), 20)
    assert (end - start).tolist() == [[2] * 20]  # T divisible by W: CM2's windows exactly


@pytest.mark.parametrize("t", [1, 2, 3, 7])
def test_short_videos_repeat_frames_instead_of_empty_windows(t):
    w = 8
    start, end = window_edges(torch.tensor([t]), w)
    assert bool(((end - start) >= 1).all()) and int(end.max()) <= t
    feats = torch.randn(1, t, 5)
    means = window_means(feats, torch.tensor([t]), w)
    assert means.shape == (1, w, 5) and torch.isfinite(means).all()
    # each window is the mean of real frames; with one frame per window it is that frame
    for i in range(w):
        assert torch.allclose(means[0, i], feats[0, start[0, i] : end[0, i]].mean(0), atol=1e-6)


def test_window_means_ignore_padding():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(9, 4, generator=g), torch.randn(4, 4, generator=g)
    batch = torch.zeros(2, 9, 4)
    batch[0], batch[1, :4] = a, b
    batch[1, 4:] = 1e6  # garbage in the padding must not leak in
    both = window_means(batch, torch.tensor([9, 4]), 6)
    assert torch.allclose(both[0], window_means(a[None], torch.tensor([9]), 6)[0])
    assert torch.allclose(both[1], window_means(b[None], torch.tensor([4]), 6)[0])


def _bank_with_own_sentences(feats: torch.Tensor, w: int) -> tuple[TextBank, torch.Tensor]:
    """The video's own sentences are its window means (cosine 1: the nearest), plus unrelated sentences."""
    g = torch.Generator().manual_seed(1)
    own = window_means(feats[None], torch.tensor([len(feats)]), w)[0]
    others = torch.randn(12, feats.shape[1], generator=g)
    vectors = torch.cat([others[:5], own, others[5:]])
    ids = ["other_a"] * 5 + ["vid"] * w + ["other_b"] * 7
    return TextBank(vectors, ids), own


def _manual(queries: torch.Tensor, bank: torch.Tensor, k: int, allowed: torch.Tensor) -> torch.Tensor:
    sim = F.normalize(queries, dim=-1) @ F.normalize(bank, dim=-1).T
    sim = sim.masked_fill(~allowed[None, :], -2.0)
    return bank[sim.topk(k, dim=-1).indices].mean(1)


def test_own_sentences_excluded_in_training_included_in_evaluation():
    g = torch.Generator().manual_seed(2)
    w, k = 3, 2
    feats = torch.randn(7, 6, generator=g)
    bank, own = _bank_with_own_sentences(feats, w)
    queries = window_means(feats[None], torch.tensor([7]), w)[0]
    groups = bank.groups_for(["vid"])
    assert groups.tolist() == [1] and bank.groups_for(["unseen"]).tolist() == [-1]

    evaluation = retrieve(feats[None], torch.tensor([7]), bank, w, k)[0]
    training = retrieve(feats[None], torch.tensor([7]), bank, w, k, exclude_groups=groups)[0]
    everything = torch.ones(len(bank), dtype=torch.bool)
    not_own = torch.tensor([v != "vid" for v in bank.video_ids])
    assert torch.allclose(evaluation, _manual(queries, bank.vectors, k, everything), atol=1e-6)
    assert torch.allclose(training, _manual(queries, bank.vectors, k, not_own), atol=1e-6)
    # evaluation finds the own sentence first (cosine 1); training never sees any own sentence
    sims_eval = F.normalize(queries, dim=-1) @ F.normalize(own, dim=-1).T
    assert torch.allclose(sims_eval.diagonal(), torch.ones(w), atol=1e-5)
    assert not torch.allclose(training, evaluation)
    # a video absent from the bank excludes nothing
    assert torch.allclose(
        retrieve(feats[None], torch.tensor([7]), bank, w, k, exclude_groups=torch.tensor([-1]))[0],
        evaluation,
        atol=1e-6,
    )


def test_k_is_capped_so_every_query_has_enough_candidates():
    feats = torch.randn(1, 5, 4)
    bank = TextBank(torch.randn(6, 4), ["a", "a", "a", "b", "c", "c"])
    out = retrieve(feats, torch.tensor([5]), bank, 2, k=50, exclude_groups=torch.tensor([0]))
    assert out.shape == (1, 2, 4) and torch.isfinite(out).all()
    tiny = TextBank(torch.randn(2, 4), ["a", "a"])
    with pytest.raises(UserError, match="too small"):
        retrieve(feats, torch.tensor([5]), tiny, 2, k=5, exclude_groups=torch.tensor([0]))


def test_dimension_mismatch_and_bad_bank_are_user_errors():
    bank = TextBank(torch.randn(4, 8), ["a", "b", "c", "d"])
    with pytest.raises(UserError, match="same CLIP model"):
        retrieve(torch.randn(1, 5, 4), torch.tensor([5]), bank, 2, 2)
    with pytest.raises(UserError, match="video ids"):
        TextBank(torch.randn(4, 8), ["a"])
