"""A folder of odd and broken videos, made here with ffmpeg, through compress AND extract (clip, lavila).

Each input is processed correctly or listed with a clear reason at every stage: compress's ledger has a row
per input (done, or failed with ffmpeg's / the probe's reason); the feature stores hold exactly the compressed
videos, every frame (clip) and every window (lavila) of each, none zero-filled or NaN, and the extract ledger
lists every other input with the reason it was not extracted. Nothing crashes, nothing is dropped silently.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from stages.compress import compress_all, partial_tolerance, partial_videos
from tests import media
from vidmem.common import read_jsonl
from vidmem.manifest import Event, Manifest, Query, Video
from vidmem.paths import Paths
from vidmem.store import FeatureStore
from vidmem.video import CompressConfig, probe

FPS = 3
DUR = 2.0


def _ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", *map(str, args)], check=True)


def _encode(path: Path, *codec: str, size: str = "320x240", duration: float = DUR, rate: int = 10) -> Path:
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={duration}", *codec, path)
    return path


# name → (maker(dir) → path, expected compress status, words of the reason when failed)
def _corpus() -> dict:
    x264 = ("-c:v", "libx264", "-preset", "ultrafast")
    return {
        "plain": (lambda d: media.lavfi_video(d / "plain.mp4", duration=DUR), "done", ""),
        "truncated_no_index": (lambda d: media.truncated(media.lavfi_video(d / ".t1.mp4", duration=DUR),
                                                         d / "truncated_no_index.mp4"), "failed",
                               "moov atom not found"),
        "truncated_with_index": (lambda d: media.truncated(
            media.lavfi_video(d / ".t2.mp4", duration=6, faststart=True), d / "truncated_with_index.mp4",
            0.5), "done", ""),
        "zero_bytes": (lambda d: media.zero_byte(d / "zero_bytes.mp4"), "failed", "empty file (0 bytes)"),
        "text_named_mp4": (lambda d: _text(d / "text_named_mp4.mp4"), "failed",
                           "Invalid data found when processing input"),
        "audio_only": (lambda d: _audio_only_mp4(d / "audio_only.mp4"), "failed",
                       "no video stream (streams: audio)"),
        "one_frame": (lambda d: _encode(d / "one_frame.mp4", *x264, "-frames:v", "1", rate=1), "done", ""),
        "one_short_frame": (lambda d: _encode(d / "one_short_frame.mp4", *x264, "-frames:v", "1"), "failed",
                            "ffmpeg wrote an unreadable file"),  # 0.1 s: no frame falls on the 3-fps grid
        "vfr": (lambda d: media.vfr_video(d / "vfr.mp4", ((10, 0.7), (30, 0.7), (5, 0.6))), "done", ""),
        "rotated": (lambda d: media.lavfi_video(d / "rotated.mp4", 320, 240, duration=DUR, rotate=90),
                    "done", ""),
        "odd_dims": (lambda d: media.lavfi_video(d / "odd_dims.mp4", 321, 241, duration=DUR), "done", ""),
        "yuv444p": (lambda d: _encode(d / "yuv444p.mp4", *x264, "-pix_fmt", "yuv444p"), "done", ""),
        "ten_bit": (lambda d: _encode(d / "ten_bit.mp4", *x264, "-pix_fmt", "yuv420p10le"), "done", ""),
        "vp9_webm": (lambda d: _encode(d / "vp9_webm.webm", "-c:v", "libvpx-vp9", "-deadline", "realtime",
                                       "-cpu-used", "8", "-b:v", "200k"), "done", ""),
        "mkv": (lambda d: _encode(d / "mkv.mkv", *x264), "done", ""),
    }


def _text(path: Path) -> Path:
    path.write_text("This is not a video, only text with a video's name.\n" * 50)
    return path


def _audio_only_mp4(path: Path) -> Path:
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={DUR}", "-c:a", "aac", path)
    return path


CORPUS = _corpus()


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    """Corpus → compress_all → extract clip + lavila (in process), in one small project."""
    from models.encoders.clip import ClipConfig, build_clip
    from models.encoders.extract import extract_store

    root = tmp_path_factory.mktemp("badvideos")
    raw = root / "raw"
    raw.mkdir()
    videos = [Video(name, str(make(raw)), None) for name, (make, _, _) in CORPUS.items()]
    videos.append(Video("missing", str(raw / "missing.mp4"), None))
    params = {"compress": {"fps": FPS, "short_side": 224, "workers": 2},
              "clip": {"model": "vidmem-tiny", "pretrained": "none", "seed": 0},
              "extract": {"batch_size": 8, "rows_per_chunk": 8, "chunks_per_shard": 2, "threads": 1,
                          "lavila": {"window": 4.0, "frames": 4, "checkpoint": "none", "dense_tokens": False},
                          "text": {"max_tokens": 16}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    Manifest(videos=videos).write(root / "data" / "manifest")
    paths = Paths(root)
    compress_all(videos, paths.compressed, CompressConfig(fps=FPS, workers=2))
    paths.clip_checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": build_clip(ClipConfig()).model.state_dict(), "epoch": 0}, paths.clip_checkpoint)
    for kind in ("clip", "lavila"):
        extract_store(kind, params, root)
    return root


def _ledger(path: Path) -> dict[str, dict]:
    return {r["key"]: r for r in read_jsonl(path)}


def test_compress_processes_or_lists_every_input(processed):
    rows = _ledger(Paths(processed).compressed / "ledger.jsonl")
    assert list(rows) == [*CORPUS, "missing"]  # every input, in manifest order
    assert rows["missing"]["status"] == "failed" and "file not found" in rows["missing"]["reason"]
    for name, (_, status, words) in CORPUS.items():
        row = rows[name]
        assert row["status"] == status, (name, row)
        out = Paths(processed).compressed / f"{name}.mp4"
        if status == "failed":
            assert words in row["reason"] and row["reason"].strip(), (name, row)
            assert not out.exists()
            continue
        info = probe(out, count_frames=True)
        assert (info.codec, info.fps) == ("h264", FPS) and min(info.width, info.height) == 224
        assert info.width % 2 == 0 and info.height % 2 == 0
        assert info.frames == row["output"]["frames"] > 0
    # a rotation tag is applied to the pixels: the stored 320x240 phone video comes out portrait
    assert probe(Paths(processed).compressed / "rotated.mp4").height > probe(
        Paths(processed).compressed / "rotated.mp4").width
    for name in ("plain", "yuv444p", "ten_bit", "vp9_webm", "mkv", "odd_dims", "rotated"):
        assert abs(rows[name]["output"]["frames"] - FPS * DUR) <= 1, name
    # truncated behind an index: what decodes is kept and the decoder's complaint is in the row, not silent
    cut = rows["truncated_with_index"]
    assert 0 < cut["output"]["frames"] < FPS * 6 and cut.get("warnings")
    # ... and it is marked partial, with the decoded length beside the declared one (never silent)
    assert cut["partial"] is True and cut["input_seconds"] == pytest.approx(6.0, abs=0.1)
    assert cut["decoded_seconds"] == cut["output"]["duration"] < cut["input_seconds"] - partial_tolerance(FPS)
    whole = [n for n, (_, status, _) in CORPUS.items() if status == "done" and n != "truncated_with_index"]
    assert not [n for n in whole if "partial" in rows[n] or "decoded_seconds" in rows[n]], whole


def test_partial_video_annotations_past_the_decoded_end_are_counted(processed):
    """The rule for a partial video: kept, and every timed annotation reaching past its decoded end counted."""
    rows = list(_ledger(Paths(processed).compressed / "ledger.jsonl").values())
    end = next(r for r in rows if r["key"] == "truncated_with_index")["decoded_seconds"]
    manifest = Manifest(
        events=[Event("truncated_with_index", "test", 0.0, end - 0.5, "inside"),
                Event("truncated_with_index", "test", end - 0.5, end + 1.0, "straddles"),
                Event("truncated_with_index", "test", end + 0.1, end + 2.0, "after"),
                Event("plain", "test", 0.0, 1.9, "a whole video's event")],
        queries=[Query("q0", "truncated_with_index", "test", end, end + 1.0, "after")])
    report = partial_videos(rows, manifest)
    assert list(report) == ["truncated_with_index"]
    assert report["truncated_with_index"] == {
        "input_seconds": pytest.approx(6.0, abs=0.1), "decoded_seconds": end,
        "events": {"past_end": 1, "clipped": 1}, "queries": {"past_end": 1, "clipped": 0}}


def test_failure_reasons_carry_no_clock_time(processed, tmp_path):
    """A failure reason sits in data/compressed/ledger.jsonl, a DVC output: it must not vary run to run."""
    first = _ledger(Paths(processed).compressed / "ledger.jsonl")
    time.sleep(1.1)
    again = tmp_path / "again"
    videos = Manifest.read(Paths(processed).manifest).videos
    one = [v for v in videos if v.video_id == "one_short_frame"]
    compress_all(one, again, CompressConfig(fps=FPS, workers=1))
    reason = _ledger(again / "ledger.jsonl")["one_short_frame"]["reason"]
    assert not re.search(r"\[\d\d:\d\d:\d\d\]", first["one_short_frame"]["reason"])
    assert reason == first["one_short_frame"]["reason"]


def test_extract_holds_every_compressed_video_and_lists_the_rest(processed):
    paths = Paths(processed)
    compressed = _ledger(paths.compressed / "ledger.jsonl")
    done = [k for k, r in compressed.items() if r["status"] == "done"]
    for kind in ("clip", "lavila"):
        store = FeatureStore(paths.store(kind))
        assert store.ids == done, kind  # manifest order, nothing dropped, nothing extra
        ledger = _ledger(store.path / "ledger.jsonl")
        assert set(ledger) == set(compressed)
        for key, row in ledger.items():
            if key in done:
                assert row["status"] == "done", (kind, key, row)
            else:
                assert row["status"] == "failed" and compressed[key]["reason"] in row["reason"], (kind, row)
        metrics = json.loads((processed / "metrics" / f"features_{kind}.json").read_text())
        assert metrics["items"] == len(done) and metrics["failed"] == len(compressed) - len(done)
        for vid in done:
            feats = store.get(vid).astype(np.float32)
            assert np.isfinite(feats).all() and (np.linalg.norm(feats, axis=1) > 0).all(), (kind, vid)
            frames = compressed[vid]["output"]["frames"]
            if kind == "clip":
                assert len(feats) == frames, vid  # one row per decoded frame
                assert len({row.tobytes() for row in feats}) > 1 or frames == 1, vid  # not one row repeated
            else:  # one window per 4 s of the 3-fps copy, the last one partial
                assert len(feats) == math.ceil(frames / FPS / 4.0 - 1e-9), vid
