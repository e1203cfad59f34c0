"""extract@{clip,lavila,text} end to end in a small project: store layout and reads, values equal a direct
encoder forward, undecodable videos in the ledger, kill -9 resume byte-identical, torchrun equal to one process."""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.media import lavfi_video
from tests.project import DURATIONS, digest, make_project
from vidmem.paths import Paths
from vidmem.store import FeatureStore

REPO = Path(__file__).resolve().parents[1]


def run_in_process(root: Path, kind: str) -> None:
    """The stage's library entry point, without a new interpreter (imports dominate these tiny runs)."""
    from vidmem.common import load_params
    from models.encoders.extract import extract_store

    extract_store(kind, load_params(root / "params.yaml"), root)


def run_stage(root: Path, *args: str, torchrun: int = 0, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "VIDMEM_LOG": "WARNING"}
    if torchrun:
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={torchrun}",
               "-m", "stages.extract", *args]
    else:
        cmd = [sys.executable, "-m", "stages.extract", *args]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("extract") / "proj")
    run_stage(root, "clip")  # once through `python -m stages.extract`
    for kind in ("lavila", "text"):
        run_in_process(root, kind)
    return root


def load_encoder(root: Path):
    from models.encoders.clip import ClipConfig, build_clip

    return build_clip(ClipConfig(pretrained=str(Paths(root).clip_checkpoint)))


def test_clip_store_layout_values_and_ledger(project):
    import decord

    store = FeatureStore(project / "data" / "features" / "clip.zarr")
    assert store.ids == list(DURATIONS)  # manifest order; broken videos absent
    assert store.attrs["kind"] == "clip" and store.attrs["encoder"] == "vidmem-tiny" and store.attrs["fps"] == 3.0
    assert store.attrs["checkpoint_sha256"] == hashlib.sha256(
        Paths(project).clip_checkpoint.read_bytes()).hexdigest()
    feats = store.array("feats")
    assert feats.dtype == np.float16 and feats.shape[1] == 128 and feats.shards[0] == 16
    encoder = load_encoder(project)
    for vid, dur in DURATIONS.items():
        vr = decord.VideoReader(str(project / "data" / "compressed" / f"{vid}.mp4"))
        assert len(store.get(vid)) == len(vr) and abs(len(vr) - 3 * dur) <= 1
        np.testing.assert_allclose(store.get(vid, "times"), vr.get_frame_timestamp(range(len(vr)))[:, 0], atol=1e-6)
        with torch.no_grad():
            ref = encoder.encode_image(encoder.preprocess(torch.from_numpy(vr.get_batch(range(len(vr))).asnumpy())))
        np.testing.assert_allclose(store.get(vid).astype(np.float32), ref.numpy(), rtol=2e-3, atol=2e-3)
    ledger = {r["key"]: r for r in map(json.loads, (store.path / "ledger.jsonl").read_text().splitlines())}
    assert ledger["vid_bad"]["status"] == "failed" and "vid_bad.mp4" in ledger["vid_bad"]["reason"]
    assert ledger["vid_gone"]["status"] == "failed" and "moov atom" in ledger["vid_gone"]["reason"]
    assert all(ledger[v]["status"] == "done" for v in DURATIONS)
    metrics = json.loads((project / "metrics" / "features_clip.json").read_text())
    assert metrics["failed"] == 2 and metrics["items"] == 4


def test_lavila_windows_from_real_timestamps(project):
    from models.encoders.timesformer import VideoEncoder
    from vidmem.decode import frame_times, open_video, read_frames, video_end, window_frames

    store = FeatureStore(project / "data" / "features" / "lavila.zarr")
    assert store.attrs["window"] == 4.0 and store.attrs["frames"] == 4
    video_enc = VideoEncoder.from_clip(load_encoder(project), num_frames=4).eval()
    for vid, dur in DURATIONS.items():
        n = math.ceil(dur / 4 - 1e-9)
        np.testing.assert_allclose(store.get(vid, "times"), np.arange(n) * 4.0)
        vr = open_video(project / "data" / "compressed" / f"{vid}.mp4")
        _, idx = window_frames(frame_times(vr), video_end(vr), 4.0, 4)
        assert idx.shape == (n, 4)
        clips = read_frames(vr, idx.reshape(-1)).reshape(n, 4, *vr[0].shape)
        with torch.no_grad():
            ref = video_enc(video_enc.preprocess(torch.from_numpy(clips)))
        np.testing.assert_allclose(store.get(vid).astype(np.float32), ref.numpy(), rtol=2e-3, atol=2e-3)


def test_window_frames_sample_midpoints():
    from vidmem.decode import window_frames

    times = np.arange(30) / 3.0  # 10 s at 3 fps
    starts, idx = window_frames(times, 10.0, 4.0, 4)
    np.testing.assert_array_equal(starts, [0, 4, 8])
    np.testing.assert_array_equal(idx[0], [1, 4, 7, 10])  # frames shown at 0.5, 1.5, 2.5, 3.5 s
    assert idx[2].max() == 29  # the last window is clipped to the last frame


def test_text_store(project):
    store = FeatureStore(project / "data" / "features" / "text.zarr")
    assert store.ids == ["a red circle moves left", "the blue square grows"]
    encoder = load_encoder(project)
    tokens = encoder.tokenize(store.ids)
    with torch.no_grad():
        ref = encoder.encode_text(tokens)
        tok, eot = encoder.text_tokens(tokens)
    for i, text in enumerate(store.ids):
        np.testing.assert_allclose(store.get(text, "sentence")[0].astype(np.float32), ref[i].numpy(), rtol=2e-3, atol=2e-3)
        n = int(store.get(text, "n_tokens")[0])
        assert n == int(eot[i]) + 1
        got = store.get(text, "tokens")[0].astype(np.float32)
        np.testing.assert_allclose(got[:n], tok[i, :n].numpy(), rtol=2e-3, atol=2e-3)
        assert not got[n:].any()


def test_second_run_keeps_complete_store(project):
    before = digest(project / "data" / "features" / "clip.zarr")
    t = time.time()
    run_in_process(project, "clip")
    assert digest(project / "data" / "features" / "clip.zarr") == before
    assert time.time() - t < 60


def test_changed_extraction_code_recomputes_the_store(project, tmp_path, monkeypatch):
    """A persisted store made by other extraction code is not resumed as up to date: it is computed again."""
    import models.encoders.extract as ex

    code = tmp_path / "code"
    code.mkdir()
    (code / "extract.py").write_text("# version 1\n")
    monkeypatch.setattr(ex, "PROJECT", code)
    monkeypatch.setattr(ex, "CODE", ("extract.py",))
    store = project / "data" / "features" / "text.zarr"
    run_in_process(project, "text")
    first = FeatureStore(store)
    key1, feats = first.attrs["code_sha256"], np.asarray(first.root["sentence"][:])
    run_in_process(project, "text")
    assert FeatureStore(store).attrs["code_sha256"] == key1  # same code: kept
    (code / "extract.py").write_text("# version 2\n")
    marker = store / "plan.json"
    before = marker.stat().st_mtime_ns
    run_in_process(project, "text")
    again = FeatureStore(store)
    assert again.attrs["code_sha256"] != key1
    assert marker.stat().st_mtime_ns != before  # planned and written again, not resumed
    np.testing.assert_array_equal(np.asarray(again.root["sentence"][:]), feats)
    monkeypatch.undo()
    run_in_process(project, "text")  # leave the shared project as the other tests expect it


def test_kill_and_resume_is_byte_identical(tmp_path):
    ref = make_project(tmp_path / "ref", batch_size=2, rows_per_chunk=4, extra_video_seconds=30)
    run_in_process(ref, "clip")
    root = make_project(tmp_path / "killed", batch_size=2, rows_per_chunk=4, extra_video_seconds=30)
    env = {**os.environ, "PYTHONPATH": str(REPO), "VIDMEM_LOG": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.extract", "clip"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = root / "data" / "features" / "clip.zarr" / "progress.0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "stage finished before it could be killed; make the work larger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(progress.read_text().splitlines())
    assert done >= 3
    run_stage(root, "clip")
    assert digest(root / "data" / "features" / "clip.zarr") == digest(ref / "data" / "features" / "clip.zarr")


def test_torchrun_equals_single_process(project, tmp_path):
    root = make_project(tmp_path / "dist")
    proc = run_stage(root, "clip", torchrun=2)
    assert proc.returncode == 0
    assert digest(root / "data" / "features" / "clip.zarr") == digest(project / "data" / "features" / "clip.zarr")


def test_video_failing_part_way_is_listed_not_zero_filled(tmp_path):
    from tests.media import garbled

    root = make_project(tmp_path / "mid")
    comp = root / "data" / "compressed"
    src = lavfi_video(tmp_path / "src.mp4", 298, 224, fps=3, duration=20, faststart=True)
    garbled(src, comp / "vid_c.mp4", at=0.5, nbytes=20000)  # opens, then fails to decode half-way
    run_in_process(root, "clip")
    store = FeatureStore(root / "data" / "features" / "clip.zarr")
    assert "vid_c" not in store and store.ids == ["vid_a", "vid_b", "vid_d"]
    ledger = {r["key"]: r for r in map(json.loads, (store.path / "ledger.jsonl").read_text().splitlines())}
    assert ledger["vid_c"]["status"] == "failed" and "part-way" in ledger["vid_c"]["reason"]


def test_row_ranges_equal_the_whole_video_bit_for_bit(project):
    from models.encoders.timesformer import VideoEncoder
    from models.encoders.extract import ClipFrameExtractor, WindowExtractor, aligned_batches

    assert aligned_batches(5, 17, 4) == ([(4, 8), (8, 12), (12, 16), (16, 20)], 1)
    encoder = load_encoder(project)
    path = project / "data" / "compressed" / "vid_d.mp4"  # 13 s: 39 frames, 4 windows
    windows = WindowExtractor(VideoEncoder.from_clip(encoder).eval(), 12, 4.0, 4)  # 12 frames: 3 windows
    assert windows.batch_size == 3
    for ex in (ClipFrameExtractor(encoder, 4), windows):
        whole = ex.compute(path)
        n = len(whole["feats"])
        for lo, hi in ((0, n), (1, n - 1), (n // 2, n // 2 + 1), (2, 3)):
            part = ex.compute(path, lo, hi)
            for key in whole:
                np.testing.assert_array_equal(part[key], whole[key][lo:hi])


class _CountingReader:
    """Enough of decord's VideoReader for read_frames: records how many frames each request asks for."""

    def __init__(self, n: int):
        self.n, self.requests = n, []

    def get_batch(self, indices):
        self.requests.append(len(indices))
        frames = np.zeros((len(indices), 2, 2, 3), np.uint8)
        frames[:, 0, 0, 0] = np.asarray(indices) % 256
        return type("Batch", (), {"asnumpy": lambda _self: frames})()

    def seek(self, _):
        pass


def test_window_batches_decode_at_most_chunk_frames():
    """A window batch is 2-D (windows × frames): decode_groups must count its frames, not its rows, or each
    decord request holds `frames`× more frames and the peak grows with the video (measured: 943 → 1273 MB,
    1 → 10 minutes)."""
    from vidmem.decode import decode_groups

    idx = np.arange(600).reshape(150, 4)  # 150 windows of 4 frames
    vr = _CountingReader(600)
    groups = [idx[a:a + 8] for a in range(0, 150, 8)]
    out = list(decode_groups(vr, groups, chunk=128))
    assert max(vr.requests) <= 128 and sum(vr.requests) == 600
    assert [len(f) for f in out] == [g.size for g in groups]
    assert np.array_equal(np.concatenate(out)[:, 0, 0, 0], np.arange(600) % 256)


def test_window_extractor_batches_count_frames(project):
    """extract.batch_size counts frames through the tower for both extractors: 32 → 8 windows of 4 frames."""
    from models.encoders.extract import build_extractor

    ex, _ = build_extractor("lavila", {"extract": {"batch_size": 32, "lavila": {"frames": 4}},
                                        "clip": {"model": "vidmem-tiny", "pretrained": "none"}}, project)
    assert ex.batch_size == 8
