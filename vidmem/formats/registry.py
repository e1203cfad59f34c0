"""The supported formats and the `params.ingest.sources` entries that select them.

A source is one annotation file (or a file group such as ActivityNet val_1 + val_2, or a Charades-STA txt with
its csv) in one format, feeding one split (or, for files that carry their own split, a mapping of the file's
split values to ours), with the folder of its videos. Paths are relative to `ingest.root`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vidmem.common import UserError
from vidmem.formats.activitynet import YOUCOOK2_SPLITS, parse_activitynet, parse_youcook2
from vidmem.formats.base import Parsed, Source
from vidmem.formats.charades import parse_charades_sta
from vidmem.formats.didemo import parse_didemo
from vidmem.formats.ego4d_hcap import parse_ego4d_hcap
from vidmem.formats.mmn import parse_activitynet_speech, parse_mmn, parse_tacos
from vidmem.formats.msrvtt import MSRVTT_SPLITS, parse_msrvtt
from vidmem.formats.msrvtt_qa import parse_msrvtt_qa
from vidmem.formats.msvd import parse_msvd
from vidmem.formats.videos import VIDEO_EXTS
from vidmem.manifest import SPLITS
from vidmem.params import bounded, read


@dataclass(frozen=True)
class FormatSpec:
    parse: Callable[[Source], Parsed]
    required: tuple[str, ...]  # path keys a source must give
    optional: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()  # which of the keys name folders rather than files
    split_map: dict[str, str] | None = None  # default mapping for files that carry their own split
    tables: tuple[str, ...] = ()


FORMATS: dict[str, FormatSpec] = {
    "activitynet_captions": FormatSpec(parse_activitynet, ("files",), tables=("events",)),
    "youcook2": FormatSpec(parse_youcook2, ("file",), split_map=YOUCOOK2_SPLITS, tables=("events",)),
    "charades_sta": FormatSpec(parse_charades_sta, ("file", "csv"), tables=("queries",)),
    "mmn": FormatSpec(parse_mmn, ("file",), ("audio",), folders=("audio",), tables=("queries",)),
    "activitynet_speech": FormatSpec(
        parse_activitynet_speech, ("file", "audio"), folders=("audio",), tables=("queries",)
    ),
    "tacos": FormatSpec(parse_tacos, ("file",), ("audio",), folders=("audio",), tables=("queries",)),
    "msrvtt": FormatSpec(parse_msrvtt, (), ("file", "csv"), split_map=MSRVTT_SPLITS, tables=("captions",)),
    "msvd": FormatSpec(parse_msvd, ("list", "captions"), tables=("captions",)),
    "didemo": FormatSpec(parse_didemo, ("file", "list"), tables=("captions", "queries")),
    "ego4d_hcap": FormatSpec(
        parse_ego4d_hcap, (), ("clips", "segments", "summaries", "segments_pseudo", "summaries_pseudo"),
        tables=("hierarchy", "hierarchy_pseudo"),
    ),
    "msrvtt_qa": FormatSpec(parse_msrvtt_qa, ("file", "answers"), tables=("qa",)),
}
COMMON_KEYS = ("format", "split", "videos", "name")


TABLES = ("events", "queries", "captions", "hierarchy", "hierarchy_pseudo", "qa")


@dataclass
class VocabConfig:
    """`ingest.vocab`: the caption heads' word vocabulary (PDVC style) → data/manifest/vocab.json."""

    tables: tuple[Literal[TABLES], ...] = ("events", "captions", "hierarchy")  # whose train sentences build it
    max_words: int = bounded(30, lo=1)  # sentences are cut to this many words
    min_count: int = bounded(1, lo=1)  # rarer words become <unk>


@dataclass
class IngestConfig:
    """The `ingest` params group (each source entry is checked by its format's spec below)."""

    root: str
    sources: list[dict[str, Any]]
    on_error: Literal["fail", "skip"] = "fail"
    allow_split_overlap: bool = False  # true: a video may appear in several splits (say so when you mean it)
    time_tolerance: float = bounded(1.0, lo=0)
    video_exts: tuple[str, ...] = VIDEO_EXTS
    probe_workers: int = bounded(2, lo=1)
    vocab: VocabConfig = field(default_factory=VocabConfig)

    def check(self, where: str) -> None:
        if not self.sources:
            raise UserError(f"params.yaml {where}.sources: must be a non-empty list of annotation sources")
        if not self.video_exts:
            raise UserError(f"params.yaml {where}.video_exts: must list file extensions such as [mp4, webm]")


def ingest_config(cfg: IngestConfig | Mapping[str, Any]) -> IngestConfig:
    if isinstance(cfg, IngestConfig):
        return cfg
    if not isinstance(cfg, Mapping):
        raise UserError("params.yaml: ingest must be a mapping")
    for key in ("root", "sources"):
        if key not in cfg:
            raise UserError(f"params.yaml ingest.{key}: missing (see the comments in params.yaml)")
    return read(IngestConfig, cfg, "ingest")


def make_sources(cfg: IngestConfig | Mapping[str, Any]) -> list[Source]:
    """Validate `params.ingest` and resolve every source's paths against `root`."""
    cfg = ingest_config(cfg)
    root = Path(cfg.root)
    if not root.is_dir():
        raise UserError(
            f"params.yaml: ingest.root: folder '{root}' not found"
            + (" (run `dvc repro synth` first)" if "synth" in str(root) else "")
        )
    tolerance = cfg.time_tolerance
    entries = cfg.sources
    sources = [_source(i, entry, root, float(tolerance)) for i, entry in enumerate(entries)]
    names: dict[str, int] = {}
    for i, src in enumerate(sources):
        if src.name in names:
            raise UserError(
                f"params.yaml: ingest.sources[{i}]: name '{src.name}' is also the name of "
                f"sources[{names[src.name]}]; give one of them a distinct `name`"
            )
        names[src.name] = i
    return sources


def _source(i: int, entry: Any, root: Path, tolerance: float) -> Source:
    where = f"params.yaml: ingest.sources[{i}]"
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a mapping with format, split, videos and file keys")
    fmt = _need(entry, "format", where)
    if fmt not in FORMATS:
        raise UserError(f"{where}.format: unknown format '{fmt}' (known: {', '.join(FORMATS)})")
    spec = FORMATS[fmt]
    entry = dict(entry)
    if fmt == "activitynet_captions" and "file" in entry and "files" not in entry:
        entry["files"] = [entry.pop("file")]
    allowed = COMMON_KEYS + spec.required + spec.optional
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))} for format '{fmt}' "
            f"(allowed: {', '.join(allowed)})"
        )
    split = _split(entry.get("split", spec.split_map), spec, f"{where}.split")
    videos = root / str(_need(entry, "videos", where))
    paths: dict[str, Path | list[Path]] = {}
    for key in spec.required + spec.optional:
        if key not in entry:
            if key in spec.required:
                raise UserError(f"{where}: format '{fmt}' needs key '{key}'")
            continue
        value = entry[key]
        if key == "files":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise UserError(f"{where}.files: expected a list of file paths (one per annotator)")
            paths[key] = [root / v for v in value]
        elif isinstance(value, str) and value:
            paths[key] = root / value
        else:
            raise UserError(f"{where}.{key}: expected a path relative to ingest.root, got {value!r}")
        for p in paths[key] if isinstance(paths[key], list) else [paths[key]]:
            if key in spec.folders and not p.is_dir():
                raise UserError(f"{where}.{key}: folder '{p}' not found")
    name = entry.get("name")
    if name is None:
        first = next((p for p in paths.values()), None)
        first = first[0] if isinstance(first, list) else first
        name = f"{fmt}:{split}" if isinstance(split, str) else f"{fmt}:{first.stem if first else i}"
    if not isinstance(name, str) or not name or "/" in name or any(c.isspace() for c in name):
        raise UserError(f"{where}.name: expected a short name without spaces or '/', got {name!r}")
    return Source(name, fmt, split, root, videos, paths, tolerance)


def _split(value: Any, spec: FormatSpec, where: str) -> str | dict[str, str]:
    if isinstance(value, str):
        if value not in SPLITS:
            raise UserError(f"{where}: unknown split '{value}' (expected one of {', '.join(SPLITS)})")
        return value
    if isinstance(value, dict) and spec.split_map is not None:
        bad = {k: v for k, v in value.items() if v not in SPLITS}
        if bad or not value:
            raise UserError(f"{where}: mapping values must be among {', '.join(SPLITS)}, got {bad or value}")
        return {str(k): v for k, v in value.items()}
    if value is None:
        raise UserError(f"{where}: missing (one of {', '.join(SPLITS)})")
    kind = "a split name or a mapping {value in the file: split}" if spec.split_map else "a split name"
    raise UserError(f"{where}: expected {kind}, got {value!r}")


def _need(obj: dict, key: str, where: str) -> Any:
    if key not in obj or obj[key] in (None, ""):
        raise UserError(f"{where}: missing key '{key}'")
    return obj[key]
