"""H.264 encoding of raw frames streamed into ffmpeg, made repeatable to the byte.

Frames go to ffmpeg one at a time on stdin (rawvideo rgb24), so memory does not grow with the video length.
libx264 with one thread and ffmpeg's bitexact flags (no encoder version or creation time in the container)
gives the same mp4 bytes for the same frames on the same ffmpeg/x264 build. Across CPUs too: x264 picks
other algorithms for other vector units (an AVX-512 machine wrote other SynthVid bytes than an AVX2 one with
the same ffmpeg 5.1.9 / x264 core 164), which `cpu-independent=1` forbids, and the RGB → YUV conversion
runs swscale's bit-exact path (`vidmem.video.X264_CPU_INDEPENDENT`, `SWS_FLAGS`; tests/test_toolchain.py encodes with the
SIMD sets cut down and compares bytes).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from vidmem.common import UserError
from vidmem.video import SWS_FLAGS, X264_CPU_INDEPENDENT


def ffmpeg_binary() -> str:
    path = shutil.which("ffmpeg")
    if not path:
        raise UserError("ffmpeg not found on PATH; run `make install` (it installs Debian's ffmpeg)")
    return path


def h264_command(
    path: str | os.PathLike, width: int, height: int, fps: int, crf: int, preset: str
) -> list[str]:
    return [
        ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(fps),
        "-i", "pipe:0",
        "-an", "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
        "-sws_flags", SWS_FLAGS, "-x264-params", X264_CPU_INDEPENDENT,
        "-g", str(4 * fps), "-threads", "1",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
        "-f", "mp4", str(path),
    ]


class H264Writer:
    """`with H264Writer(path, w, h, fps) as out: out.write(frame)` for uint8 (h, w, 3) RGB frames."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: int, crf: int = 23,
                 preset: str = "veryfast"):
        self.path, self.shape = Path(path), (height, width, 3)
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            h264_command(path, width, height, fps, crf, preset), stdin=subprocess.PIPE, stderr=self._log
        )
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != self.shape or frame.dtype != np.uint8:
            raise ValueError(f"frame {frame.shape} {frame.dtype}, expected {self.shape} uint8")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError:
            self._finish()  # raises with ffmpeg's own message
            raise
        self.frames += 1

    def _finish(self) -> None:
        if self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        rc = self._proc.wait()
        self._log.seek(0)
        err = self._log.read().decode(errors="replace").strip()
        self._log.close()
        if rc != 0:
            raise RuntimeError(f"ffmpeg failed encoding {self.path} (exit {rc}): {err[-500:]}")

    def __enter__(self) -> H264Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._finish()
        else:
            self._proc.kill()
            self._proc.wait()
            self._log.close()
