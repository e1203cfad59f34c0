"""Same input bytes, same output bytes — also when the inputs were written again (a clean `dvc repro` renders
SynthVid anew: the same bytes under new modification times). Whole-pipeline version: test_kill_resume.py
(slow)."""
from __future__ import annotations

import os


from stages.compress import compress_all
from tests.media import lavfi_video
from tests.project import digest
from vidmem.manifest import Video
from vidmem.video import CompressConfig


def test_compress_outputs_do_not_depend_on_input_mtimes(tmp_path):
    src = lavfi_video(tmp_path / "raw" / "a.mp4", 160, 120, fps=6, duration=1.0)
    videos = [Video("a", str(src))]
    compress_all(videos, tmp_path / "first", CompressConfig(workers=1))
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the same bytes, written a second later
    compress_all(videos, tmp_path / "again", CompressConfig(workers=1))
    assert digest(tmp_path / "first") == digest(tmp_path / "again")
