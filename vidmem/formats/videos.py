"""Finding the raw video file of an annotation's video id, and its duration when the annotation gives none
(probed with `vidmem.video.probe`).

A video is `<videos>/<id>.<ext>` for the first extension of `exts` that exists (case-insensitive extension),
or `<videos>/<id>` itself when the id already ends in a video extension (TACoS `s13-d21.avi`, DiDeMo
`...m4v`); such an id is also found re-encoded under another extension (`s13-d21.mp4`).
Each folder is listed once, so lookups cost nothing per video even for tens of thousands of files.
"""

from __future__ import annotations

import os
from pathlib import Path

from vidmem.common import UserError
from vidmem.video import VideoError, probe

VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov", "m4v", "mpg", "mpeg", "3gp", "flv", "wmv", "ogv")


class VideoFolder:
    def __init__(self, folder: Path, exts: tuple[str, ...] = VIDEO_EXTS):
        self.folder = folder
        self.exts = tuple(e.lower().lstrip(".") for e in exts)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            raise UserError(
                f"{folder}: videos folder not found (check ingest.root and the source's `videos`)"
            ) from None
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


def probe_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from `vidmem.video.probe` (ffprobe); ValueError with ffprobe's words if unknown."""
    try:
        info = probe(path)
    except VideoError as e:
        raise ValueError(e.reason) from None
    if not info.duration or info.duration <= 0:
        raise ValueError("ffprobe reports no duration")
    return info.duration
