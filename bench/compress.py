"""Throughput of the compress stage against a plain parallel ffmpeg command line doing the same transcode.

    python -m bench.compress [--clips 16] [--seconds 30] [--rounds 3] [--jobs <cores>]

Inputs: `--clips` generated 640×360 30 fps H.264 clips (lavfi testsrc2 + noise, so decoding costs what a real
camera video costs), made once into bench/out/compress/inputs/. The baseline is `xargs -P <cores>` running the
very ffmpeg command line the stage builds, one `-threads 1` ffmpeg per file, with nothing around it. The stage
is `python -m stages.compress` as DVC runs it (params, manifest, probes, ledger, verification), from scratch.
Rounds alternate the two so that machine load hits both alike; the medians give the ratio
stage throughput / baseline throughput (goal ≥ 0.95), and the CPU-time ratio shows the stage's own overhead
even on a busy machine. Both must write identical bytes. The result also goes to
bench/out/compress/result.json.

The stage pays a fixed ~0.3-0.4 s per run (interpreter and imports, `ffmpeg -version` for the ledger, the
process pool) that the bare command line does not; the default workload (16 × 30 s, ~20 s of baseline work on
2 cores) measures throughput, where that start-up is 2%. On 8 × 20 s it shows: ratio 0.94 there.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import ffmpeg
import yaml

from vidmem.manifest import Manifest, Video
from vidmem.params import read
from vidmem.video import CompressConfig, compress_command, ffmpeg_version, probe

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "compress"


def make_inputs(n: int, seconds: float, width: int = 640, height: int = 360, fps: int = 30) -> list[Path]:
    """Generate the clips once; a spec file records what they are, so a changed spec regenerates them."""
    folder = OUT / "inputs"
    spec = {"n": n, "seconds": seconds, "size": [width, height], "fps": fps, "source": "testsrc2+noise"}
    stamp = folder / "spec.json"
    paths = [folder / f"clip{i:02d}.mp4" for i in range(n)]
    if stamp.exists() and json.loads(stamp.read_text()) == spec and all(p.exists() for p in paths):
        return paths
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, p in enumerate(paths):
        print(f"generating {p.name} ({i + 1}/{n})", file=sys.stderr)
        src = ffmpeg.input(f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}", f="lavfi")
        src = src.filter("hue", H=f"{i}*0.5").filter("noise", alls=12, allf="t", all_seed=i)
        out = src.output(str(p), vcodec="libx264", preset="veryfast", crf=23, pix_fmt="yuv420p")
        ffmpeg.run(out.global_args("-nostdin", "-v", "error"), overwrite_output=True, quiet=True)
    stamp.write_text(json.dumps(spec))
    return paths


def baseline_command(inputs: list[Path], out_dir: Path, settings: dict, jobs: int) -> str:
    """`xargs -P jobs` over the files, each running the stage's own ffmpeg argument list."""
    argv = compress_command("@SRC@", "@DST@", **settings)
    words = []
    for a in argv:
        if a == "file:@SRC@":
            words.append('"file:$1"')
        elif a == "file:@DST@":
            words.append(f'"file:{out_dir}/$(basename "$1")"')
        else:
            words.append(shlex.quote(a))
    script = " ".join(words)
    files = " ".join(shlex.quote(str(p)) for p in inputs)
    return f"printf '%s\\n' {files} | xargs -P {jobs} -I{{}} sh -c {shlex.quote(script)} _ {{}}"


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(argv: list[str] | str, **kwargs) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all descendants: ffmpeg, workers) of one command."""
    c0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(argv, check=True, **kwargs)
    return time.perf_counter() - t0, _children_cpu() - c0


def run_baseline(cmd: str, out_dir: Path) -> tuple[float, float]:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    return timed(cmd, shell=True)


def run_stage(project: Path) -> tuple[float, float]:
    shutil.rmtree(project / "data" / "compressed", ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VIDMEM_LOG": "WARNING"}
    return timed([sys.executable, "-m", "stages.compress"], cwd=project, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                    help="parallel ffmpeg processes (default: usable cores)")
    args = ap.parse_args()

    group = yaml.safe_load((ROOT / "params.yaml").read_text())["compress"]
    settings = {k: v for k, v in read(CompressConfig, group, "compress").encode().items() if k != "command"}
    inputs = make_inputs(args.clips, args.seconds)
    input_seconds = sum(probe(p).duration or 0.0 for p in inputs)

    project = OUT / "stage"
    project.mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump({"compress": {**group, "workers": args.jobs}}))
    Manifest(videos=[Video(p.stem, str(p)) for p in inputs]).write(project / "data" / "manifest")
    base_dir = OUT / "baseline"
    cmd = baseline_command(inputs, base_dir, settings, args.jobs)

    times: dict[str, list[float]] = {"baseline": [], "stage": []}
    cpu: dict[str, list[float]] = {"baseline": [], "stage": []}
    for r in range(args.rounds):
        order = ["baseline", "stage"] if r % 2 == 0 else ["stage", "baseline"]
        for name in order:
            t, c = run_baseline(cmd, base_dir) if name == "baseline" else run_stage(project)
            times[name].append(t)
            cpu[name].append(c)
            print(f"round {r + 1}: {name:8s} {t:7.2f} s wall {c:7.2f} s cpu", file=sys.stderr)

    stage_out = project / "data" / "compressed"
    same = all((stage_out / p.name).read_bytes() == (base_dir / p.name).read_bytes() for p in inputs)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ratio = med["baseline"] / med["stage"]
    cpu_ratio = med_cpu["baseline"] / med_cpu["stage"]
    result = {
        "clips": args.clips, "clip_seconds": args.seconds, "input_seconds": round(input_seconds, 2),
        "jobs": args.jobs, "ffmpeg": ffmpeg_version(), "settings": settings,
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "median_cpu_seconds": {k: round(v, 3) for k, v in med_cpu.items()},
        "ratio_stage_over_baseline": round(ratio, 3), "cpu_ratio_baseline_over_stage": round(cpu_ratio, 3),
        "identical_outputs": same, "baseline_command": cmd,
    }
    (OUT / "result.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"compress: {args.clips} clips × {args.seconds:g} s 640×360 30 fps → {settings}, "
          f"{args.jobs} parallel ffmpeg, ffmpeg {ffmpeg_version()}, median of {args.rounds} rounds")
    print(f"{'method':10s} {'wall s':>8s} {'cpu s':>8s} {'videos/s':>9s} {'× realtime':>11s}")
    for name in ("baseline", "stage"):
        print(f"{name:10s} {med[name]:8.2f} {med_cpu[name]:8.2f} {args.clips / med[name]:9.2f} "
              f"{input_seconds / med[name]:11.1f}")
    print(f"ratio stage/baseline throughput: {ratio:.3f} (goal ≥ 0.95); "
          f"cpu-time ratio baseline/stage: {cpu_ratio:.3f}; identical outputs: {same}")
    print(f"baseline: {cmd}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
