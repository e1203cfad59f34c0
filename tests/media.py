"""A factory of small test media, made with real ffmpeg (lavfi sources) in a few hundred milliseconds each.

Good videos of any shape (landscape, portrait, odd sizes, phone-style rotation tags, non-square pixels, with
or without audio), variable-frame-rate videos, and the broken inputs a real collection contains (zero bytes,
truncated, garbage, garbled in the middle, audio only). Plus small ffprobe readers to check results.
"""
from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ffmpeg


def _run(stream: Any) -> None:
    stream = stream.global_args("-nostdin", "-hide_banner", "-v", "error")
    ffmpeg.run(stream, overwrite_output=True, quiet=True)


def _testsrc(width: int, height: int, fps: float, duration: float, source: str) -> Any:
    return ffmpeg.input(f"{source}=size={width}x{height}:rate={fps}:duration={duration}", f="lavfi")


def lavfi_video(
    path: str | Path,
    width: int = 320,
    height: int = 240,
    fps: float = 30,
    duration: float = 4.0,
    *,
    source: str = "testsrc2",
    audio: bool = False,
    rotate: int | None = None,
    sar: str | None = None,
    faststart: bool = False,
    preset: str = "ultrafast",
) -> Path:
    """An H.264 (+ AAC) file of exactly `width`×`height` stored pixels, `fps` constant, `duration` seconds.

    `rotate` adds a phone-style display-rotation tag (pixels stay as stored); `sar` ('4/3') marks non-square
    pixels; odd sizes use yuv444p, which H.264 allows, so the stored size is really odd.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # testsrc2 rounds its size up to even numbers: render one pixel larger and crop odd sizes back.
    video = _testsrc(width + width % 2, height + height % 2, fps, duration, source)
    if width % 2 or height % 2:
        video = video.filter("format", "yuv444p").filter("crop", width, height, 0, 0)
    if sar:
        video = video.filter("setsar", sar)
    streams = [video]
    if audio:
        streams.append(ffmpeg.input(f"sine=frequency=440:sample_rate=16000:duration={duration}", f="lavfi"))
    pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    kwargs: dict[str, Any] = {"vcodec": "libx264", "preset": preset, "pix_fmt": pix_fmt}
    if audio:
        kwargs["acodec"] = "aac"
    if faststart:
        kwargs["movflags"] = "+faststart"
    target = path if rotate is None else path.with_name(f".{path.name}.norot.mp4")
    _run(ffmpeg.output(*streams, str(target), **kwargs))
    if rotate is not None:
        # Stream copy with a rotation tag; ffmpeg ≥ 6 drops `rotate` metadata and has -display_rotation.
        _run(ffmpeg.input(str(target)).output(str(path), c="copy", **{"metadata:s:v:0": f"rotate={rotate}"}))
        if probe_json(path)["streams"][0].get("side_data_list") is None:
            _run(ffmpeg.input(str(target), display_rotation=-rotate).output(str(path), c="copy"))
        target.unlink()
    return path


def vfr_video(
    path: str | Path,
    segments: Sequence[tuple[float, float]] = ((10, 1.0), (30, 1.0), (15, 1.5)),
    width: int = 320,
    height: int = 240,
) -> Path:
    """A variable-frame-rate file: segments of (fps, seconds) concatenated, timestamps kept as they are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [_testsrc(width, height, fps, secs, "testsrc2") for fps, secs in segments]
    joined = ffmpeg.concat(*parts, v=1, a=0)
    _run(joined.output(str(path), vcodec="libx264", preset="ultrafast", pix_fmt="yuv420p", fps_mode="vfr"))
    return path


def audio_only(path: str | Path, duration: float = 2.0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(ffmpeg.input(f"sine=frequency=440:duration={duration}", f="lavfi").output(str(path), acodec="aac"))
    return path


def zero_byte(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def truncated(src: str | Path, path: str | Path, fraction: float = 0.5) -> Path:
    """The first `fraction` of `src`: without faststart the index (moov) is lost, so nothing is readable."""
    data = Path(src).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * fraction)])
    return Path(path)


def garbage(path: str | Path, nbytes: int = 20_000, seed: int = 0) -> Path:
    """Random bytes under a video's name."""
    Path(path).write_bytes(random.Random(seed).randbytes(nbytes))
    return Path(path)


def garbled(src: str | Path, path: str | Path, at: float = 1 / 3, nbytes: int = 3000, seed: int = 0) -> Path:
    """`src` with `nbytes` random bytes written over the middle: readable, with decode errors."""
    data = bytearray(Path(src).read_bytes())
    start = int(len(data) * at)
    data[start : start + nbytes] = random.Random(seed).randbytes(min(nbytes, len(data) - start))
    Path(path).write_bytes(bytes(data))
    return Path(path)


# ---------------------------------------------------------------------------------------------------- readers
def probe_json(path: str | Path, *extra: str) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", *extra, str(path)],
        capture_output=True,
        check=True,
    ).stdout
    return json.loads(out)


def codec_types(path: str | Path) -> list[str]:
    return [s["codec_type"] for s in probe_json(path)["streams"]]


def frame_times(path: str | Path) -> list[float]:
    """Presentation times (s) of the first video stream's packets, in order."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time",
         "-of", "csv=p=0", str(path)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return sorted(float(x) for x in out.split() if x and x != "N/A")


def is_vfr(path: str | Path, tolerance: float = 1e-3) -> bool:
    """True when the gaps between consecutive frames are not all the same."""
    t = frame_times(path)
    gaps = [b - a for a, b in zip(t, t[1:])]
    return bool(gaps) and max(gaps) - min(gaps) > tolerance
