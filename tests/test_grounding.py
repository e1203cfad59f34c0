"""The grounding family (MRNet / MMN): retention masks, the proposal map, both losses, NMS post-processing,
query-order independence, the prior baseline, and a tiny run through the shared recipe whose loss falls."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.grounding.config import GroundingConfig
from models.grounding.data import QueryFeatures, QueryItem, VideoItem, avgfeats, prepare_clips
from models.grounding.losses import iou2d, mutual_matching, scaled_bce
from models.grounding.model import MRNet
from models.grounding.postprocess import score_map_windows
from models.grounding.proposal import SparseMaxPool, sparse_cells
from models.grounding.retention import MaskableRetention, SparseMask, decay_matrix, head_decays
from models.grounding.task import GroundingPrior, GroundingTask, predict
from vidmem.paths import Paths
from vidmem.training import RecipeConfig, fit

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- masks
def test_decay_is_bidirectional_with_diagonal_two():
    d = decay_matrix(3, 0.5)
    assert torch.allclose(d, torch.tensor([[2, .5, .25], [.5, 2, .5], [.25, .5, 2]]))
    g = head_decays(3)
    assert torch.allclose(g, torch.tensor([1 - 2 ** -5, 1 - 2 ** -6, 1 - 2 ** -7], dtype=torch.float64))
    dh = decay_matrix(4, g)
    assert dh.shape == (3, 4, 4) and torch.allclose(dh[2, 0, 3], torch.tensor(float(g[2] ** 3)))


def test_sparse_mask_values_and_gradient():
    s = SparseMask(3)
    with torch.no_grad():
        s.logits.weight.copy_(torch.arange(9.0)[:, None] - 4)
    m = s()
    expect = torch.sigmoid(torch.arange(9.0) - 4).view(3, 3)
    expect.fill_diagonal_(1.0)
    assert torch.allclose(m, expect)
    off = ~torch.eye(3, dtype=torch.bool)
    assert torch.allclose(s.sparsity(), expect[off].mean())
    s.sparsity().backward()
    g = s.logits.weight.grad.view(3, 3)
    assert (g.diagonal() == 0).all() and (g[off] > 0).all()   # L1 pushes the off-diagonal down only


@pytest.mark.parametrize("mode", ["no", "ret", "sparse", "both"])
def test_mask_modes(mode):
    torch.manual_seed(0)
    ret = MaskableRetention(8, 2, 4, mask_mode=mode, gamma=0.9)
    d, m = decay_matrix(4, 0.9), ret.video_mask()[0]
    s = ret.sparse() if ret.sparse is not None else torch.ones(4, 4)
    expect = {"no": torch.ones(4, 4), "ret": d, "sparse": s, "both": d * s}[mode]
    assert torch.allclose(m, expect)
    x, valid = torch.randn(2, 6, 8), torch.ones(2, 2, dtype=torch.bool)
    ret(x, 2, valid).sum().backward()
    if ret.sparse is not None:   # the sparse mask learns through the retention output
        assert ret.sparse.logits.weight.grad.abs().sum() > 0
    # language rows are unmasked: a query's output does not depend on the video→video mask
    ref = MaskableRetention(8, 2, 4, mask_mode="no")
    ref.load_state_dict(ret.state_dict(), strict=False)
    assert torch.allclose(ret(x, 2, valid)[:, :2], ref(x, 2, valid)[:, :2], atol=1e-6)


def test_no_softmax_is_masked_scores_times_values():
    torch.manual_seed(0)
    ret = MaskableRetention(4, 1, 3, mask_mode="ret", softmax=False, gamma=0.5, use_xpos=False)
    x, valid = torch.randn(1, 4, 4), torch.ones(1, 1, dtype=torch.bool)
    q, k, v = ret.q(x), ret.k(x), ret.v(x)
    mask = torch.ones(4, 4)
    mask[1:, 1:] = decay_matrix(3, 0.5)
    expect = ret.o(((q @ k.transpose(1, 2)) / 2 * mask) @ v)
    assert torch.allclose(ret(x, 1, valid), expect, atol=1e-6)


def test_att_mode_v_keeps_video_to_itself():
    torch.manual_seed(0)
    ret = MaskableRetention(8, 2, 4, att_mode="v")
    x, valid = torch.randn(1, 6, 8), torch.ones(1, 2, dtype=torch.bool)
    y = x.clone()
    y[:, :2] = torch.randn(1, 2, 8)
    assert torch.allclose(ret(x, 2, valid)[:, 2:], ret(y, 2, valid)[:, 2:], atol=1e-6)  # video ignores queries
    assert torch.allclose(ret(x, 2, valid)[:, :2], ret.o(ret.v(x[:, :2])), atol=1e-6)   # queries: value only


def test_padded_queries_are_not_read():
    torch.manual_seed(0)
    ret = MaskableRetention(8, 2, 4)
    x = torch.randn(1, 6, 8)
    valid = torch.tensor([[True, False]])
    y = x.clone()
    y[:, 1] = 100.0
    assert torch.allclose(ret(x, 2, valid)[:, [0, 2, 3, 4, 5]], ret(y, 2, valid)[:, [0, 2, 3, 4, 5]], atol=1e-5)


# ---------------------------------------------------------------------------------------------- proposal map
def test_sparse_cells_hand_worked():
    mask, _ = sparse_cells(8, (2, 2))
    expect = {(i, i) for i in range(8)} | {(i, i + 1) for i in range(7)} | {(i, i + 2) for i in range(6)}
    expect |= {(0, 4), (2, 6), (0, 6)}
    assert {tuple(c) for c in mask.nonzero().tolist()} == expect
    assert sparse_cells(4, (15,))[0].sum() == 10   # dense: every i ≤ j


def test_sparse_max_pool_is_max_over_the_cell():
    x = torch.randn(2, 3, 8)
    pool = SparseMaxPool(8, (2, 2))
    out = pool(x)
    for i, j in pool.mask2d.nonzero().tolist():
        assert torch.allclose(out[:, :, i, j], x[:, :, i : j + 1].max(-1).values)
    assert (out[:, :, ~pool.mask2d] == 0).all()


def test_avgfeats_and_l2():
    f = np.arange(12, dtype=np.float32).reshape(6, 2)
    # MMN clamps the range ends to T−1, so the last row is never averaged in: [0,2), [2,4), [4,5)
    assert np.allclose(avgfeats(f, 3), [[1, 2], [5, 6], [8, 9]])
    assert np.allclose(avgfeats(f[:2], 4), [f[0], f[0], f[1], f[1]])  # short videos repeat rows
    assert np.allclose(np.linalg.norm(prepare_clips(f[1:], 5), axis=-1), 1, atol=1e-5)


# ---------------------------------------------------------------------------------------------- losses
def test_iou2d_and_scaled_bce():
    gt = iou2d(torch.tensor([[0.0, 0.5]]), 2)[0]       # cells [0,.5], [0,1], [.5,1]
    assert torch.allclose(gt, torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
    mask = torch.tensor([[True, True], [False, True]])
    scores = torch.full((1, 2, 2), 0.5)
    target = torch.tensor([[[0.75, 0.5], [0.0, 1.0]]])  # rescaled from [0.5, 1]: 0.5, 0, (masked), 1
    expect = -(math.log(0.5) * 3) / 3                    # BCE(0.5, t) = ln 2 for any t
    assert scaled_bce(scores, target, mask, 0.5, 1.0).item() == pytest.approx(expect, rel=1e-5)
    s2 = torch.tensor([[[0.9, 0.2], [0.5, 0.6]]])
    t = torch.tensor([0.5, 0.0, 1.0])
    p = torch.tensor([0.9, 0.2, 0.6])
    ref = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    assert scaled_bce(s2, target, mask, 0.5, 1.0).item() == pytest.approx(ref.item(), rel=1e-5)


def test_mutual_matching_hand_made():
    mask = torch.ones(2, 2, dtype=torch.bool).triu()
    # one video, cells (0,0)=e0, (0,1)=anything, (1,1)=e1; sentence = e0; GT = cell (0,0)
    prop = torch.zeros(1, 2, 2, 2)
    prop[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    prop[0, :, 0, 1] = torch.tensor([0.3, 0.7])
    prop[0, :, 1, 1] = torch.tensor([0.0, 1.0])
    sent = torch.tensor([[1.0, 0.0]])
    moments = torch.tensor([[0.0, 0.5]])
    gt = iou2d(moments, 2)
    lv, ls = mutual_matching(prop, sent, torch.tensor([0]), gt, moments, mask, tau=0.1, margin=0.4)
    assert lv.item() == pytest.approx(0.0, abs=1e-6)                 # one sentence: only its own positive
    assert ls.item() == pytest.approx(math.log(1 + math.exp(-6)), rel=1e-4)  # vs (1,1) only; (0,1) IoU .5 excluded
    prop[0, :, 0, 1] = torch.tensor([1.0, 0.0])                        # an excluded cell does not matter
    assert mutual_matching(prop, sent, torch.tensor([0]), gt, moments, mask, 0.1, 0.4)[1].item() == \
        pytest.approx(ls.item(), rel=1e-5)
    # a second video's sentence identical to the first: it is a video-side negative
    prop2 = torch.cat((prop, prop), 0)
    lv2, _ = mutual_matching(prop2, torch.cat((sent, sent)), torch.tensor([0, 1]), gt.repeat(2, 1, 1),
                             moments.repeat(2, 1), mask, 0.1, 0.4)
    assert lv2.item() == pytest.approx(math.log(1 + math.exp(4)), rel=1e-4)  # (1−.4)/.1 vs 1/.1


# ---------------------------------------------------------------------------------------------- data + task
CFG = GroundingConfig(feature_dim=8, text_dim=8, pre_clips=8, num_clips=4, pooling_counts=(3,), hidden=16,
                      heads=2, ffn_dim=16, conv_hidden=16, kernel=3, conv_layers=1, only_iou=100, dropout=0.0,
                      proj_dropout=0.0)


def toy_data(n_videos: int = 8, seed: int = 0) -> tuple[dict[str, list[VideoItem]], QueryFeatures]:
    """Each query has a random code; its GT window's clips carry that code, so the moment is learnable."""
    rng = np.random.default_rng(seed)
    rows, splits = {}, {}
    for split in ("train", "val", "test"):
        vids = []
        for v in range(n_videos):
            feats = rng.normal(0, 0.3, (16, 8)).astype(np.float32)
            items = []
            for k in range(3):
                a = int(rng.integers(0, 12))
                b = a + int(rng.integers(2, 5))
                code = rng.normal(0, 1, 8).astype(np.float32)
                feats[a:b] += code
                key = f"{split}/{v}/{k}"
                rows[key] = (code, np.tile(code, (4, 1)), np.int64(4))
                items.append(QueryItem(f"{split}{v}", k, key, a * 1.0, b * 1.0, key=key))
            vids.append(VideoItem(f"{split}{v}", 16.0, prepare_clips(feats, 8), items))
        splits[split] = vids
    return splits, QueryFeatures(rows)


def make(cfg=CFG, tmp_path=None, **recipe) -> GroundingTask:
    splits, q = toy_data()
    r = RecipeConfig(**{"epochs": 6, "batch_size": 4, "lr": 3e-3, "select_by": "r1_miou", **recipe})
    return GroundingTask("toy", r, cfg, Paths.at(tmp_path or "."), splits=splits, queries=q)


def test_query_order_does_not_change_predictions():
    torch.manual_seed(0)
    task = make()
    model = MRNet(CFG).eval()
    videos = task.dataset("test")
    ref = {(r["vid"], r["query_idx"]): r["pred_relevant_windows"]
           for r in predict(model, videos, task.query_features(), CFG, 4, "cpu")}
    rng = np.random.default_rng(1)
    shuffled = [replace(v, queries=[v.queries[j] for j in rng.permutation(len(v.queries))]) for v in videos]
    got = {(r["vid"], r["query_idx"]): r["pred_relevant_windows"]
           for r in predict(model, shuffled, task.query_features(), CFG, 4, "cpu")}
    assert got.keys() == ref.keys()
    for k in ref:
        assert np.allclose(np.asarray(got[k]), np.asarray(ref[k]), atol=1e-5)


def test_score_map_windows_in_seconds_after_nms():
    mask = sparse_cells(4, (3,))[0]
    s = torch.zeros(4, 4)
    s[0, 1], s[0, 0], s[2, 3] = 0.9, 0.8, 0.7      # [0,2]; [0,1] IoU .5 (kept); [2,4]
    s[0, 2] = 0.85                                  # [0,3] vs [0,2]: IoU 2/3 → dropped
    w = score_map_windows(s * mask, mask, 8.0, 0.5, 3)
    assert [r[:2] for r in w] == [[0, 4], [0, 2], [4, 8]]


def test_prior_baseline_predicts_the_most_common_cell():
    splits, q = toy_data()
    task = GroundingPrior("prior", RecipeConfig(), CFG, Paths.at("."), splits=splits, queries=q)
    rows = task.predict(None, "test")
    assert len(rows) == sum(len(v.queries) for v in splits["test"])
    counts = {}
    for v in splits["train"]:
        gt = iou2d(torch.from_numpy(v.relative()), 4).masked_fill(~sparse_cells(4, (3,))[0], -1)
        for c in gt.flatten(1).argmax(1).tolist():
            counts[c] = counts.get(c, 0) + 1
    best = max(counts, key=counts.get)
    i, j = divmod(best, 4)
    assert rows[0]["pred_relevant_windows"][0][:2] == [i * 4.0, (j + 1) * 4.0]
    assert 0 <= task.evaluate(rows, "test")["mIoU"] <= 1


@pytest.mark.parametrize("mode", ["no", "both"])
def test_trains_through_fit_and_loss_falls(tmp_path, mode):
    task = make(replace(CFG, mask_mode=mode), tmp_path)
    result = fit(task, tmp_path / "ckpt", progress=False, device="cpu")
    losses = [h["train/loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert (tmp_path / "ckpt" / "best.pt").exists()
