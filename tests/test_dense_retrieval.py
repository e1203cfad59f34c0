"""CM2 retrieval: windows (T < W guarded), window means under padding, own-sentence exclusion in training."""

from __future__ import annotations

import numpy as np
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


# ----------------------------------------------------------------------------- what queries CM2's memory
def test_cm2_retrieves_with_the_batch_queries_and_the_oracle_reads_them_directly(monkeypatch):
    """retrieval_query window: the bank is queried with the dataset's per-frame query vectors, not the frame
    features; oracle: nothing is retrieved, the window means of the ground-truth vectors are the memory."""
    from test_dense_model import VOCAB, tiny_bank, tiny_cfg, tiny_dataset

    from models.dense import DenseCaptionDataset, DenseCaptioner, InMemoryFeatures, collate
    from models.dense import train as dense_train

    base = tiny_dataset()
    q = {v.video_id: np.random.default_rng(5).standard_normal(
        (len(base.features.get(v.video_id, "feats")), 16)).astype(np.float32) for v in base.videos}
    feats = InMemoryFeatures(base.features.arrays["feats"], base.features.arrays["times"], queries=q)
    ds = DenseCaptionDataset(base.videos, feats, VOCAB, max_words=6, queries="queries")
    batch = collate([ds[i] for i in range(len(ds))])
    assert torch.equal(batch.queries[0, : batch.lengths[0]], torch.from_numpy(q["v0"]))
    bank = tiny_bank(base)
    seen = {}

    def spy(x, *a, **k):
        seen["x"] = x
        return retrieve(x, *a, **k)

    monkeypatch.setattr(dense_train, "retrieve", spy)
    cm2 = DenseCaptioner(tiny_cfg(retrieval=True), VOCAB.size).eval()
    dense_train.run_model(cm2, batch, bank, training=False)
    assert seen["x"] is batch.queries
    seen.clear()
    plain = collate([base[i] for i in range(len(base))])
    dense_train.run_model(cm2, plain, bank, training=False)
    assert seen["x"] is plain.feats
    # the oracle: the model reads window_means(queries) as its memory, and retrieve is never called
    seen.clear()
    model = DenseCaptioner(tiny_cfg(retrieval=True, retrieval_query="oracle"), VOCAB.size).eval()
    got = {}
    monkeypatch.setattr(model, "forward", lambda f, v, d, retrieved: got.setdefault("m", retrieved))
    dense_train.run_model(model, batch, bank, training=False)
    assert "x" not in seen
    assert torch.equal(got["m"], window_means(batch.queries, batch.lengths, 4))
    with pytest.raises(UserError, match="no ground-truth vectors"):
        dense_train.run_model(model, plain, bank, training=False)


def test_oracle_vectors_by_hand(tmp_path):
    from models.dense.task import oracle_vectors
    from vidmem.manifest import Event, Manifest
    from vidmem.store import ArraySpec, FeatureStore, ShardedWriter

    a, b = np.array([3.0, 4.0, 0.0], np.float32), np.array([0.0, 0.0, 2.0], np.float32)
    texts = ["A red circle spins.", "A blue box grows."]
    w = ShardedWriter(tmp_path / "text.zarr", texts, [1, 1], {"sentence": ArraySpec((3,), "float32")},
                      {"kind": "text"})
    w.prepare()
    w.fill(range(w.n_shards), lambda reqs: [{"sentence": [a, b][i][None]} for i, _, _ in reqs])
    w.finish()
    man = Manifest(events=[Event("v", "test", 0.0, 1.5, texts[0]), Event("v", "test", 1.0, 3.0, texts[1]),
                           Event("v", "test", 0.0, 3.0, "another annotator", annotator=1)])
    out = oracle_vectors(man, FeatureStore(tmp_path / "text.zarr"),
                         {"v": np.array([0.0, 1.0, 2.0, 3.5]), "empty": np.array([0.0, 1.0])})
    ua, ub = a / 5, b / 2  # unit vectors
    assert np.allclose(out["v"], np.stack([ua, (ua + ub) / 2, ub, np.zeros(3)]))
    assert np.array_equal(out["empty"], np.zeros((2, 3), np.float32))
