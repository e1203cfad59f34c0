"""The versions that decide output bytes, recorded beside the numbers they produced.

The same params give byte-identical outputs on the same toolchain. Across machines the video encoder build
(libx264: SynthVid's pixels and every compressed frame), espeak-ng (the spoken queries), and torch / numpy /
the CPU's vector units (float summation order) can move every number by about a seed's spread. The stages
write these versions into their metrics, so `dvc metrics diff` shows when a difference comes from the machine
rather than from a change. Every claim in the README is made over seeds for the same reason.
"""
from __future__ import annotations

import functools
import platform
import re
import subprocess
from typing import Any

SIMD = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "neon", "asimd")


def _run(args: list[str], timeout: float = 30) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (proc.stdout + proc.stderr).decode("utf-8", "replace")


@functools.cache
def ffmpeg() -> str:
    m = re.search(r"ffmpeg version (\S+)", _run(["ffmpeg", "-version"]))
    return m.group(1) if m else "unknown"


@functools.cache
def libx264() -> str:
    """The x264 build ffmpeg encodes with, as x264 writes it into every stream ("core 164 r3095 baee400")."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi", "-i", "color=black:s=16x16:d=0.1", "-frames:v", "1",
         "-c:v", "libx264", "-f", "h264", "-"], capture_output=True, timeout=30) if ffmpeg() != "unknown" else None
    m = re.search(rb"x264 - (core \d+ r\d+ \w+)", out.stdout) if out is not None else None
    return m.group(1).decode() if m else "unknown"


@functools.cache
def espeak_ng() -> str:
    m = re.search(r"text-to-speech: (\S+)", _run(["espeak-ng", "--version"]))
    return m.group(1) if m else "unknown"


@functools.cache
def cpu() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return {"model": model, "simd": [s for s in SIMD if s in flags]}


def versions(*what: str) -> dict[str, Any]:
    """The named versions: ffmpeg, libx264, espeak-ng, torch, numpy, python, cpu."""
    out: dict[str, Any] = {}
    for name in what:
        if name == "ffmpeg":
            out[name] = ffmpeg()
        elif name == "libx264":
            out[name] = libx264()
        elif name == "espeak-ng":
            out[name] = espeak_ng()
        elif name == "torch":
            import torch

            out[name] = torch.__version__
        elif name == "numpy":
            import numpy

            out[name] = numpy.__version__
        elif name == "python":
            out[name] = platform.python_version()
        elif name == "cpu":
            out[name] = cpu()
        else:
            raise ValueError(f"toolchain.versions: unknown tool {name!r}")
    return out
