"""What every parser returns: manifest rows with their provenance, the videos they name, per-entry problems.

A parser never stops at a bad entry: it records a `Problem` (file, entry, field, reason, and how many manifest
rows the entry would have produced) and goes on, so that `ingest` can either fail on the first problem with a
one-line error or, with `on_error: skip`, leave the entry out and list it in the report. Only a whole
unreadable file raises `UserError` straight away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vidmem.manifest import QA, Caption, Event, HierarchyText, Query

Row = Event | Query | Caption | HierarchyText | QA


class Bad(Exception):
    """An entry-level defect: `field` names what is wrong, `reason` says it in words (and names the field)."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass
class Problem:
    file: str  # the annotation file as the user can open it (root/relative path)
    entry: str  # e.g. "video 'v_abc' event 3", "line 12"
    field: str  # e.g. "timestamps", "duration", "video_id"
    reason: str  # one sentence that names the field, e.g. "start 12.0 > end 4.0"
    dropped: int = 1  # manifest rows this entry would have produced (1 when it cannot be told)
    source: str = ""  # the name of the params source that read the file

    def message(self) -> str:
        return f"{self.file}: {self.entry}: {self.reason}"

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "file": self.file,
            "entry": self.entry,
            "field": self.field,
            "reason": self.reason,
            "dropped": self.dropped,
        }


@dataclass
class Item:
    """One manifest row plus where it came from, so that later checks (video file, duration) can name it."""

    row: Row
    file: str
    entry: str
    end_slack: float = 0.0  # extra clamp allowance for the end (DiDeMo's last 5-s chunk is shorter by design)


@dataclass
class Source:
    """One entry of `params.ingest.sources`, with its paths resolved against `root`."""

    name: str
    format: str
    split: str | dict[str, str]  # a split name, or {value in the file: split} for files that carry their own
    root: Path
    videos: Path
    paths: dict[str, Path | list[Path]]  # format-specific file keys → resolved paths
    time_tolerance: float = 1.0

    def path(self, key: str) -> Path:
        value = self.paths[key]
        assert isinstance(value, Path), key
        return value

    def optional(self, key: str) -> Path | None:
        value = self.paths.get(key)
        assert value is None or isinstance(value, Path), key
        return value

    def display(self, path: Path) -> str:
        return str(path)

    def split_for(self, value: str) -> str | None:
        """The manifest split of a file-level split value (None: not selected by this source)."""
        if isinstance(self.split, str):
            return self.split
        return self.split.get(value)


@dataclass
class Parsed:
    source: Source
    items: list[Item] = field(default_factory=list)
    durations: dict[str, float | None] = field(
        default_factory=dict
    )  # video id → duration from the annotation
    problems: list[Problem] = field(default_factory=list)
    not_selected: int = 0  # entries of another split in a file that carries several (not this source's)
    answers: dict[str, int] | None = None  # closed answer set (QA sources)

    # ------------------------------------------------------------------ recording
    def add(self, row: Row, file: str, entry: str, end_slack: float = 0.0) -> None:
        self.items.append(Item(row, file, entry, end_slack))

    def video(self, video_id: str, duration: float | None = None) -> None:
        """Note a video the annotation names; the first duration given wins."""
        if self.durations.get(video_id) is None:
            self.durations[video_id] = duration

    def problem(self, file: str, entry: str, bad: Bad, dropped: int = 1) -> None:
        """Record a bad entry; `dropped` = manifest rows it would have produced (0 for metadata rows such as
        a Charades csv line, whose loss shows up as problems of the rows that needed it)."""
        self.problems.append(Problem(file, entry, bad.field, bad.reason, dropped, self.source.name))

    @property
    def entries(self) -> int:
        """Input entries this source read: every one is a kept row or counted in a problem."""
        return len(self.items) + sum(p.dropped for p in self.problems)
