"""ffprobe / ffmpeg helpers and the transcode of one video to the pipeline's working format.

Every later stage decodes the same small, regular files: `fps` frames per second, the short side scaled to
`short_side` (portrait and landscape alike, after applying the phone's rotation tag), even dimensions, square
pixels, H.264 yuv420p, no audio. One ffmpeg process per video, single-threaded (`-threads 1` for decoder,
filters and encoder), so a process pool over the cores scales without oversubscription.

`probe` and `compress_video` raise `VideoError` (a `UserError`: one line naming the file and ffmpeg's or
ffprobe's complaint), which callers that process many videos record per video instead of stopping.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import ffmpeg

from vidmem.common import UserError, atomic_path
from vidmem.decode import decord_message
from vidmem.params import bounded

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"
# Bump when `compress_command` changes its output in a way its arguments do not show: callers key finished
# outputs to (arguments, COMMAND_VERSION) and redo the rest.
COMMAND_VERSION = 2  # 2: x264 cpu-independent (the same bytes on any CPU)

# The same bytes whatever vector units the CPU has: x264 otherwise picks other algorithms for AVX-512 than for
# AVX2 (measured: other SynthVid and compressed bytes with the same ffmpeg 5.1.9 / x264 core 164), and
# swscale's SIMD paths round differently from its bit-exact C path. tests/test_toolchain.py encodes with the
# SIMD sets cut down (both this module's and SynthVid's command) and compares bytes.
X264_CPU_INDEPENDENT = "cpu-independent=1"
SWS_FLAGS = "bicubic+accurate_rnd+bitexact"


@dataclass(frozen=True)
class CompressConfig:
    """The `compress` params group: how every video becomes its working copy."""

    fps: float = bounded(3, lo=0.01)
    short_side: int = bounded(224, lo=2)  # even
    crf: float = bounded(23, lo=0, hi=51)
    preset: str = "veryfast"  # an x264 preset name
    upscale: bool = False  # false: a source whose short side is below short_side keeps its own (even) size
    workers: int = bounded(0, lo=0)  # ffmpeg processes at once; 0: one per usable core
    timeout_s: float = bounded(1800, lo=0.001)  # per video; a hung decode is recorded as failed
    retry_failed: bool = False  # false: a failure on an unchanged input is kept, not retried

    def check(self, where: str) -> None:
        if self.short_side % 2:
            raise UserError(f"params.yaml {where}.short_side: must be even, got {self.short_side}")
        if not self.preset:
            raise UserError(f"params.yaml {where}.preset: must name an x264 preset")

    def encode(self) -> dict[str, Any]:
        """The settings that shape the output bytes (hashed into every ledger row)."""
        crf = int(self.crf) if float(self.crf).is_integer() else self.crf
        fps = int(self.fps) if float(self.fps).is_integer() else self.fps
        return {"fps": fps, "short_side": self.short_side, "crf": crf, "preset": self.preset,
                "upscale": self.upscale, "command": COMMAND_VERSION}

    def n_workers(self) -> int:
        return self.workers or len(os.sched_getaffinity(0))

# Formats ffprobe reports for single pictures: a still image is not a video, even when named .mp4.
_IMAGE_FORMATS = re.compile(r"^(image2|.*_pipe)$")
# "[h264 @ 0x55d5...]" → "[h264]": the address differs per run and would make ledger rows differ.
_ADDRESS = re.compile(r" @ 0x[0-9a-f]+")


class VideoError(UserError):
    """A video that cannot be probed or transcoded; `reason` is the tool's own complaint."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    """What ffprobe says about a file's first video stream, in display orientation."""

    path: str
    width: int  # displayed width: after the rotation tag is applied
    height: int
    duration: float | None  # seconds (container duration, else the stream's)
    fps: float  # average frame rate; 0.0 when the file does not say
    frames: int | None  # counted packets (probe(..., count_frames=True)), else the header's count, if any
    rotation: int = 0  # degrees, 0/90/180/270, from the display matrix or the legacy `rotate` tag
    sar: float = 1.0  # sample (pixel) aspect ratio
    codec: str = ""
    has_audio: bool = False

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Compressed:
    """The result of one transcode: the verified output and the decode errors ffmpeg recovered from."""

    output: VideoInfo
    warnings: str = ""  # e.g. a partly corrupt source; "" when clean
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------------ tools
_tie_children = False  # set in pool workers: the tools they start die with them


def _set_pdeathsig() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def die_with_parent() -> None:
    """Pool-worker initializer: this process, and every ffmpeg/ffprobe it starts, gets SIGKILL when its parent
    dies, so a killed stage leaves nothing running that could still rename an output into place.

    Only for single-threaded worker processes: the hook runs between fork and exec, which is unsafe in a
    process with other threads, so ordinary callers of `probe` do without it.
    """
    global _tie_children
    _set_pdeathsig()
    _tie_children = True


def _run_tool(args: list[str], path: str | os.PathLike, timeout: float | None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
            preexec_fn=_set_pdeathsig if _tie_children else None,
        )
    except subprocess.TimeoutExpired:
        raise VideoError(path, f"{Path(args[0]).name} timed out after {timeout:g} s") from None
    except FileNotFoundError:
        raise UserError(f"{args[0]} not found; run `make install` (it installs ffmpeg)") from None


def stderr_tail(stderr: bytes | str, lines: int = 8, chars: int = 800) -> str:
    """The last distinct lines of a tool's stderr, without per-run pointer addresses: a stable reason."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    kept: list[str] = []
    for line in text.splitlines():
        line = _ADDRESS.sub("", line.strip())
        if line and (not kept or kept[-1] != line):
            kept.append(line)
    return " | ".join(kept[-lines:])[-chars:]


def _file_arg(path: str | os.PathLike) -> str:
    """`file:` keeps ffmpeg from reading a name as an option ('-x.mp4') or a protocol ('a:b.mp4')."""
    return f"file:{os.fspath(path)}"


@functools.cache
def ffmpeg_version() -> str:
    """E.g. '5.1.9-0+deb12u1': recorded beside each output so a changed encoder is visible."""
    proc = _run_tool([FFMPEG, "-hide_banner", "-version"], FFMPEG, timeout=30)
    out = proc.stdout.decode("utf-8", "replace")
    m = re.match(r"ffmpeg version (\S+)", out)
    return m.group(1) if m else "unknown"


# ------------------------------------------------------------------------------------------------------ probe
def _ratio(text: str | None) -> float:
    """'30000/1001' or '4:3' → float; 0.0 for missing or undefined ('0/0', 'N/A')."""
    try:
        r = Fraction((text or "0/1").replace(":", "/"))
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(r)


def _float(text: Any) -> float | None:
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x >= 0 else None


def _rotation(stream: dict[str, Any]) -> int:
    """Rotation (0/90/180/270 degrees) from the display matrix (ffprobe ≥ 5) or the legacy `rotate` tag."""
    deg = 0.0
    for side in stream.get("side_data_list") or []:
        if side.get("rotation") is not None:
            deg = float(side["rotation"])
            break
    else:
        try:
            deg = float((stream.get("tags") or {}).get("rotate", 0))
        except ValueError:
            deg = 0.0
    return int(round(deg / 90.0)) * 90 % 360


def probe(path: str | os.PathLike, count_frames: bool = False, timeout: float | None = 120) -> VideoInfo:
    """Probe a video file; raises VideoError for a missing, empty, unreadable, still-image or audio-only file.

    `count_frames` reads the whole file and counts video packets (one per frame in the files ffmpeg writes);
    without it `frames` is the container's own claim, when it makes one.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    args = [FFPROBE, "-v", "error", "-show_format", "-show_streams", "-of", "json"]
    if count_frames:
        args += ["-count_packets"]
    proc = _run_tool(args + [_file_arg(path)], path, timeout)
    if proc.returncode != 0:
        raise VideoError(path, stderr_tail(proc.stderr) or f"ffprobe failed (exit status {proc.returncode})")
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise VideoError(path, "ffprobe returned unreadable output") from None
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    videos = [
        s for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    if not videos:
        kinds = sorted({s.get("codec_type", "unknown") for s in streams}) or ["none"]
        raise VideoError(path, f"no video stream (streams: {', '.join(kinds)})")
    if _IMAGE_FORMATS.match(fmt.get("format_name", "")):
        raise VideoError(path, f"a still image ({fmt['format_name']}), not a video")
    v = videos[0]
    width, height = int(v.get("width") or 0), int(v.get("height") or 0)
    if width <= 0 or height <= 0:
        raise VideoError(path, "video stream has no frame size")
    rotation = _rotation(v)
    if rotation in (90, 270):
        width, height = height, width
    sar = _ratio(v.get("sample_aspect_ratio")) or 1.0
    if rotation in (90, 270):
        sar = 1.0 / sar
    frames_key = "nb_read_packets" if count_frames else "nb_frames"
    frames = int(v[frames_key]) if str(v.get(frames_key, "")).isdigit() else None
    return VideoInfo(
        path=str(path),
        width=width,
        height=height,
        duration=_float(fmt.get("duration")) or _float(v.get("duration")),
        fps=round(_ratio(v.get("avg_frame_rate")), 6),
        frames=frames,
        rotation=rotation,
        sar=round(sar, 6),
        codec=str(v.get("codec_name", "")),
        has_audio=any(s.get("codec_type") == "audio" for s in streams),
    )


def read_back(path: str | os.PathLike) -> VideoInfo:
    """Read a file we just encoded with decord, the decoder `extract` uses: frame count, size, rate, length.

    In-process and ~3 ms, where an ffprobe costs ~65 ms of CPU just to start; and it proves the consumer can
    decode the file. Raises VideoError when decord cannot open it or finds no frame.
    """
    import decord

    path = Path(path)
    try:
        vr = decord.VideoReader(str(path), num_threads=1)
        n = len(vr)
        if n == 0:
            raise VideoError(path, "no frames")
        height, width = vr[0].shape[:2]
        end = float(vr.get_frame_timestamp([n - 1])[0, 1])
        fps = float(vr.get_avg_fps())
    except VideoError:
        raise
    except Exception as e:  # decord's own error types
        raise VideoError(path, f"decord cannot read it: {decord_message(e)}") from None
    return VideoInfo(path=str(path), width=int(width), height=int(height), duration=round(end, 6),
                     fps=round(fps, 6), frames=n, codec="h264")


# --------------------------------------------------------------------------------------------------- compress
def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def scaled_size(width: int, height: int, short_side: int, sar: float = 1.0, upscale: bool = True) -> tuple[int, int]:
    """Output size for a displayed `width`×`height` source: the same arithmetic as the scale filter below."""
    dar = width * sar / height
    s = short_side if upscale else min(short_side, 2 * math.floor((height * dar if dar < 1 else height) / 2))
    if dar < 1:
        return 2 * _round_half_up(s / 2), 2 * _round_half_up(s / dar / 2)
    return 2 * _round_half_up(s * dar / 2), 2 * _round_half_up(s / 2)


def compress_command(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    fps: float = 3,
    short_side: int = 224,
    crf: int = 23,
    preset: str = "veryfast",
    upscale: bool = True,
) -> list[str]:
    """The ffmpeg command line (built with ffmpeg-python) that transcodes `src` into `dst`.

    fps first, so only the kept frames are scaled. The scale works on the display aspect ratio (`dar`:
    pixel aspect applied, after ffmpeg's autorotation), puts `short_side` on the shorter side and rounds the
    other to an even size; `setsar=1` then marks the pixels square. Bit-exact flags and dropped metadata make
    a rerun byte-identical. Without `upscale`, a source whose displayed short side is below `short_side` keeps
    its own short side (rounded to even): the encoders resize frames to their input size anyway, so upscaling
    here only adds bytes.
    """
    if upscale:
        w, h = f"if(lt(dar,1),{short_side},2*round({short_side}*dar/2))", f"if(lt(dar,1),2*round({short_side}/dar/2),{short_side})"
    else:
        s = f"min({short_side},2*trunc(if(lt(dar,1),ih*dar,ih)/2))"  # never above the source's own (even) size
        w, h = f"if(lt(dar,1),2*round({s}/2),2*round({s}*dar/2))", f"if(lt(dar,1),2*round({s}/dar/2),2*round({s}/2))"
    scaled = (
        ffmpeg.input(_file_arg(src), threads=1)["v:0"]
        .filter("fps", fps=fps)
        .filter(
            "scale",
            w=w,
            h=h,
            flags=SWS_FLAGS,
        )
        .filter("setsar", 1)
    )
    out = scaled.output(
        _file_arg(dst),
        vcodec="libx264",
        preset=preset,
        crf=crf,
        pix_fmt="yuv420p",
        threads=1,
        an=None,
        **{"x264-params": X264_CPU_INDEPENDENT},  # the same bytes on any CPU's vector units
        movflags="+faststart",
        fflags="+bitexact",
        map_metadata=-1,
        map_chapters=-1,
        **{"flags:v": "+bitexact", "f": "mp4"},
    ).global_args("-nostdin", "-hide_banner", "-v", "error", "-filter_complex_threads", "1")
    return ffmpeg.compile(out, cmd=FFMPEG, overwrite_output=True)


def compress_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    fps: float = 3,
    short_side: int = 224,
    crf: int = 23,
    preset: str = "veryfast",
    upscale: bool = True,
    timeout: float | None = None,
) -> Compressed:
    """Transcode `src` to `dst` (see `compress_command`); `dst` appears only complete and verified.

    The encode goes to a temporary '.mp4' sibling that is renamed onto `dst` only after decord has read it
    back and found at least one frame (`read_back`); on any failure the temporary file is removed and
    VideoError raised, so no empty or partial `dst` is ever left behind.

    The source is probed only when something looks wrong (ffmpeg failed, or made fewer than two frames): a
    good video then costs one ffmpeg and an in-process read-back, while a bad one gets the probe's clearer complaint
    ("no video stream", "a still image") in place of ffmpeg's.
    """
    t0 = time.perf_counter()
    src = Path(src)
    if not src.is_file():
        raise VideoError(src, "file not found")
    if src.stat().st_size == 0:
        raise VideoError(src, "empty file (0 bytes)")
    with atomic_path(dst, suffix=".mp4") as tmp:
        cmd = compress_command(src, tmp, fps=fps, short_side=short_side, crf=crf, preset=preset, upscale=upscale)
        proc = _run_tool(cmd, src, timeout)
        tail = stderr_tail(proc.stderr)
        if proc.returncode != 0:
            probe(src)
            raise VideoError(src, tail or f"ffmpeg failed (exit status {proc.returncode})")
        try:
            output = read_back(tmp)
        except VideoError as e:
            probe(src)
            detail = f"ffmpeg wrote an unreadable file: {e.reason}" + (f" | {tail}" if tail else "")
            raise VideoError(src, detail) from None
        if (output.frames or 0) <= 1:
            probe(src)  # a still image under a video's name makes one frame or none; the probe refuses it
        if not output.frames:
            raise VideoError(src, "ffmpeg produced no frames" + (f": {tail}" if tail else ""))
    return Compressed(output=replace(output, path=str(dst)), warnings=tail,
                      seconds=round(time.perf_counter() - t0, 3))
