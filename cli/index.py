"""An incremental index of a user's videos: the pipeline's compressed copies and zarr feature stores.

    INDEX/index.json                   the catalog: every indexed video (source path, size, mtime, duration,
                                       which batch store holds each feature kind), every failed file with why
    INDEX/compressed/                  3-fps working copies + ledger.jsonl (stages.compress.compress_all)
    INDEX/batches/<kind>-<key>/        one extraction batch: a mini project (data/manifest, data/compressed →
                                       INDEX/compressed, data/checkpoints/encoders/clip/best.pt → the CLIP
                                       checkpoint) whose data/features/<kind>.zarr models.encoders.extract
                                       writes exactly as `extract@<kind>` does

A video is new or changed when its path, size or mtime differ from the catalog's (one stat per file; compress
then reads each file once for the SHA-256 its ledger keys on). An update compresses and extracts only new and
changed videos, into a new batch store; removed and changed videos leave the catalog, and a batch
store no catalog entry points at any more is deleted. A batch's key hashes its videos' signatures and the
encoder, so a killed update, rerun, finds the same batch and resumes it (the compress ledger and the store's
finished shards), ending in the same index as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.progress import Steps
from cli.project import Project, relative
from vidmem.common import UserError, file_hash, read_json, write_json
from vidmem.ledger import Ledger
from vidmem.manifest import Manifest, Video
from vidmem.params import read
from vidmem.paths import Paths
from vidmem.store import FeatureStore
from vidmem.video import CompressConfig

log = logging.getLogger("vidmem.cli")

FORMAT = 1
VIDEO_EXTENSIONS = {
    ".mp4",
    ".m4v",
    ".mkv",
    ".webm",
    ".mov",
    ".avi",
    ".mpg",
    ".mpeg",
    ".ts",
    ".mts",
    ".m2ts",
    ".flv",
    ".wmv",
    ".3gp",
    ".ogv",
    ".ogg",
    ".vob",
    ".dv",
    ".y4m",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")


# --------------------------------------------------------------------------------------------------- inputs
def find_videos(
    paths: Sequence[str | os.PathLike], exclude: Sequence[str | os.PathLike] = ()
) -> tuple[list[Path], dict[str, str]]:
    """Video files of the given files and folders (folders: recursively, by extension, skipping hidden files
    and the `exclude` folders, e.g. the index's own compressed copies), absolute and sorted; and every
    argument that is no file or folder, with why."""
    found: dict[Path, None] = {}
    bad: dict[str, str] = {}
    skip = [Path(e).resolve() for e in exclude]
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                r = f.resolve()
                if any(r.is_relative_to(d) for d in skip):
                    continue
                if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS and not f.name.startswith("."):
                    found.setdefault(r, None)
        elif p.is_file():
            found.setdefault(p.resolve(), None)
        else:
            bad[str(arg)] = "no such file or folder"
    return sorted(found), bad


def video_id(path: Path) -> str:
    """A stable, file-name-safe id: the file's stem and a hash of its absolute path."""
    stem = _UNSAFE.sub("_", path.stem).strip("._") or "video"
    return f"{stem[:40]}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def signature(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# --------------------------------------------------------------------------------------------------- catalog
@dataclass
class Catalog:
    """index.json: the indexed videos and the files that failed."""

    videos: dict[str, dict[str, Any]] = field(default_factory=dict)  # id → entry
    failed: dict[str, str] = field(default_factory=dict)  # source path → reason
    encoder: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, index: Path) -> Catalog:
        path = index / "index.json"
        if not path.is_file():
            return cls()
        doc = read_json(path)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise UserError(f"{path}: not a vidmem index (format {FORMAT})")
        return cls(doc.get("videos") or {}, doc.get("failed") or {}, doc.get("encoder") or {})

    def write(self, index: Path) -> None:
        write_json(
            index / "index.json",
            {"format": FORMAT, "encoder": self.encoder, "videos": self.videos, "failed": self.failed},
        )


def open_index(index: str | os.PathLike) -> Catalog:
    """An existing index for searching; a missing one is one line naming the command that makes it."""
    path = Path(index)
    if not (path / "index.json").is_file():
        raise UserError(f"{path}: no vidmem index here; make one with `vidmem index FOLDER --out {path}`")
    return Catalog.read(path)


class IndexedFeatures:
    """A `get(video_id, name)` feature source over the catalog's batch stores (one FeatureStore per batch)."""

    def __init__(self, index: Path, catalog: Catalog, kind: str):
        self.kind = kind
        self._stores: dict[str, FeatureStore] = {}
        self._where: dict[str, str] = {}
        for vid, entry in catalog.videos.items():
            batch = (entry.get("stores") or {}).get(kind)
            if batch:
                self._where[vid] = batch
        for batch in set(self._where.values()):
            self._stores[batch] = FeatureStore(batch_paths(index, batch).store(kind))

    def __contains__(self, vid: str) -> bool:
        return vid in self._where

    def store_of(self, vid: str) -> FeatureStore:
        return self._stores[self._where[vid]]

    def get(self, vid: str, name: str = "feats"):
        return self.store_of(vid).get(vid, name)


def batch_paths(index: Path, batch: str) -> Paths:
    return Paths(index / "batches" / batch)


# --------------------------------------------------------------------------------------------------- progress
class ShardProgress:
    """A progress bar over an extraction's shards, read from the store's own progress files (the extraction
    code keeps them; this only watches), updated from a thread while `extract_store` runs."""

    def __init__(self, store: Path, desc: str, rows_per_shard: int):
        self.store, self.desc, self.rows_per_shard = store, desc, rows_per_shard
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ShardProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _total(self) -> int | None:
        try:
            offsets = json.loads((self.store / "offsets" / "zarr.json").read_text())
            n = int(offsets["shape"][0]) - 1
        except (OSError, ValueError, KeyError):
            return None
        import zarr

        rows = int(zarr.open_array(str(self.store / "offsets"), mode="r")[n]) if n > 0 else 0
        return max(1, -(-rows // self.rows_per_shard))

    def _done(self) -> int:
        n = 0
        for f in self.store.glob("progress.*.jsonl"):
            try:
                n += sum(1 for line in f.read_text().splitlines() if line.strip())
            except OSError:
                pass
        return n

    def _run(self) -> None:
        from cli.progress import bar

        total = None
        pbar = None
        while not self._stop.wait(0.5):
            if total is None:
                total = self._total()
                if total is None:
                    continue
                pbar = bar(total=total, desc=self.desc, unit="shard")
            pbar.update(min(self._done(), total) - pbar.n)
        if pbar is not None:
            pbar.update(total - pbar.n)
            pbar.close()


# --------------------------------------------------------------------------------------------------- update
@dataclass
class UpdateResult:
    catalog: Catalog
    added: list[str]  # new files
    changed: list[str]  # indexed before, with another size or mtime now: processed again
    removed: list[str]
    unchanged: list[str]
    failed: dict[str, str]  # source path → reason (this run's inputs only)
    steps: Steps = field(default_factory=Steps)  # wall time and peak memory of each step of this update


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.is_symlink() and os.readlink(link) == str(target):
            return
        link.unlink()
    link.symlink_to(target)


def _extract_batch(
    index: Path,
    kind: str,
    vids: list[str],
    sources: dict[str, Path],
    project: Project,
    clip_ckpt: Path,
    params: dict[str, Any],
    key: dict[str, Any],
) -> tuple[str, dict[str, str]]:
    """Extract `kind` features of `vids` into a batch store (resuming it) → (batch, failed id → reason)."""
    from models.encoders.extract import ExtractConfig, extract_store

    blob = json.dumps({"kind": kind, "videos": [[v, key[v]] for v in vids]}, sort_keys=True).encode()
    batch = f"{kind}-{hashlib.sha256(blob).hexdigest()[:12]}"
    paths = batch_paths(index, batch)
    Manifest(videos=[Video(v, str(sources[v])) for v in vids]).write(paths.manifest)
    _link((index / "compressed").resolve(), paths.compressed)
    _link(clip_ckpt.resolve(), paths.clip_checkpoint)
    cfg = read(ExtractConfig, params.get("extract"), "extract")
    with ShardProgress(paths.store(kind), f"extract {kind}", cfg.rows_per_chunk * cfg.chunks_per_shard):
        extract_store(kind, params, root=paths.root)
    ledger = Ledger(paths.store(kind) / "ledger.jsonl").rows()
    failed = {
        v: str(r.get("reason", "extraction failed")) for v, r in ledger.items() if r.get("status") != "done"
    }
    return batch, failed


def update_index(
    index: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    project: Project,
    kinds_of: Any = None,
    prune: bool = True,
    exclude: Sequence[str | os.PathLike] = (),
) -> UpdateResult:
    """Bring INDEX up to date with the videos under `inputs`.

    kinds_of(duration) → the feature kinds a video needs (default: clip). prune: drop catalog videos not
    under `inputs` (an index of one folder); without it they stay (a caption run adds to its work index).
    """
    from stages.compress import compress_all

    index = Path(index)
    index.mkdir(parents=True, exist_ok=True)
    kinds_of = kinds_of or (lambda duration: ("clip",))
    files, bad_args = find_videos(inputs, [index, *exclude])
    if not files and not bad_args:
        raise UserError(
            f"no video files under {', '.join(map(str, inputs))} "
            f"(looked for {', '.join(sorted(VIDEO_EXTENSIONS))})"
        )
    clip_ckpt = project.clip_checkpoint()
    params = project.extract_params(clip_ckpt)
    cfg = read(CompressConfig, params.get("compress"), "compress")
    cfg.check("compress")
    catalog = Catalog.read(index)
    encoder = {
        "clip_checkpoint_sha256": file_hash(clip_ckpt),
        "clip": params.get("clip"),
        "extract": params.get("extract"),
        "compress": cfg.encode(),
    }
    if catalog.encoder and catalog.encoder != encoder:  # other features: nothing can be reused
        log.warning("%s: built with another encoder or settings; rebuilding it", index)
        shutil.rmtree(index / "batches", ignore_errors=True)
        catalog = Catalog()
    catalog.encoder = encoder

    sigs = {video_id(f): signature(f) for f in files}
    sources = {vid: Path(s["path"]) for vid, s in sigs.items()}
    removed = [v for v, e in catalog.videos.items() if prune and v not in sigs]
    changed = [v for v, e in catalog.videos.items() if v in sigs and e.get("input") != sigs[v]]
    for v in removed + changed:
        catalog.videos.pop(v)

    # compress: every video under the inputs (unchanged ones are skipped by the ledger), plus kept ones
    keep = {v: Path(e["input"]["path"]) for v, e in catalog.videos.items() if v not in sigs}
    videos = [Video(v, str(p)) for v, p in {**keep, **sources}.items()]
    steps = Steps()
    with steps("compress"):
        compress_all(videos, index / "compressed", cfg)
    ledger = Ledger(index / "compressed" / "ledger.jsonl").rows()

    failed: dict[str, str] = dict(bad_args)
    ready: dict[str, float] = {}
    for vid in sigs:
        row = ledger.get(vid) or {}
        if row.get("status") == "done":
            ready[vid] = float((row.get("output") or {}).get("duration") or row.get("input_seconds") or 0.0)
        else:
            failed[str(sources[vid])] = str(row.get("reason", "not compressed"))
            catalog.videos.pop(vid, None)

    added = [v for v in ready if v not in catalog.videos]
    for vid in added:
        catalog.videos[vid] = {"input": sigs[vid], "duration": ready[vid], "stores": {}}
    needed: dict[str, list[str]] = {}
    for vid in ready:
        for kind in kinds_of(ready[vid]):
            if kind not in catalog.videos[vid]["stores"]:
                needed.setdefault(kind, []).append(vid)
    for kind, vids in needed.items():
        with steps(f"extract_{kind}"):
            batch, bad = _extract_batch(index, kind, sorted(vids), sources, project, clip_ckpt, params, sigs)
        for vid in vids:
            if vid in bad:
                failed[str(sources[vid])] = bad[vid]
                catalog.videos.pop(vid, None)
            elif vid in catalog.videos:
                catalog.videos[vid]["stores"][kind] = batch

    # forget failures of files that are gone or now indexed; drop batch stores nothing points at
    indexed = {e["input"]["path"] for e in catalog.videos.values()}
    catalog.failed = {
        p: r
        for p, r in {**catalog.failed, **failed}.items()
        if p not in indexed and (Path(p).exists() or p in failed)
    }
    if prune:
        catalog.failed = {p: r for p, r in catalog.failed.items() if p in failed}
    live = {b for e in catalog.videos.values() for b in e["stores"].values()}
    for d in (index / "batches").glob("*") if (index / "batches").is_dir() else []:
        if d.name not in live:
            shutil.rmtree(d, ignore_errors=True)
    catalog.videos = dict(sorted(catalog.videos.items()))
    catalog.write(index)
    unchanged = [v for v in ready if v not in added]
    return UpdateResult(
        catalog,
        [v for v in added if v not in changed],
        [v for v in added if v in changed],
        removed + [v for v in changed if v not in ready],
        unchanged,
        failed,
        steps,
    )


def display_name(entry: dict[str, Any]) -> str:
    return Path(entry["input"]["path"]).name


def describe_failures(failed: dict[str, str]) -> Iterable[str]:
    for path, why in sorted(failed.items()):
        yield f"  {relative(path)}: {why}"
