"""The feature store: per encoder one zarr v3 group of concatenated, sharded arrays.

Layout (one group per encoder, e.g. `data/features/clip.zarr`):

    <array>     (n_rows, *trailing) per-row arrays sharing one row partition, e.g. `feats` (n_rows, D) float16
                and `times` (n_rows,) float32 seconds; sharded along rows, zstd-compressed
    offsets     (n_items + 1,) int64: item i owns rows offsets[i]:offsets[i+1]
    ids         (n_items,) str: item ids (video ids, or sentence keys for the text store)
    attrs       encoder, checkpoint hash, fps, window, ... plus `complete: true` once every shard is written

Never one array per video: DVC hashes every file, and 40k small files cost minutes (see README). Reads of one
item are a slice.

Writing is by whole shards ("shards are the units of writing"): a shard is only ever written by one process, so
several writers (torchrun ranks) can fill disjoint shard sets of one store without losing chunks. Finished
shards are recorded in fsync'ed progress files, so a killed writer resumes where it stopped and the final store
is byte-identical to an uninterrupted run (zarr's local store writes each shard file atomically; leftovers of a
killed write are removed on resume). A store whose plan (ids, lengths, arrays, attrs) differs from the one on
disk is started over.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from vidmem.common import UserError, params_hash

log = logging.getLogger(__name__)

PROGRESS_GLOB = "progress.*.jsonl"


@dataclass(frozen=True)
class ArraySpec:
    """One per-row array: trailing shape after the row axis, and dtype."""

    trailing: tuple[int, ...]
    dtype: str

    def to_json(self) -> list[Any]:
        return [list(self.trailing), self.dtype]


class ShardedWriter:
    """Plan and fill a feature store shard by shard; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike,
        ids: Sequence[str],
        lengths: Sequence[int],
        arrays: dict[str, ArraySpec],
        attrs: dict[str, Any],
        rows_per_chunk: int = 1024,
        chunks_per_shard: int = 8,
        item_arrays: dict[str, np.ndarray] | None = None,
    ):
        if len(ids) != len(lengths):
            raise ValueError("ids and lengths differ in length")
        if len(set(ids)) != len(ids):
            raise UserError(f"{path}: duplicate item ids in the store plan")
        self.path = Path(path)
        self.ids = list(ids)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.n_rows = int(self.offsets[-1])
        self.arrays = arrays
        self.attrs = dict(attrs)
        self.rows_per_chunk = int(rows_per_chunk)
        self.rows_per_shard = int(rows_per_chunk) * int(chunks_per_shard)
        self.item_arrays = item_arrays or {}
        self.plan_key = params_hash(
            {
                "ids": self.ids,
                "lengths": self.lengths.tolist(),
                "arrays": {k: v.to_json() for k, v in arrays.items()},
                "attrs": self.attrs,
                "rows_per_shard": self.rows_per_shard,
                "rows_per_chunk": self.rows_per_chunk,
                "item_arrays": sorted(self.item_arrays),
            }
        )

    # ------------------------------------------------------------------ geometry
    @property
    def n_shards(self) -> int:
        return max(1, -(-self.n_rows // self.rows_per_shard))

    def shard_rows(self, j: int) -> tuple[int, int]:
        return j * self.rows_per_shard, min((j + 1) * self.rows_per_shard, self.n_rows)

    def items_in_shard(self, j: int) -> range:
        """Indices of items with at least one row in shard j."""
        a, b = self.shard_rows(j)
        if a >= b:
            return range(0)
        first = int(np.searchsorted(self.offsets, a, side="right")) - 1
        last = int(np.searchsorted(self.offsets, b, side="left")) - 1
        return range(first, last + 1)

    def shards_for_rank(self, rank: int, world: int) -> list[int]:
        """Contiguous blocks of whole shards per rank (few items straddle two ranks)."""
        n = self.n_shards
        return list(range(rank * n // world, (rank + 1) * n // world))

    # ------------------------------------------------------------------ lifecycle
    def _plan_file(self) -> Path:
        return self.path / "plan.json"

    def prepare(self) -> None:
        """Create the arrays, or keep the existing store when its plan matches (resume). Call on one process."""
        plan = self._plan_file()
        if self.path.exists():
            same = plan.exists() and json.loads(plan.read_text()).get("plan_key") == self.plan_key
            if same:
                for partial in self.path.rglob("*.partial"):
                    partial.unlink()
                if self.is_complete():
                    log.info("%s: up to date", self.path)
                    return
                log.info("%s: resuming (%d of %d shards done)", self.path, len(self.done_shards()), self.n_shards)
                return
            log.info("%s: plan changed or store incomplete from another plan; starting over", self.path)
            shutil.rmtree(self.path)
        tmp = self.path.with_name(self.path.name + ".creating")
        shutil.rmtree(tmp, ignore_errors=True)
        root = zarr.open_group(str(tmp), mode="w")
        for name, spec in self.arrays.items():
            shape = (self.n_rows, *spec.trailing)
            root.create_array(
                name,
                shape=shape,
                chunks=(self.rows_per_chunk, *spec.trailing),
                shards=(self.rows_per_shard, *spec.trailing),
                dtype=spec.dtype,
                fill_value=0,
            )
        root.create_array("offsets", data=self.offsets)
        ids = root.create_array("ids", shape=(len(self.ids),), dtype=str)
        if self.ids:
            ids[:] = np.asarray(self.ids, dtype=object).astype(str)
        for name, values in self.item_arrays.items():
            values = np.asarray(values)
            arr = root.create_array(name, shape=values.shape, dtype=str if values.dtype.kind in "OU" else values.dtype)
            if values.size:
                arr[:] = values
        root.attrs.update({**self.attrs, "complete": False})
        (tmp / "plan.json").write_text(json.dumps({"plan_key": self.plan_key}))
        os.replace(tmp, self.path)

    def is_complete(self) -> bool:
        return bool(zarr.open_group(str(self.path), mode="r").attrs.get("complete"))

    def done_shards(self) -> set[int]:
        done: set[int] = set()
        for f in self.path.glob(PROGRESS_GLOB):
            for line in f.read_text().splitlines():
                try:
                    done.add(int(json.loads(line)["shard"]))
                except (ValueError, KeyError, TypeError):
                    continue  # torn line from a killed writer
        return done

    def write_shard(self, j: int, data: dict[str, np.ndarray], rank: int = 0) -> None:
        a, b = self.shard_rows(j)
        root = zarr.open_group(str(self.path), mode="r+")
        for name, spec in self.arrays.items():
            block = np.asarray(data[name], dtype=spec.dtype)
            if block.shape != (b - a, *spec.trailing):
                raise ValueError(f"shard {j} array {name}: shape {block.shape} != {(b - a, *spec.trailing)}")
            root[name][a:b] = block
        with open(self.path / f"progress.{rank}.jsonl", "a") as f:
            f.write(json.dumps({"shard": j}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finish(self) -> None:
        """Mark complete and drop the progress files (every shard must be done)."""
        if self.is_complete():
            return
        missing = sorted(set(range(self.n_shards)) - self.done_shards())
        if self.n_rows and missing:
            raise RuntimeError(f"{self.path}: shards {missing[:10]} not written")
        root = zarr.open_group(str(self.path), mode="r+")
        root.attrs.update({"complete": True})
        for f in self.path.glob(PROGRESS_GLOB):
            f.unlink()

    # ------------------------------------------------------------------ filling
    def fill(
        self,
        shards: Iterable[int],
        compute_rows: Callable[[list[tuple[int, int, int]]], list[dict[str, np.ndarray]]],
        rank: int = 0,
    ) -> None:
        """Compute and write the given shards, skipping done ones.

        `compute_rows(requests)` gets one (item index, first row, stop row) per item of a shard — rows counted
        within the item — and returns those rows of every per-row array, per request. Only a shard's rows are
        ever computed or held, so memory follows the shard size, not the length of the longest video, and two
        ranks sharing a long video each compute only their part. Extractors compute fixed, item-aligned
        batches, so a row's value never depends on which request produced it.
        """
        if self.is_complete() or self.n_rows == 0:
            return
        done = self.done_shards()
        for j in shards:
            if j in done:
                continue
            a, b = self.shard_rows(j)
            requests = []
            for i in self.items_in_shard(j):
                start = int(self.offsets[i])
                lo, hi = max(a, start), min(b, int(self.offsets[i + 1]))
                if hi > lo:
                    requests.append((i, lo - start, hi - start))
            outs = compute_rows(requests)
            if len(outs) != len(requests):
                raise RuntimeError(f"compute_rows returned {len(outs)} results for {len(requests)} requests")
            parts: dict[str, list[np.ndarray]] = {name: [] for name in self.arrays}
            for (i, lo, hi), out in zip(requests, outs):
                for name in self.arrays:
                    if len(out[name]) != hi - lo:
                        raise RuntimeError(f"item {self.ids[i]!r}: {name} has {len(out[name])} rows for "
                                           f"requested rows {lo}..{hi}")
                    parts[name].append(out[name])
            self.write_shard(j, {n: np.concatenate(p) for n, p in parts.items()}, rank)


class FeatureStore:
    """Read side of a feature store: `store.get(id)` returns the item's rows of an array."""

    def __init__(self, path: str | os.PathLike, require_complete: bool = True):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise UserError(f"{self.path}: feature store not found; run `dvc repro` to extract features")
        self.root = zarr.open_group(str(self.path), mode="r")
        self.attrs = dict(self.root.attrs)
        if require_complete and not self.attrs.get("complete"):
            raise UserError(f"{self.path}: feature store is incomplete (an extraction was interrupted); rerun it")
        self.offsets = np.asarray(self.root["offsets"][:], dtype=np.int64)
        self.ids = [str(x) for x in self.root["ids"][:]] if len(self.offsets) > 1 else []
        self.index = {vid: i for i, vid in enumerate(self.ids)}

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.index

    def __len__(self) -> int:
        return len(self.ids)

    def array(self, name: str) -> zarr.Array:
        return self.root[name]

    def rows(self, item_id: str) -> tuple[int, int]:
        try:
            i = self.index[item_id]
        except KeyError:
            raise KeyError(f"{self.path}: no item {item_id!r}") from None
        return int(self.offsets[i]), int(self.offsets[i + 1])

    def get(self, item_id: str, name: str = "feats") -> np.ndarray:
        a, b = self.rows(item_id)
        return self.root[name][a:b]

    def iter_items(self, name: str = "feats", ids: Sequence[str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
        for item_id in ids if ids is not None else self.ids:
            yield item_id, self.get(item_id, name)
