"""Finding the raw video file of an annotation's video id, and its duration when the annotation gives none.

A video is `<videos>/<id>.<ext>` for the first extension of `exts` that exists (case-insensitive extension),
or `<videos>/<id>` itself when the id already ends in a video extension (TACoS `s13-d21.avi`, DiDeMo
`...m4v`); such an id is also found re-encoded under another extension (`s13-d21.mp4`).
Each folder is listed once, so lookups cost nothing per video even for tens of thousands of files.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from vidmem.common import UserError

VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov", "m4v", "mpg", "mpeg", "3gp", "flv", "wmv", "ogv")


class VideoFolder:
    def __init__(self, folder: Path, exts: tuple[str, ...] = VIDEO_EXTS):
        self.folder = folder
        self.exts = tuple(e.lower().lstrip(".") for e in exts)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            raise UserError(f"{folder}: videos folder not found (check ingest.root and the source's `videos`)") \
                from None
        except NotADirectoryError:
            raise UserError(f"{folder}: expected a folder of videos") from None
        self._by_stem: dict[tuple[str, str], str] = {}
        for name in sorted(names):
            stem, ext = os.path.splitext(name)
            self._by_stem.setdefault((stem, ext[1:].lower()), name)

    def find(self, video_id: str) -> Path | None:
        stem, ext = os.path.splitext(video_id)
        candidates = [(video_id, e) for e in self.exts]
        if ext[1:].lower() in self.exts or ext[1:].lower() in VIDEO_EXTS:
            candidates = [(stem, ext[1:].lower())] + candidates + [(stem, e) for e in self.exts]
        for key in candidates:
            name = self._by_stem.get(key)
            if name is not None:
                return self.folder / name
        return None

    def expected(self, video_id: str) -> str:
        """How the missing file was looked for, for the error message."""
        return f"{self.folder}/{video_id}.{{{','.join(self.exts)}}}"


def probe_duration(path: str | os.PathLike, timeout: float = 60.0) -> float:
    """Container duration in seconds (ffprobe); ValueError with ffprobe's words when it has none."""
    cmd = ["ffprobe", "-v", "error", "-show_entries", "format=duration",
           "-of", "default=noprint_wrappers=1:nokey=1", str(path)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise UserError("ffprobe not found: install ffmpeg (`make install` does)") from None
    except subprocess.TimeoutExpired:
        raise ValueError(f"ffprobe timed out after {timeout:g} s") from None
    out = res.stdout.strip().splitlines()
    try:
        value = float(out[0]) if res.returncode == 0 and out else float("nan")
    except ValueError:
        value = float("nan")
    if not value > 0:
        why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "no duration in the container"
        raise ValueError(f"ffprobe: {why}")
    return value
