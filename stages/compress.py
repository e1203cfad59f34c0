"""Stage `compress`: transcode every manifest video to the working format (see vidmem.video), resumably.

Reads `data/manifest/videos.jsonl`, writes `data/compressed/<video_id>.mp4`, the ledger
`data/compressed/ledger.jsonl` (one row per manifest video, in manifest order: done, or failed with ffmpeg's
or ffprobe's reason) and `metrics/compress.json`.

`data/compressed` is a persistent DVC output, so a killed run keeps its finished videos. The ledger decides
what is redone: a video is skipped when its row was made from the same input file (path, size, SHA-256) with
the same encode settings and its output is still there; everything else is (re)done. Each output appears under
its final name only complete and verified, so a kill leaves at most temporary files, removed on the next run.
A bad video is recorded as failed and never stops the run. A video that decodes only in part (a truncated file
behind an intact index) is done but `partial` (see `partial_tolerance`, `partial_videos`): counted and listed
with its annotations past the decoded end in `metrics/compress.json`, never silent.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from vidmem.common import UserError, load_params, params_hash, run_stage, write_json
from vidmem.ledger import DONE, FAILED, Ledger
from vidmem.manifest import Manifest, Video
from vidmem.params import read
from vidmem.toolchain import versions
from vidmem.paths import Paths
from vidmem.video import CompressConfig, VideoError, compress_video, die_with_parent, ffmpeg_version, probe

log = logging.getLogger("stages.compress")

LEDGER_NAME = "ledger.jsonl"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]*$")


# -------------------------------------------------------------------------------------------------- one video
def input_signature(path: str) -> dict[str, Any]:
    """Path, size and SHA-256 of an input: a changed file is redone (size and digest None: not there).

    The content, not the mtime: the ledger is a DVC output, and a clean rerun that writes the same input bytes
    again (synth, a fresh checkout, a copy) must leave it byte-identical, or everything downstream reruns.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return {"path": path, "size": None, "sha256": None}
    return {"path": path, "size": size, "sha256": digest}


def partial_tolerance(fps: float) -> float:
    """How far the decoded end may fall short of the input's declared length before the video is `partial`.

    A clean transcode ends within a frame or two of the declared length (SynthVid: 0 to 0.17 s at 3 fps, the
    last frame's end past the container's duration); a source that decodes only in part stops seconds early.
    """
    return max(1.0, 3.0 / fps)


def compress_one(src: str, dst: str, encode: dict[str, Any], timeout: float,
                 declared: float | None = None) -> dict[str, Any]:
    """Runs in a pool worker: the ledger fields for one video. Never raises for a bad video.

    `declared`: the input's length as the manifest has it (ingest probed it); None: probed here, after a
    successful transcode. A video whose decoded end falls short of it by more than `partial_tolerance` is done
    but `partial`, with `decoded_seconds` beside `input_seconds`.
    """
    settings = {k: v for k, v in encode.items() if k != "command"}
    try:
        res = compress_video(src, dst, timeout=timeout, **settings)
    except VideoError as e:
        return {"status": FAILED, "reason": e.reason}
    except Exception as e:  # an unexpected failure on one file must not stop the others
        return {"status": FAILED, "reason": f"{type(e).__name__}: {e}"}
    out = res.output
    if declared is None:
        try:
            declared = probe(src).duration
        except VideoError:
            declared = None
    row = {
        "status": DONE,
        "output": {
            "file": Path(dst).name,
            "frames": out.frames,
            "width": out.width,
            "height": out.height,
            "duration": out.duration,
            "bytes": os.path.getsize(dst),
        },
        "seconds": res.seconds,
        "input_seconds": declared or out.duration,
    }
    if declared and out.duration is not None and declared - out.duration > partial_tolerance(encode["fps"]):
        row["partial"] = True
        row["decoded_seconds"] = out.duration
    if res.warnings:
        row["warnings"] = res.warnings
    return row


# ------------------------------------------------------------------------------------------------- all videos
def check_videos(videos: list[Video], manifest_file: Path) -> None:
    """Ids become file names: they must be unique and safe; every video needs a path."""
    seen: set[str] = set()
    for i, v in enumerate(videos, 1):
        where = f"{manifest_file}: entry {i} (video_id {v.video_id!r})"
        if not isinstance(v.video_id, str) or not _SAFE_ID.match(v.video_id) or v.video_id == LEDGER_NAME:
            raise UserError(f"{where}: field 'video_id' must be a plain file name (letters, digits, _.=+-)")
        if v.video_id in seen:
            raise UserError(f"{where}: field 'video_id' is a duplicate")
        if not isinstance(v.path, str) or not v.path:
            raise UserError(f"{where}: field 'path' is empty")
        seen.add(v.video_id)


def _is_reusable(row: dict[str, Any] | None, sig: dict[str, Any], phash: str, out_dir: Path,
                 retry_failed: bool) -> bool:
    if not row or row.get("params_hash") != phash or row.get("input") != sig:
        return False
    if row.get("status") == FAILED:
        return not retry_failed
    out = row.get("output") or {}
    dst = out_dir / str(out.get("file", ""))
    return row.get("status") == DONE and dst.is_file() and dst.stat().st_size == out.get("bytes")


def remove_temporaries(out_dir: Path) -> int:
    """Temporary files from a killed run (atomic writes name them '.<name>.<random>.tmp*')."""
    n = 0
    for p in out_dir.glob(".*.tmp*"):
        if p.is_file():
            p.unlink()
            n += 1
    return n


@contextlib.contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """One run per output folder: a second would delete the first one's temporary files and outputs.

    An flock on the folder itself (no lock file to end up in the DVC output); pool workers share it, and
    it is released when the run and its workers are gone, killed or not.
    """
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            msg = f"{out_dir}: another compress run is working in this folder; let it finish"
            raise UserError(msg) from None
        yield
    finally:
        os.close(fd)


def compress_all(videos: list[Video], out_dir: Path, cfg: CompressConfig) -> dict[str, Any]:
    """Bring `out_dir` up to date with `videos`; returns the metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(out_dir):
        return _compress_all(videos, out_dir, cfg)


def _compress_all(videos: list[Video], out_dir: Path, cfg: CompressConfig) -> dict[str, Any]:
    if n := remove_temporaries(out_dir):
        log.info("removed %d temporary file(s) left by an interrupted run", n)
    encode = cfg.encode()
    phash = params_hash(encode)
    t0 = time.perf_counter()

    ledger = Ledger(out_dir / LEDGER_NAME)
    # Rewrite the ledger before appending to it: a fresh file, never a DVC cache link (hardlink/symlink).
    ledger.finalize(list(ledger.rows()))
    sigs = {v.video_id: input_signature(v.path) for v in videos}
    todo = [v for v in videos if not _is_reusable(ledger.get(v.video_id), sigs[v.video_id], phash, out_dir,
                                                  cfg.retry_failed)]
    # Longest first, so the pool does not end waiting on one long video.
    todo.sort(key=lambda v: (-(v.duration or 0.0), -(sigs[v.video_id]["size"] or 0)))
    log.info("%d videos: %d up to date, %d to compress with %d worker(s)",
             len(videos), len(videos) - len(todo), len(todo), cfg.n_workers())

    with ledger:
        if todo:
            n_workers = min(cfg.n_workers(), len(todo))
            with ProcessPoolExecutor(max_workers=n_workers, initializer=die_with_parent) as pool:
                futures: dict[Future, Video] = {
                    pool.submit(compress_one, v.path, str(out_dir / f"{v.video_id}.mp4"), encode,
                                cfg.timeout_s, v.duration): v
                    for v in todo
                }
                version = ffmpeg_version()  # asked while the workers start on the first videos
                log.info("ffmpeg %s", version)
                for fut in tqdm(as_completed(futures), total=len(futures), desc="compress", unit="video",
                                disable=None):
                    v = futures[fut]
                    try:
                        row = fut.result()
                    except BrokenProcessPool:
                        raise UserError(
                            f"a compress worker died (killed, or out of memory?) while {v.video_id} was "
                            f"pending; finished videos are kept: rerun to resume, or lower compress.workers"
                        ) from None
                    if row["status"] == FAILED:
                        # A failed redo must not leave the previous output looking current.
                        (out_dir / f"{v.video_id}.mp4").unlink(missing_ok=True)
                        log.warning("%s: failed: %s", v.video_id, row["reason"])
                    # Wall time varies run to run: it goes to the log, never into the ledger (a DVC output whose
                    # bytes must repeat, or every downstream stage reruns for nothing).
                    log.debug("%s: %s in %.2f s", v.video_id, row["status"], row.pop("seconds", 0.0))
                    if row.get("partial"):
                        log.warning("%s: decodes only to %.2f s of its %.2f s (partial: kept, the rest is lost; "
                                    "see metrics/compress.json)", v.video_id, row["decoded_seconds"],
                                    row["input_seconds"])
                    ledger.record(v.video_id, row.pop("status"), input=sigs[v.video_id], params_hash=phash,
                                  ffmpeg=version, **row)

        keep = {v.video_id for v in videos if (ledger.get(v.video_id) or {}).get("status") == DONE}
        for p in out_dir.glob("[!.]*.mp4"):
            if p.stem not in keep:
                log.info("removing %s (no longer a finished manifest video)", p)
                p.unlink()
        rows = ledger.finalize([v.video_id for v in videos])

    done = [r for r in rows if r["status"] == DONE]
    metrics = {
        "videos": len(rows),
        "done": len(done),
        "failed": len(rows) - len(done),
        "input_seconds": round(sum(r.get("input_seconds") or 0.0 for r in done), 3),
        "output_frames": sum(r["output"]["frames"] for r in done),
        "bytes_in": sum(r["input"]["size"] for r in done),
        "bytes_out": sum(r["output"]["bytes"] for r in done),
        "partial": sum(1 for r in done if r.get("partial")),
        "partial_seconds_lost": round(sum(r["input_seconds"] - r["decoded_seconds"]
                                          for r in done if r.get("partial")), 3),
    }
    log.info("compress: %d done, %d failed (%d compressed this run in %.1f s)",
             metrics["done"], metrics["failed"], len(todo), time.perf_counter() - t0)
    return metrics


def partial_videos(ledger_rows: list[dict[str, Any]], manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Each partly decodable video, its lengths and what its timed annotations lose past the decoded end.

    The rule: such a video is compressed (what decodes is kept, its decoder warnings in the ledger row) and
    marked `partial`; its annotations stay in the manifest unchanged, so evaluation still scores against the
    truth, but each one reaching past the decoded end is counted here: `past_end` (starts at or after it: no
    frame of it exists) and `clipped` (straddles it), per table (events, queries, hierarchy).
    """
    out: dict[str, dict[str, Any]] = {}
    for r in ledger_rows:
        if r["status"] == DONE and r.get("partial"):
            out[r["key"]] = {"input_seconds": r["input_seconds"], "decoded_seconds": r["decoded_seconds"]}
    for table in ("events", "queries", "hierarchy"):
        for a in getattr(manifest, table):
            info = out.get(a.video_id)
            if info is None or a.end <= info["decoded_seconds"]:
                continue
            kind = "past_end" if a.start >= info["decoded_seconds"] else "clipped"
            counts = info.setdefault(table, {"past_end": 0, "clipped": 0})
            counts[kind] += 1
    return out


def main() -> None:
    cfg = read(CompressConfig, load_params().get("compress"), "compress")
    paths = Paths()
    videos_file = paths.manifest / "videos.jsonl"
    if not videos_file.is_file():
        raise UserError(f"{videos_file}: not found; run `dvc repro ingest` first")
    manifest = Manifest.read(paths.manifest, tables=("videos", "events", "queries", "hierarchy"))
    check_videos(manifest.videos, videos_file)
    metrics = compress_all(manifest.videos, paths.compressed, cfg)
    partial = partial_videos(list(Ledger(paths.compressed / LEDGER_NAME).rows().values()), manifest)
    for vid, info in partial.items():
        lost = {t: c for t, c in info.items() if isinstance(c, dict)}
        if lost:
            log.warning("%s: annotations past its decoded end (%.2f s): %s", vid, info["decoded_seconds"],
                        ", ".join(f"{t} {c['past_end']} past, {c['clipped']} clipped" for t, c in lost.items()))
    write_json(paths.metric("compress"), {**metrics, "partial_videos": partial,
                                          "toolchain": versions("ffmpeg", "libx264", "cpu")})


if __name__ == "__main__":
    run_stage(main)
