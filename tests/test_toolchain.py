"""The versions the stages record beside their numbers (so `dvc metrics diff` can explain a machine change)."""
from __future__ import annotations

import re

import pytest

from vidmem.toolchain import versions


def test_versions_of_the_tools_that_decide_bytes():
    v = versions("ffmpeg", "libx264", "espeak-ng", "torch", "numpy", "python", "cpu")
    assert re.match(r"\d+\.\d+", v["ffmpeg"]) and re.match(r"core \d+ r\d+ \w+", v["libx264"])
    assert re.match(r"\d+\.\d+", v["espeak-ng"]) and v["torch"].startswith("2.14.1")
    assert v["cpu"]["model"] and isinstance(v["cpu"]["simd"], list)
    with pytest.raises(ValueError):
        versions("blender")
