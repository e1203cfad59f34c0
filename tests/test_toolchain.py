"""The versions the stages record beside their numbers (so `dvc metrics diff` can explain a machine change)."""
from __future__ import annotations

import platform
import re
import subprocess

import numpy as np
import pytest

from vidmem.toolchain import versions


def test_versions_of_the_tools_that_decide_bytes():
    v = versions("ffmpeg", "libx264", "espeak-ng", "torch", "numpy", "python", "cpu")
    assert re.match(r"\d+\.\d+", v["ffmpeg"]) and re.match(r"core \d+ r\d+ \w+", v["libx264"])
    assert re.match(r"\d+\.\d+", v["espeak-ng"]) and v["torch"].startswith("2.14.1")
    assert v["cpu"]["model"] and isinstance(v["cpu"]["simd"], list)
    with pytest.raises(ValueError):
        versions("blender")


# ------------------------------------------------------------------------------ bytes independent of the CPU
# x264 chooses algorithms by the CPU's vector units: with the same ffmpeg 5.1.9 / x264 core 164, an AVX-512
# machine wrote other SynthVid and compressed bytes than an AVX2 one (every number downstream moved by about a
# seed's spread). Both encoders pass x264 `cpu-independent=1` and swscale's bit-exact flags; here the same
# commands run with x264 cut down to SSE2 and ffmpeg's own SIMD off (`-cpuflags 0`), as on an older CPU.
# Without cpu-independent the SSE2 run differs from the default on this AVX-512 machine (9e41… vs 88db…).
x86 = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x264's SSE2 set is x86's")


def _as_on_an_older_cpu(cmd: list[str]) -> list[str]:
    cmd = list(cmd)
    at = cmd.index("-x264-params") + 1
    cmd[at] += ":asm=SSE2"
    return [cmd[0], "-cpuflags", "0", *cmd[1:]]


def _frames(n: int = 12) -> bytes:
    y, x = np.mgrid[0:96, 0:128]
    return b"".join(np.stack([(x * 2 + 9 * k) % 256, (y * 3 + x) % 256, (x * y // 7 + k) % 256], -1)
                    .astype(np.uint8).tobytes() for k in range(n))


@x86
def test_synth_encode_writes_the_same_bytes_on_any_cpu(tmp_path):
    from vidmem.synth.encode import h264_command

    out = []
    for name, tweak in (("here", list), ("older", _as_on_an_older_cpu)):
        path = tmp_path / f"{name}.mp4"
        subprocess.run(tweak(h264_command(path, 128, 96, 8, 23, "veryfast")), input=_frames(), check=True)
        out.append(path.read_bytes())
    assert out[0] == out[1] and len(out[0]) > 1000


@x86
def test_compress_writes_the_same_bytes_on_any_cpu(tmp_path):
    from tests.media import lavfi_video
    from vidmem.video import compress_command

    src = lavfi_video(tmp_path / "src.mp4", 320, 240, fps=8, duration=4, source="testsrc2")
    out = []
    for name, tweak in (("here", list), ("older", _as_on_an_older_cpu)):
        path = tmp_path / f"{name}.mp4"
        subprocess.run(tweak(compress_command(src, path)), check=True)
        out.append(path.read_bytes())
    assert out[0] == out[1] and len(out[0]) > 1000
