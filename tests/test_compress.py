"""The compress stage: real ffmpeg on small generated videos, checked with ffprobe.

Shapes (landscape, portrait, odd, rotated phone video, non-square pixels, variable frame rate) come out at
3 fps, short side 224, even sizes, no audio; broken inputs are failed with the tool's reason and leave no
file; the stage accounts for every video, skips finished work, and resumes after SIGKILL to the same bytes.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.compress import check_videos, compress_all
from tests import media
from vidmem.common import UserError, read_jsonl
from vidmem.manifest import Manifest, Video
from vidmem.params import read
from vidmem.video import CompressConfig, VideoError, compress_video, probe, scaled_size

ROOT = Path(__file__).resolve().parents[1]
FPS, SHORT = 3, 224

# name → (factory, expected output width, height)
GOOD = {
    "landscape": (lambda p: media.lavfi_video(p, 320, 240, audio=True), 298, 224),
    "portrait": (lambda p: media.lavfi_video(p, 240, 320), 224, 298),
    "odd": (lambda p: media.lavfi_video(p, 321, 241), 298, 224),
    "odd_portrait": (lambda p: media.lavfi_video(p, 241, 321), 224, 298),
    "phone_rotated": (lambda p: media.lavfi_video(p, 320, 240, rotate=90), 224, 298),
    "anamorphic": (lambda p: media.lavfi_video(p, 320, 240, sar="4/3"), 398, 224),
    "vfr": (lambda p: media.vfr_video(p), 298, 224),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    out = {name: make(d / f"{name}.mp4") for name, (make, _, _) in GOOD.items()}
    plain = media.lavfi_video(d / "plain.mp4", 320, 240)
    out["zero"] = media.zero_byte(d / "zero.mp4")
    out["truncated"] = media.truncated(plain, d / "truncated.mp4")
    out["garbage"] = media.garbage(d / "garbage.mp4")
    out["audio_only"] = media.audio_only(d / "audio_only.m4a")
    still = media.lavfi_video(d / "still.mkv", 64, 48, duration=0.1)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", still, "-frames:v", "1", "-f", "image2", d / "still.mp4"],
        check=True,
    )
    out["still"] = d / "still.mp4"
    fast = media.lavfi_video(d / "faststart.mp4", 320, 240, faststart=True)
    out["garbled"] = media.garbled(fast, d / "garbled.mp4")
    return out


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if ".tmp" in p.name)


# -------------------------------------------------------------------------------------------------- one video
@pytest.mark.parametrize("name", list(GOOD))
def test_compress_shapes(inputs, tmp_path, name):
    src = inputs[name]
    _, want_w, want_h = GOOD[name]
    res = compress_video(src, tmp_path / "out.mp4", fps=FPS, short_side=SHORT)
    info = media.probe_json(tmp_path / "out.mp4")
    (v,) = info["streams"]  # one stream: the video, no audio
    assert v["codec_type"] == "video" and v["codec_name"] == "h264" and v["pix_fmt"] == "yuv420p"
    assert (v["width"], v["height"]) == (want_w, want_h)
    assert min(v["width"], v["height"]) == SHORT and v["width"] % 2 == 0 and v["height"] % 2 == 0
    assert v.get("sample_aspect_ratio", "1:1") == "1:1"
    assert "side_data_list" not in v  # rotation applied to the pixels, no tag left
    assert v["avg_frame_rate"] == v["r_frame_rate"] == "3/1"
    frames = len(media.frame_times(tmp_path / "out.mp4"))
    src_info = probe(src)
    assert frames == res.output.frames
    assert abs(frames - FPS * src_info.duration) <= 1.5
    assert scaled_size(src_info.width, src_info.height, SHORT, src_info.sar) == (want_w, want_h)
    assert res.warnings == ""
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("size, upscale, want", [
    ((160, 90), False, (160, 90)),     # low resolution keeps its size: no bytes for invented pixels
    ((160, 90), True, (398, 224)),
    ((90, 160), False, (90, 160)),     # portrait likewise
    ((161, 91), False, (160, 90)),     # odd sizes round to even
    ((320, 240), False, (298, 224)),   # above short_side: scaled down as always
])
def test_upscale_off_keeps_low_resolution_sources(tmp_path, size, upscale, want):
    src = media.lavfi_video(tmp_path / "src.mp4", *size, duration=1.0)
    compress_video(src, tmp_path / "out.mp4", fps=FPS, short_side=SHORT, upscale=upscale)
    (v,) = media.probe_json(tmp_path / "out.mp4")["streams"]
    assert (v["width"], v["height"]) == want
    info = probe(src)
    assert scaled_size(info.width, info.height, SHORT, info.sar, upscale=upscale) == want


def test_vfr_input_becomes_constant_rate(inputs, tmp_path):
    assert media.is_vfr(inputs["vfr"])
    compress_video(inputs["vfr"], tmp_path / "out.mp4")
    times = media.frame_times(tmp_path / "out.mp4")
    assert not media.is_vfr(tmp_path / "out.mp4")
    assert times[1] - times[0] == pytest.approx(1 / 3, abs=1e-3)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("zero", "empty file (0 bytes)"),
        ("truncated", "moov atom not found"),
        ("garbage", "Invalid data found when processing input"),
        ("audio_only", "no video stream (streams: audio)"),
        ("still", "a still image"),
        ("missing", "file not found"),
    ],
)
def test_broken_inputs_fail_with_reason_and_no_file(inputs, tmp_path, name, reason):
    src = inputs.get(name, tmp_path / "missing.mp4")
    dst = tmp_path / "out" / "x.mp4"
    dst.parent.mkdir()
    with pytest.raises(VideoError) as err:
        compress_video(src, dst)
    assert reason in err.value.reason
    assert "0x" not in err.value.reason  # per-run pointer addresses are stripped: reasons are stable
    assert list(dst.parent.iterdir()) == []


def test_ffmpeg_failure_reason_is_ffmpegs_own(inputs, tmp_path):
    with pytest.raises(VideoError) as err:
        compress_video(inputs["landscape"], tmp_path / "out.mp4", preset="nonsense")
    assert "nonsense" in err.value.reason and "Error" in err.value.reason
    assert list(tmp_path.iterdir()) == []


def test_partly_corrupt_input_is_kept_with_warnings(inputs, tmp_path):
    res = compress_video(inputs["garbled"], tmp_path / "out.mp4")
    assert res.output.frames > 0 and "Invalid" in res.warnings


def test_timeout_fails_cleanly(inputs, tmp_path):
    with pytest.raises(VideoError, match="timed out"):
        compress_video(inputs["landscape"], tmp_path / "out.mp4", timeout=0.01)
    assert list(tmp_path.iterdir()) == []


def test_rerun_is_byte_identical(inputs, tmp_path):
    a = compress_video(inputs["odd"], tmp_path / "a.mp4").output
    b = compress_video(inputs["odd"], tmp_path / "b.mp4").output
    assert Path(a.path).read_bytes() == Path(b.path).read_bytes()


# -------------------------------------------------------------------------------------------------- the stage
def _stat(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in d.glob("[!.]*.mp4")}


def test_compress_all_accounts_for_every_video_and_skips_finished(inputs, tmp_path):
    names = ["landscape", "zero", "portrait", "audio_only", "truncated", "vfr"]
    videos = [Video(n, str(inputs[n])) for n in names] + [Video("gone", str(tmp_path / "nope.mp4"))]
    out = tmp_path / "compressed"
    cfg = CompressConfig(workers=2)
    metrics = compress_all(videos, out, cfg)

    rows = read_jsonl(out / "ledger.jsonl")
    assert [r["key"] for r in rows] == names + ["gone"]  # manifest order, every input
    status = {r["key"]: r["status"] for r in rows}
    assert status == {"landscape": "done", "zero": "failed", "portrait": "done", "audio_only": "failed",
                      "truncated": "failed", "vfr": "done", "gone": "failed"}
    reasons = {r["key"]: r.get("reason", "") for r in rows}
    assert "moov atom not found" in reasons["truncated"] and "no video stream" in reasons["audio_only"]
    assert sorted(p.name for p in out.iterdir()) == ["landscape.mp4", "ledger.jsonl", "portrait.mp4",
                                                     "vfr.mp4"]
    assert metrics["done"] == 3 and metrics["failed"] == 4 and metrics["videos"] == 7
    assert metrics["output_frames"] == sum(r["output"]["frames"] for r in rows if r["status"] == "done")
    assert metrics["bytes_out"] == sum(p.stat().st_size for p in out.glob("*.mp4"))

    # Same inputs, same params: nothing is redone.
    before = _stat(out)
    compress_all(videos, out, cfg)
    assert _stat(out) == before and read_jsonl(out / "ledger.jsonl") == rows

    # A changed input is redone, alone; a dropped video loses its output and ledger row.
    changed = tmp_path / "changed.mp4"
    changed.write_bytes(inputs["odd"].read_bytes())
    videos = [Video("landscape", str(changed))] + videos[1:5]
    compress_all(videos, out, cfg)
    after = _stat(out)
    assert after["portrait.mp4"] == before["portrait.mp4"]
    assert after["landscape.mp4"] != before["landscape.mp4"]
    assert "vfr.mp4" not in after
    assert [r["key"] for r in read_jsonl(out / "ledger.jsonl")] == names[:5]

    # Changed encode settings redo every finished video.
    compress_all(videos, out, CompressConfig(workers=2, crf=30))
    assert all(after[k] != v for k, v in _stat(out).items())


def test_two_runs_write_byte_identical_outputs_and_ledgers(inputs, tmp_path):
    """Nothing that varies run to run (wall times, dates, hosts) may sit in the DVC output."""
    videos = [Video(n, str(inputs[n])) for n in ("landscape", "zero", "portrait")]
    for run in ("a", "b"):
        compress_all(videos, tmp_path / run, CompressConfig(workers=2))
    a, b = (sorted((p.name, p.read_bytes()) for p in (tmp_path / r).iterdir()) for r in ("a", "b"))
    assert [n for n, _ in a] == ["landscape.mp4", "ledger.jsonl", "portrait.mp4"] and a == b
    assert "seconds" not in (tmp_path / "a" / "ledger.jsonl").read_text().replace("input_seconds", "")


def test_one_run_per_output_folder(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another compress run is working in this folder"):
            compress_all([Video("a", "a.mp4")], tmp_path, CompressConfig())
    finally:
        os.close(fd)
    assert list(tmp_path.iterdir()) == []


def test_manifest_and_params_are_checked():
    with pytest.raises(UserError, match="entry 2 .*'video_id' is a duplicate"):
        check_videos([Video("a", "x.mp4"), Video("a", "y.mp4")], Path("videos.jsonl"))
    with pytest.raises(UserError, match="entry 1 .*'video_id' must be a plain file name"):
        check_videos([Video("../a", "x.mp4")], Path("videos.jsonl"))
    with pytest.raises(UserError, match="params.yaml compress.short_side: must be even, got 223"):
        read(CompressConfig, {"short_side": 223}, "compress")
    with pytest.raises(UserError, match="params.yaml compress.fsp: unknown key .did you mean 'fps'"):
        read(CompressConfig, {"fsp": 3}, "compress")
    with pytest.raises(UserError, match="params.yaml compress.crf: must be in .0, 51., got 60"):
        read(CompressConfig, {"crf": 60}, "compress")
    assert read(CompressConfig, {"fps": "3", "timeout_s": "1e3"}, "compress").encode()["fps"] == 3


def _project(d: Path, videos: list[Video], workers: int = 1) -> Path:
    """A project directory as the stage sees it: params.yaml and data/manifest/."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "params.yaml").write_text(f"compress:\n  fps: {FPS}\n  short_side: {SHORT}\n  workers: {workers}\n")
    Manifest(videos=videos).write(d / "data" / "manifest")
    return d


def _stage(cwd: Path) -> subprocess.Popen:
    """Start `python -m stages.compress` in `cwd`; stderr goes to a file (a pipe could outlive a kill)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(cwd / "stderr.txt", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "stages.compress"], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)


def _finish(proc: subprocess.Popen, cwd: Path, timeout: float = 120) -> tuple[int, str]:
    rc = proc.wait(timeout=timeout)
    return rc, (cwd / "stderr.txt").read_text()


def _our_processes(marker: str) -> dict[int, str]:
    """Live processes (pid → command line) that mention `marker` (our temp dir): none may outlive a kill."""
    found = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = next(ln for ln in (p / "status").read_text().splitlines() if ln.startswith("State:"))
            except (OSError, StopIteration):
                continue
            if marker in cmd and "zombie" not in state:
                found[int(p.name)] = cmd
    return found


def test_stage_resumes_after_sigkill(tmp_path):
    raw = tmp_path / "raw"
    videos = [Video(f"v{i}", str(media.lavfi_video(raw / f"v{i}.mp4", duration=6))) for i in range(6)]
    videos.insert(2, Video("broken", str(media.zero_byte(raw / "broken.mp4"))))

    ref = _project(tmp_path / "ref", videos)
    rc, err = _finish(_stage(ref), ref)
    assert rc == 0, err
    ref_out = ref / "data" / "compressed"

    work = _project(tmp_path / "work", videos)
    out, ledger = work / "data" / "compressed", work / "data" / "compressed" / "ledger.jsonl"
    proc = _stage(work)
    deadline = time.monotonic() + 60
    while not (ledger.exists() and ledger.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, "stage ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    time.sleep(0.3)
    assert _our_processes(str(tmp_path)) == {}  # ffmpeg and the pool workers died with the stage

    finished = {r["key"]: r for r in read_jsonl(ledger)}
    assert 1 <= len(finished) < len(videos), "the kill should land mid-run"
    for p in out.glob("[!.]*.mp4"):  # whatever carries a final name is complete
        assert probe(p, count_frames=True).frames == 18
    mtimes = _stat(out)

    rc, err = _finish(_stage(work), work)
    assert rc == 0, err
    rows = {r["key"]: r for r in read_jsonl(ledger)}
    assert list(rows) == [v.video_id for v in videos]
    for key, row in finished.items():  # finished work was not redone
        assert rows[key] == row
        if row["status"] == "done":
            assert (out / f"{key}.mp4").stat().st_mtime_ns == mtimes[f"{key}.mp4"]
    assert _leftovers(out) == []
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref_out.iterdir())
    for p in ref_out.glob("[!.]*.mp4"):
        assert (out / p.name).read_bytes() == p.read_bytes()
    assert {k: r["status"] for k, r in rows.items()} == {
        r["key"]: r["status"] for r in read_jsonl(ref_out / "ledger.jsonl")
    }
    metrics = json.loads((work / "metrics" / "compress.json").read_text())
    assert metrics == json.loads((ref / "metrics" / "compress.json").read_text())
    assert metrics["done"] == 6 and metrics["failed"] == 1 and metrics["output_frames"] == 6 * 18


def test_tools_die_with_a_killed_worker(tmp_path):
    """A worker's ffmpeg gets SIGKILL when the worker dies (it would otherwise run on for 30 s)."""
    marker = str(tmp_path / "null-output")
    script = (
        "from vidmem.video import die_with_parent, _run_tool\n"
        "die_with_parent()\n"
        "_run_tool(['ffmpeg', '-v', 'error', '-re', '-f', 'lavfi', '-i', 'testsrc=duration=30',"
        f" '-f', 'null', {marker!r}], 'x', None)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)})

    def ffmpegs() -> list[int]:
        return [pid for pid, cmd in _our_processes(marker).items() if cmd.startswith("ffmpeg ")]

    try:
        deadline = time.monotonic() + 30
        while not ffmpegs():
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        deadline = time.monotonic() + 3
        while ffmpegs() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ffmpegs() == []
    finally:
        worker.kill()
        for pid in ffmpegs():  # only on failure: the ffmpeg this test started, left running
            os.kill(pid, signal.SIGKILL)


def test_stage_user_errors_are_one_line(tmp_path):
    _project(tmp_path, [Video("a", "a.mp4"), Video("a", "b.mp4")])
    rc, err = _finish(_stage(tmp_path), tmp_path, timeout=60)
    assert rc == 2
    assert err.strip().splitlines()[-1] == (
        "error: data/manifest/videos.jsonl: entry 2 (video_id 'a'): field 'video_id' is a duplicate"
    )
