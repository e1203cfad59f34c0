"""Fused cosine top-k: the tiled reference against a brute-force full sort, exclusions, tie order, errors, the
CUDA kernel under host emulation, and (with a GPU) the CuPy kernel against the reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import _emulate
from kernels.topk import MAX_KERNEL_K, cosine_topk, cosine_topk_kernel, cosine_topk_reference

needs_cxx = pytest.mark.skipif(_emulate.compiler() is None,
                               reason="no C++ compiler for the CUDA host emulation")


def brute_force(queries, bank, k, query_group=None, bank_group=None, exclude=()):
    """Full [Q, N] cosine matrix, exclusions as -inf, then an explicit sort by (score desc, index asc)."""
    q = F.normalize(queries.double(), dim=1)
    b = F.normalize(bank.double(), dim=1)
    sim = q @ b.T
    if query_group is not None:
        sim[query_group[:, None] == bank_group[None, :]] = float("-inf")
    for row, cols in enumerate(exclude):
        for c in cols:
            sim[row, c] = float("-inf")
    scores, indices = [], []
    for row in sim.tolist():
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        scores.append([row[j] for j in order])
        indices.append(order)
    return torch.tensor(scores, dtype=torch.float64), torch.tensor(indices)


def data(Q, N, D, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(Q, D, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(N, D, generator=g, dtype=torch.float64).to(dtype))


# ----------------------------------------------------------------------------------------------- reference
@pytest.mark.parametrize("tile", [None, 1, 7, 64, 1000])
def test_reference_matches_brute_force(tile):
    queries, bank = data(6, 300, 17, seed=1)
    scores, indices = cosine_topk_reference(queries, bank, 20, tile=tile)
    want_s, want_i = brute_force(queries, bank, 20)
    assert indices.dtype == torch.int64 and scores.dtype == torch.float64
    assert torch.equal(indices, want_i)
    torch.testing.assert_close(scores, want_s, rtol=0, atol=1e-12)


def test_ties_go_to_the_lower_index_across_tiles():
    """Many exact duplicates straddle the k boundary and the tile boundaries: the lowest indices must win."""
    g = torch.Generator().manual_seed(2)
    bank = torch.randn(200, 8, generator=g, dtype=torch.float64)
    dup = torch.randn(8, generator=g, dtype=torch.float64)
    dup_rows = [3, 17, 40, 41, 90, 120, 121, 199]
    bank[dup_rows] = dup
    queries = torch.stack([dup, -dup, torch.randn(8, generator=g, dtype=torch.float64)])
    for tile in (None, 5, 16, 41):
        scores, indices = cosine_topk_reference(queries, bank, 5, tile=tile)
        assert indices[0].tolist() == dup_rows[:5]
        assert scores[0].tolist() == pytest.approx([1.0] * 5)
        want_s, want_i = brute_force(queries, bank, 5)
        assert torch.equal(indices, want_i)


def test_all_scores_equal_picks_first_k():
    bank = torch.ones(50, 4)
    scores, indices = cosine_topk_reference(torch.ones(2, 4), bank, 7, tile=9)
    assert indices.tolist() == [list(range(7))] * 2
    assert scores.dtype == torch.float32


def test_group_and_explicit_exclusions():
    queries, bank = data(5, 120, 9, seed=3)
    query_group = torch.tensor([0, 1, 2, 0, 5])
    bank_group = torch.arange(120) % 6
    exclude = [[1, 2, 3], [], [119, 0, 0], [4], []]
    want_s, want_i = brute_force(queries, bank, 15, query_group, bank_group, exclude)
    for tile in (None, 11, 50):
        scores, indices = cosine_topk_reference(queries, bank, 15, query_group, bank_group, exclude,
                                                tile=tile)
        assert torch.equal(indices, want_i)
        torch.testing.assert_close(scores, want_s, rtol=0, atol=1e-12)
    # The same exclusions as a padded tensor.
    padded = torch.tensor([[1, 2, 3], [-1, -1, -1], [119, 0, 0], [4, -1, -1], [-1, -1, -1]])
    _, indices = cosine_topk_reference(queries, bank, 15, query_group, bank_group, padded, tile=13)
    assert torch.equal(indices, want_i)
    for row, cols in enumerate(exclude):
        assert not set(indices[row].tolist()) & set(cols)
        assert (bank_group[indices[row]] != query_group[row]).all()


def test_own_video_exclusion_like_dense_captioning():
    """A query equal to a bank sentence of its own video must not retrieve any sentence of that video."""
    _, bank = data(1, 60, 12, seed=4)
    video_of_sentence = torch.arange(60) // 6
    queries = bank[[0, 13, 59]].clone()  # exact copies of own sentences
    query_video = video_of_sentence[[0, 13, 59]]
    _, plain = cosine_topk_reference(queries, bank, 3)
    assert plain[:, 0].tolist() == [0, 13, 59]
    _, indices = cosine_topk_reference(queries, bank, 10, query_video, video_of_sentence)
    assert (video_of_sentence[indices] != query_video[:, None]).all()


def test_half_inputs_and_mixed_dtypes():
    queries, bank = data(3, 80, 16, seed=5, dtype=torch.float32)
    s32, i32 = cosine_topk_reference(queries, bank, 10)
    s16, i16 = cosine_topk_reference(queries.half(), bank.half(), 10)
    assert s16.dtype == torch.float32
    assert (i16 == i32).float().mean() > 0.9
    s64, _ = cosine_topk_reference(queries.double(), bank, 10)
    assert s64.dtype == torch.float64


def test_k_equal_to_n_returns_everything_sorted():
    queries, bank = data(2, 9, 3, seed=6)
    scores, indices = cosine_topk_reference(queries, bank, 9, tile=4)
    assert sorted(indices[0].tolist()) == list(range(9))
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_cpu_dispatches_to_reference():
    queries, bank = data(3, 40, 5, seed=7, dtype=torch.float32)
    s, i = cosine_topk(queries, bank, 4)
    rs, ri = cosine_topk_reference(queries, bank, 4)
    assert torch.equal(i, ri) and torch.equal(s, rs)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        cosine_topk(queries, bank, 4, backend="cupy")


@pytest.mark.parametrize("kwargs, message", [
    (dict(k=0), "k must be an int in 1..N=40"),
    (dict(k=41), "k must be an int in 1..N=40"),
    (dict(query_group=torch.zeros(3, dtype=torch.long)), "both query_group and bank_group"),
    (dict(query_group=torch.zeros(2, dtype=torch.long), bank_group=torch.zeros(40, dtype=torch.long)),
     r"query_group must have shape \[3\]"),
    (dict(query_group=torch.zeros(3), bank_group=torch.zeros(40)), "integer ids"),
    (dict(exclude=[[1], [40], []]), r"exclude\[1\]\[0\] = 40 is not a bank index"),
    (dict(exclude=[[1], []]), "2 lists for 3 queries"),
    (dict(exclude=torch.zeros(2, 1, dtype=torch.long)), r"exclude must be \[Q=3, E\]"),
    (dict(tile=0), "tile must be a positive int"),
])
def test_bad_arguments(kwargs, message):
    queries, bank = data(3, 40, 5, seed=8)
    kwargs = {"k": 4, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        cosine_topk(queries, bank, **kwargs)


def test_not_enough_eligible_rows_is_an_error():
    queries, bank = data(2, 10, 4, seed=9)
    groups = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="query 1 has only 7 eligible bank rows after exclusions, k=8"):
        cosine_topk(queries, bank, 8, query_group=torch.tensor([2, 1]), bank_group=groups)


@pytest.mark.parametrize("where", ["queries", "bank"])
def test_non_finite_inputs_are_errors(where):
    queries, bank = data(3, 30, 4, seed=10)
    target = queries if where == "queries" else bank
    target[2, 1] = float("nan")
    label = "query 2" if where == "queries" else "bank row 2"
    with pytest.raises(ValueError, match=f"{label} has NaN/inf"):
        cosine_topk(queries, bank, 3, tile=7)


def test_memory_stays_bounded_by_the_tile(monkeypatch):
    """With a small tile the largest score block computed is Q x tile, not Q x N."""
    import kernels.topk as topk_module

    queries, bank = data(4, 5000, 8, seed=11, dtype=torch.float32)
    seen = []
    real = topk_module._tile_dots

    def spy(q, tile, out):
        seen.append(tuple(out.shape))
        return real(q, tile, out)

    monkeypatch.setattr(topk_module, "_tile_dots", spy)
    scores, indices = cosine_topk_reference(queries, bank, 10, tile=512)
    assert max(cols for _, cols in seen) == 512 and len(seen) == 10
    assert torch.equal(indices, brute_force(queries, bank, 10)[1])


# ------------------------------------------------------------------------------- kernel under emulation
@needs_cxx
@pytest.mark.parametrize("k, block, tile", [(1, 64, 700), (32, 64, 333), (33, 256, 2000), (100, 64, None)])
def test_emulated_kernel_matches_reference(k, block, tile):
    """Groups, explicit exclusions, duplicate rows (ties), several tiles and several candidate merges."""
    queries, bank = data(5, 2000, 12, seed=k)
    bank[[50, 700, 1999]] = bank[10].clone()
    queries[1] = bank[10]
    query_group = torch.tensor([0, 1, 2, 3, 1])
    bank_group = torch.arange(2000) % 7
    exclude = [[10, 11], [], [0, 1999], [5], [700]]
    runner = _emulate.EmulatedRunner(block=block, max_blocks=2)  # 5 rows on 2 blocks: grid-stride rows
    got = cosine_topk_kernel(queries, bank, k, runner, query_group, bank_group, exclude, tile=tile)
    want = cosine_topk_reference(queries, bank, k, query_group, bank_group, exclude, tile=tile)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    assert all(name == "topk_merge_tile" for name, _, _ in runner.launches)


@needs_cxx
def test_emulated_kernel_float32_many_merges_and_ties():
    """One tile of 3000 with k=64: the candidate buffer fills and merges repeatedly; all-equal rows tie."""
    queries, bank = data(2, 3000, 6, seed=21, dtype=torch.float32)
    bank[1000:1100] = bank[999]
    queries[0] = bank[999]
    got = cosine_topk_kernel(queries, bank, 64, _emulate.EmulatedRunner(block=64, max_blocks=2))
    want = cosine_topk_reference(queries, bank, 64)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    assert got[1][0].tolist() == [999, *range(1000, 1063)]


@needs_cxx
def test_emulated_kernel_reports_short_rows():
    queries, bank = data(2, 40, 4, seed=22, dtype=torch.float32)
    with pytest.raises(ValueError, match="query 0 has only 30 eligible"):
        cosine_topk_kernel(queries, bank, 31, _emulate.EmulatedRunner(), torch.tensor([1, 2]),
                           torch.arange(40) % 4)


# ------------------------------------------------------------------------------------------ on a GPU
@pytest.mark.gpu
@pytest.mark.parametrize("Q, N, D, k, tile", [(7, 1000, 32, 10, None), (300, 50_000, 512, 100, 7000),
                                              (20, 37_421, 768, 100, None), (3, 5000, 64, 1024, 999)])
def test_gpu_kernel_matches_reference(Q, N, D, k, tile):
    queries, bank = data(Q, N, D, seed=N, dtype=torch.float32)
    queries, bank = queries.cuda(), bank.cuda()
    groups_q = torch.arange(Q, device="cuda") % 13
    groups_b = torch.arange(N, device="cuda") % 13
    got_s, got_i = cosine_topk(queries, bank, k, groups_q, groups_b, tile=tile)
    want_s, want_i = cosine_topk(queries, bank, k, groups_q, groups_b, tile=tile, backend="torch")
    torch.testing.assert_close(got_s, want_s, rtol=1e-5, atol=1e-5)
    # Indices agree except where two scores are within rounding of each other.
    differ = got_i != want_i
    assert differ.float().mean() < 1e-3
    if differ.any():
        assert (got_s[differ] - want_s[differ]).abs().max() < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_kernel_half_inputs_match_reference(dtype):
    """Half-precision queries and bank are widened to float32 on both paths: the same scores and indices."""
    queries, bank = data(50, 20_000, 256, seed=31, dtype=torch.float32)
    queries, bank = queries.to("cuda", dtype), bank.to("cuda", dtype)
    got_s, got_i = cosine_topk(queries, bank, 100)
    want_s, want_i = cosine_topk(queries, bank, 100, backend="torch")
    assert got_s.dtype == want_s.dtype == torch.float32
    torch.testing.assert_close(got_s, want_s, rtol=1e-5, atol=1e-5)
    differ = got_i != want_i
    assert differ.float().mean() < 1e-3
    if differ.any():
        assert (got_s[differ] - want_s[differ]).abs().max() < 1e-5


@pytest.mark.gpu
def test_gpu_kernel_exact_ties_and_large_k_fallback():
    bank = torch.randn(4000, 16, device="cuda")
    bank[100:300] = bank[50]
    queries = bank[[50, 7]].clone()
    _, idx = cosine_topk(queries, bank, 64)
    assert idx[0].tolist() == [50, *range(100, 163)]
    s, i = cosine_topk(queries, bank, MAX_KERNEL_K + 1)  # beyond the kernel: the reference on the GPU
    assert i.shape == (2, MAX_KERNEL_K + 1) and i.is_cuda
