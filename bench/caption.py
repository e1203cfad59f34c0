"""`vidmem caption` end to end on a 60-minute video and on a 6-minute one: real-time factor and peak memory.

    python -m bench.caption [--project DIR] [--long 3600] [--short 360] [--size 320x240] [--fps 25]

Each video is one ffmpeg lavfi `testsrc2` clip (H.264, `--size` at `--fps`), made once into bench/out/caption/
(git-ignored). Each run is `vidmem caption VIDEO` in a fresh interpreter with the project's trained
checkpoints (default: this checkout; `--project` names another) and an empty output folder, so it does all of
it: compress, extract (CLIP per frame, the TimeSformer per 4-s window), CM2's dense captions and the ReCap
hierarchy (both videos are longer than the default `--hierarchy-from` of 180 s).

Printed per video: wall time of the whole command (interpreter start-up and model loading included: what a
user waits for), the real-time factor (video seconds / wall seconds; goal >= 15), each step's seconds and own
peak memory (from the run's videos.json) and the command process's peak resident memory (VmHWM; the ffmpeg
transcode runs in separate worker processes and is not in it). Then the memory ratio 60-minute / 6-minute
(goal <= 1.2: nothing may grow with the video's length). Results go to bench/out/caption/result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "caption"

# The command in-process, reporting its own peak memory as it ends.
_CHILD = """
import sys
from cli.main import main
try:
    rc = main(sys.argv[1:])
finally:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print("VMHWM_KB", hwm, file=sys.stderr)
sys.exit(rc)
"""


def make_video(seconds: float, size: str, fps: float) -> Path:
    """A `seconds`-long testsrc2 clip (cached by its spec)."""
    path = OUT / "videos" / f"testsrc2_{int(seconds)}s_{size}_{fps:g}fps.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.mp4")
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=size={size}:rate={fps:g}:duration={seconds:g}",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                str(tmp),
            ],
            check=True,
        )
        os.replace(tmp, path)
    return path


def caption_run(video: Path, project: Path, extra: list[str]) -> dict:
    out = OUT / "runs" / video.stem
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VIDMEM_LOG": "WARNING"}
    cmd = [
        sys.executable,
        "-c",
        _CHILD,
        "caption",
        str(video),
        "--out",
        str(out),
        "--project",
        str(project),
        *extra,
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    hwm = [x for x in proc.stderr.splitlines() if x.startswith("VMHWM_KB")]
    if proc.returncode != 0 or not hwm:
        raise SystemExit(f"vidmem caption {video} failed:\n{proc.stderr[-3000:]}")
    run = json.loads((out / "videos.json").read_text())
    (entry,) = run["videos"].values()
    return {
        "video": video.name,
        "video_seconds": entry["duration"],
        "wall_s": round(wall, 2),
        "realtime_factor": round(entry["duration"] / wall, 2),
        "steps_s": run["seconds"],
        "steps_peak_rss_mb": {k: v for k, v in run["peak_rss_mb"].items() if k != "run"},
        # the steps reset VmHWM (each reports its own peak): the run's is the larger of theirs and the last
        "peak_rss_mb": round(max(int(hwm[-1].split()[1]) / 1024, run["peak_rss_mb"]["run"] or 0), 1),
        "events": entry["events"],
        "hierarchy": entry["hierarchy"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.caption", description=__doc__.split("\n")[0])
    ap.add_argument("--project", default=str(ROOT), help="the trained project whose checkpoints are used")
    ap.add_argument("--long", type=float, default=3600, help="seconds of the long video")
    ap.add_argument("--short", type=float, default=360, help="seconds of the short video")
    ap.add_argument("--size", default="320x240", help="frame size of the generated videos")
    ap.add_argument("--fps", type=float, default=25, help="frame rate of the generated videos")
    args, extra = ap.parse_known_args()  # anything else goes to `vidmem caption`
    rows = []
    for seconds in (args.short, args.long):
        video = make_video(seconds, args.size, args.fps)
        row = caption_run(video, Path(args.project), extra)
        rows.append(row)
        print(
            f"{row['video']}: {row['video_seconds']:.0f} s of video in {row['wall_s']:.1f} s wall = "
            f"{row['realtime_factor']:.1f}x real time (goal >= 15); peak RSS {row['peak_rss_mb']:.0f} MB; "
            f"steps (s) {row['steps_s']}; each step's peak RSS (MB) {row['steps_peak_rss_mb']}",
            flush=True,
        )
    ratio = rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(f"peak memory {args.long:g}-s / {args.short:g}-s video: {ratio:.3f}x (goal <= 1.2)")
    result = {
        "runs": rows,
        "memory_ratio": round(ratio, 3),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "result.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
