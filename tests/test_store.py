"""Feature store: layout, reads, resume and disjoint-shard writers give byte-identical stores."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import zarr

from vidmem.common import UserError
from vidmem.store import ArraySpec, FeatureStore, ShardedWriter

LENGTHS = [5, 0, 17, 3, 40, 1, 9]  # one empty item, items straddling shard borders
IDS = [f"v{i}" for i in range(len(LENGTHS))]
D = 6


def item_feats(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    n = LENGTHS[i]
    return {
        "feats": rng.standard_normal((n, D)).astype(np.float16),
        "times": (np.arange(n) / 3.0).astype(np.float32),
    }


def make_writer(path: Path) -> ShardedWriter:
    return ShardedWriter(
        path,
        IDS,
        LENGTHS,
        {"feats": ArraySpec((D,), "float16"), "times": ArraySpec((), "float32")},
        {"encoder": "test", "fps": 3},
        rows_per_chunk=4,
        chunks_per_shard=2,
    )


def tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def items_feats(requests: list[tuple[int, int, int]]) -> list[dict[str, np.ndarray]]:
    return [{k: v[lo:hi] for k, v in item_feats(i).items()} for i, lo, hi in requests]


def write_all(path: Path) -> ShardedWriter:
    w = make_writer(path)
    w.prepare()
    w.fill(range(w.n_shards), items_feats)
    w.finish()
    return w


def test_layout_and_reads(tmp_path):
    w = write_all(tmp_path / "s.zarr")
    assert w.n_shards == 10  # 75 rows / 8 rows per shard
    store = FeatureStore(tmp_path / "s.zarr")
    assert store.ids == IDS
    assert store.attrs["complete"] and store.attrs["encoder"] == "test"
    for i, vid in enumerate(IDS):
        np.testing.assert_array_equal(store.get(vid), item_feats(i)["feats"])
        np.testing.assert_array_equal(store.get(vid, "times"), item_feats(i)["times"])
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert root["feats"].dtype == np.float16 and root["feats"].shape == (sum(LENGTHS), D)
    assert root["feats"].shards == (8, D) and root["feats"].chunks == (4, D)
    # few files, not one per video
    files = [p for p in (tmp_path / "s.zarr" / "feats").rglob("*") if p.is_file()]
    assert len(files) == 1 + w.n_shards  # zarr.json + one file per shard


def test_resume_is_byte_identical(tmp_path):
    write_all(tmp_path / "ref.zarr")
    path = tmp_path / "res.zarr"
    w = make_writer(path)
    w.prepare()
    w.fill([0, 1, 2, 3], items_feats)  # "killed" after four shards
    (path / "feats" / "c" / "9").mkdir(parents=True, exist_ok=True)
    (path / "feats" / "c" / "9" / "0.deadbeef.partial").write_bytes(b"torn")  # leftover of a killed write
    calls: list[int] = []

    def counting(requests: list[tuple[int, int, int]]) -> list[dict[str, np.ndarray]]:
        calls.extend(requests)
        return items_feats(requests)

    w2 = make_writer(path)
    w2.prepare()
    assert w2.done_shards() == {0, 1, 2, 3}
    w2.fill(range(w2.n_shards), counting)
    w2.finish()
    assert not [c for c in calls if c[0] in (0, 1)]  # finished items not recomputed
    rows = sorted((i, r) for i, lo, hi in calls for r in range(lo, hi))
    assert len(rows) == len(set(rows))  # every row computed once, straddling items included
    assert tree_digest(path) == tree_digest(tmp_path / "ref.zarr")
    # a complete store with the same plan is left alone
    w3 = make_writer(path)
    w3.prepare()
    w3.fill(range(w3.n_shards), lambda idx: pytest.fail("recomputed a complete store"))


def test_disjoint_writers_equal_single(tmp_path):
    write_all(tmp_path / "ref.zarr")
    path = tmp_path / "two.zarr"
    writers = [make_writer(path) for _ in range(2)]
    writers[0].prepare()
    for rank, w in enumerate(writers):
        w.fill(w.shards_for_rank(rank, 2), items_feats, rank=rank)
    writers[0].finish()
    assert tree_digest(path) == tree_digest(tmp_path / "ref.zarr")


def test_changed_plan_starts_over_and_incomplete_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    w = make_writer(path)
    w.prepare()
    w.fill([0], items_feats)
    with pytest.raises(UserError, match="incomplete"):
        FeatureStore(path)
    w2 = ShardedWriter(path, IDS, LENGTHS, w.arrays, {"encoder": "other"}, rows_per_chunk=4, chunks_per_shard=2)
    w2.prepare()
    assert w2.done_shards() == set()
