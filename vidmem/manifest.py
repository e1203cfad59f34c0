"""The canonical manifest: what `ingest` writes and every later stage reads.

`data/manifest/` holds one JSONL table per kind of annotation, all keyed by video id, times in seconds:

| file              | one row per                                   | used by                          |
|-------------------|-----------------------------------------------|----------------------------------|
| videos.jsonl      | video (id, raw file, duration)                | compress, extract                |
| events.jsonl      | dense-captioning event (per reference file)   | CM2 / PDVC, memory bank          |
| queries.jsonl     | grounding query (+ spoken version)            | MRNet / MMN                      |
| captions.jsonl    | whole-video retrieval caption                 | EMCL / meanP, MemBridge          |
| hierarchy.jsonl   | clip caption / segment description / summary  | ReCap                            |
| hierarchy_pseudo.jsonl | pseudo-labelled segment description / summary of a train video | ReCap training |
| qa.jsonl          | question-answer pair                          | MemBridge QA                     |
| vocab.json        | word vocabulary of the train captions         | caption heads                    |
| report.json       | per source: counts, and every skipped entry with its reason                       |

Splits are per annotation row (the same video can be a train video for one task and absent from another).
`annotator` numbers the reference files of a split (ActivityNet val_1 → 0, val_2 → 1): evaluators score
against each reference file, as the official tools do.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from vidmem.common import UserError, read_json, read_jsonl, write_json, write_jsonl

SPLITS = ("train", "val", "test")
LEVELS = ("clip", "segment", "video")


@dataclass
class Video:
    video_id: str
    path: str  # raw video file, as found on disk (relative to the repository root when under it)
    duration: float | None = None  # seconds, from the annotation when it gives one; else probed
    source: str = ""  # the annotation file that introduced it
    table: ClassVar[str] = "videos"


@dataclass
class Event:
    video_id: str
    split: str
    start: float
    end: float
    sentence: str
    annotator: int = 0
    source: str = ""
    table: ClassVar[str] = "events"


@dataclass
class Query:
    query_id: str
    video_id: str
    split: str
    start: float
    end: float
    sentence: str
    audio: str | None = None  # 16 kHz WAV of the spoken query (SLMR)
    speaker: str | None = None
    source: str = ""
    table: ClassVar[str] = "queries"


@dataclass
class Caption:
    caption_id: str
    video_id: str
    split: str
    sentence: str
    source: str = ""
    table: ClassVar[str] = "captions"


@dataclass
class HierarchyText:
    text_id: str
    video_id: str
    split: str
    level: str  # clip | segment | video
    start: float
    end: float
    text: str
    source: str = ""
    table: ClassVar[str] = "hierarchy"


@dataclass
class PseudoText(HierarchyText):
    """A machine-written segment description or summary of a train video (Ego4D-HCap's `*_train_pseudo`
    files): more training text for ReCap, never a reference that is scored, never memory or vocabulary."""

    table: ClassVar[str] = "hierarchy_pseudo"


@dataclass
class QA:
    qa_id: str
    video_id: str
    split: str
    question: str
    answer: str
    source: str = ""
    table: ClassVar[str] = "qa"


ROW_TYPES = (Video, Event, Query, Caption, HierarchyText, PseudoText, QA)
T = TypeVar("T", Video, Event, Query, Caption, HierarchyText, PseudoText, QA)


@dataclass
class Manifest:
    videos: list[Video] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    queries: list[Query] = field(default_factory=list)
    captions: list[Caption] = field(default_factory=list)
    hierarchy: list[HierarchyText] = field(default_factory=list)
    hierarchy_pseudo: list[PseudoText] = field(default_factory=list)
    qa: list[QA] = field(default_factory=list)
    vocab: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ io
    def write(self, root: str | os.PathLike) -> None:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        for cls in ROW_TYPES:
            write_jsonl(root / f"{cls.table}.jsonl", (asdict(r) for r in getattr(self, cls.table)))
        write_json(root / "vocab.json", self.vocab)

    @classmethod
    def read(cls, root: str | os.PathLike, tables: tuple[str, ...] | None = None) -> Manifest:
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"{root}: manifest not found; run `dvc repro ingest` first")
        out = cls()
        for row_cls in ROW_TYPES:
            if tables is not None and row_cls.table not in tables:
                continue
            path = root / f"{row_cls.table}.jsonl"
            if path.exists():
                names = {f.name for f in dataclasses.fields(row_cls)}
                rows = [row_cls(**{k: v for k, v in r.items() if k in names}) for r in read_jsonl(path)]
                setattr(out, row_cls.table, rows)
        if (root / "vocab.json").exists():
            out.vocab = read_json(root / "vocab.json")
        return out

    # ------------------------------------------------------------------ queries
    def video_index(self) -> dict[str, Video]:
        return {v.video_id: v for v in self.videos}

    @staticmethod
    def by_video(rows: list[T], split: str | None = None) -> dict[str, list[T]]:
        """Group rows by video id (first-appearance order), optionally keeping one split."""
        out: dict[str, list[T]] = {}
        for r in rows:
            if split is None or r.split == split:
                out.setdefault(r.video_id, []).append(r)
        return out
