"""extract@clip throughput against the encoder alone, and its memory on a 60-minute video against a 1-minute one.

    python -m bench.extract [--rounds 3] [--videos 4] [--seconds 180] [--long 3600] [--batch 32]

Inputs are SynthVid long videos (vidmem.synth, the 60-minute preset's generator) transcoded by the compress
stage's own ffmpeg command, made once into bench/out/extract/ (git-ignored).

1. Throughput: the stage's library entry point (`vidmem.extract.extract_store`: plan, decode with decord in
   bounded batches behind a prefetch thread, preprocess, encode, write the sharded zarr store) in frames/s,
   against the same model's forward-only frames/s (preprocess + encode_image) on frames already decoded into
   memory, same batch size, same threads. Rounds alternate the two; medians give the ratio (goal ≥ 0.85 on
   CPU: decoding and writing hide behind compute).
2. Memory: peak RSS of `python -m stages.extract clip` on a project holding one 60-minute video, against one
   holding a 1-minute video (goal ≤ 1.2×): decoding is bounded, so memory must not grow with length.

Results go to bench/out/extract/result.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from models.encoders.clip import ClipConfig, build_clip
from vidmem.decode import batched, open_video, read_frames
from vidmem.manifest import Manifest, Video
from vidmem.synth.config import SynthConfig
from vidmem.synth.dataset import generate
from vidmem.video import compress_video

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "extract"


def synth_videos(name: str, count: int, seconds: float) -> list[Path]:
    """`count` SynthVid long videos of `seconds` each, compressed to 3 fps / 224p (cached)."""
    folder = OUT / "videos" / name
    spec = {"count": count, "seconds": seconds}
    stamp = folder / "spec.json"
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return sorted(folder.glob("*.mp4"))
    shutil.rmtree(folder, ignore_errors=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["synth"]
    params = {**params, "short": {**params["short"], "count": {"train": 0, "val": 0, "test": 0}},
              "long": {**params["long"], "count": {"train": 0, "val": 0, "test": count},
                       "duration": [seconds, seconds]}}
    raw = OUT / "raw" / name
    print(f"rendering {count} SynthVid video(s) of {seconds:.0f} s ...", flush=True)
    generate(SynthConfig.from_params(params), raw)
    folder.mkdir(parents=True)
    for src in sorted((raw / "videos").glob("*.mp4")):
        compress_video(src, folder / src.name, fps=3, short_side=224, crf=23, preset="veryfast")
    shutil.rmtree(raw)
    stamp.write_text(json.dumps(spec))
    return sorted(folder.glob("*.mp4"))


def make_project(root: Path, videos: list[Path], batch: int) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    (root / "data" / "compressed").mkdir(parents=True)
    for v in videos:
        os.link(v, root / "data" / "compressed" / v.name)
    Manifest(videos=[Video(v.stem, str(v), None) for v in videos]).write(root / "data" / "manifest")
    params = {"compress": {"fps": 3}, "clip": {"model": "vidmem-tiny", "pretrained": "none", "seed": 0},
              "extract": {"batch_size": batch, "rows_per_chunk": 512, "chunks_per_shard": 8, "threads": 0,
                          "lavila": {"window": 4.0, "frames": 4, "checkpoint": "none", "dense_tokens": False},
                          "text": {"max_tokens": 32}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "data" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": build_clip(ClipConfig()).model.state_dict()}, root / "data" / "checkpoints" / "clip.pt")
    return root


def stage_fps(root: Path) -> tuple[float, int]:
    from vidmem.common import load_params
    from vidmem.extract import extract_store

    shutil.rmtree(root / "data" / "features", ignore_errors=True)
    t = time.perf_counter()
    summary = extract_store("clip", load_params(root / "params.yaml"), root)
    return summary["rows"] / (time.perf_counter() - t), summary["rows"]


def forward_fps(encoder, frames: list[np.ndarray], batch: int) -> float:
    n = sum(len(f) for f in frames)
    t = time.perf_counter()
    with torch.inference_mode():
        for video in frames:
            for a, b in batched(len(video), batch):
                encoder.encode_image(encoder.preprocess(torch.from_numpy(video[a:b])))
    return n / (time.perf_counter() - t)


def peak_rss_mb(root: Path) -> float:
    """Peak resident memory of one `python -m stages.extract clip` process (its own rusage, via wait4)."""
    shutil.rmtree(root / "data" / "features", ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VIDMEM_LOG": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.extract", "clip"], cwd=root, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"stages.extract failed in {root} (exit {proc.returncode})")
    return usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.extract", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--videos", type=int, default=4, help="videos in the throughput set")
    ap.add_argument("--seconds", type=float, default=180, help="length of each throughput video")
    ap.add_argument("--long", type=float, default=3600, help="length of the long video (memory)")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    tput = make_project(OUT / "proj_throughput", synth_videos("throughput", args.videos, args.seconds), args.batch)
    params = yaml.safe_load((tput / "params.yaml").read_text())
    encoder = build_clip(ClipConfig.from_params({**params["clip"], "pretrained": str(tput / "data/checkpoints/clip.pt")}))
    decoded = []
    for v in sorted((tput / "data" / "compressed").glob("*.mp4")):
        vr = open_video(v)
        decoded.append(read_frames(vr, range(len(vr))))
    print(f"throughput set: {len(decoded)} videos, {sum(len(d) for d in decoded)} frames, batch {args.batch}, "
          f"{torch.get_num_threads()} torch threads", flush=True)
    stage, fwd = [], []
    for r in range(args.rounds):
        fwd.append(forward_fps(encoder, decoded, args.batch))
        s, rows = stage_fps(tput)
        stage.append(s)
        print(f"round {r + 1}: stage {stage[-1]:.1f} frames/s, forward-only {fwd[-1]:.1f} frames/s", flush=True)
    del decoded
    ratio = statistics.median(stage) / statistics.median(fwd)

    short = make_project(OUT / "proj_1min", synth_videos("minute", 1, 60), args.batch)
    long = make_project(OUT / "proj_60min", synth_videos("hour", 1, args.long), args.batch)
    rss_short, rss_long = peak_rss_mb(short), peak_rss_mb(long)
    result = {
        "throughput": {"stage_fps": statistics.median(stage), "forward_fps": statistics.median(fwd),
                       "ratio": ratio, "goal": 0.85, "rounds": args.rounds, "frames": rows,
                       "batch": args.batch, "threads": torch.get_num_threads()},
        "memory": {"peak_rss_mb_1min": rss_short, "peak_rss_mb_long": rss_long, "long_seconds": args.long,
                   "ratio": rss_long / rss_short, "goal": 1.2},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "result.json").write_text(json.dumps(result, indent=2))
    print(f"\nextract@clip throughput: stage {result['throughput']['stage_fps']:.1f} frames/s / forward-only "
          f"{result['throughput']['forward_fps']:.1f} frames/s = {ratio:.3f} (goal >= 0.85)")
    print(f"extract@clip peak RSS: {args.long / 60:.0f}-min video {rss_long:.0f} MB / 1-min video {rss_short:.0f} MB "
          f"= {rss_long / rss_short:.3f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
