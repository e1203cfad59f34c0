"""Videos the project did not make, for the `vidmem` command's end-to-end checks: ffmpeg's own test sources
(testsrc, smptebars, mandelbrot) in three containers and codecs, one broken file, a spoken query."""

from __future__ import annotations

import subprocess
from pathlib import Path

# name → (lavfi source, seconds, codec arguments): H.264 in MP4, H.264 in Matroska, VP8 in WebM
SOURCES = {
    "testsrc.mp4": (
        "testsrc=size=192x144:rate=15",
        12,
        ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"],
    ),
    "bars.mkv": (
        "smptebars=size=160x120:rate=12",
        8,
        ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"],
    ),
    "fractal.webm": (
        "mandelbrot=size=160x120:rate=10",
        6,
        ["-c:v", "libvpx", "-deadline", "realtime", "-b:v", "300k"],
    ),
}


def lavfi(path: Path, source: str, seconds: float, codec: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
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
            source,
            "-t",
            str(seconds),
            *codec,
            str(path),
        ],
        check=True,
    )
    return path


def own_folder(folder: Path) -> Path:
    """The three good videos and `broken.mp4` (random bytes under a video's name)."""
    for name, (source, seconds, codec) in SOURCES.items():
        lavfi(folder / name, source, seconds, codec)
    (folder / "broken.mp4").write_bytes(bytes(range(256)) * 64)
    return folder


def spoken(path: Path, text: str) -> Path:
    """espeak-ng's own WAV (22.05 kHz): the command resamples it to the model's rate."""
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
    return path
