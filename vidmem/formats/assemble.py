"""From params to the canonical manifest: parse every source, find each video, probe missing durations,
check what only the video can vouch for, and account for every input entry.

Order of the checks: (1) each parser's own entry checks; (2) the video file of every row exists (and one id
names one file); (3) videos whose annotations give no duration are probed with ffprobe, and the spans of rows
that were not yet checked against a duration are checked now; (4) spoken queries' WAV files exist.
With `on_error: fail` the first problem of a phase stops the run with its one-line message; with `skip` the
entry is left out and listed in the report, and the run goes on.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vidmem.common import UserError
from vidmem.formats import checks
from vidmem.formats.base import Bad, Item, Parsed, Problem
from vidmem.formats.registry import FORMATS, TABLES, IngestConfig, VocabConfig, ingest_config, make_sources
from vidmem.formats.videos import VideoFolder, probe_duration
from vidmem.formats.vocab import build_vocab
from vidmem.manifest import SPLITS, Manifest, Video

log = logging.getLogger("vidmem.ingest")

TIMED = ("events", "queries", "hierarchy", "hierarchy_pseudo")


@dataclass
class IngestResult:
    manifest: Manifest
    report: dict[str, Any]
    metrics: dict[str, Any]
    answers: dict[str, int] | None = None


@dataclass
class _VideoInfo:
    path: Path
    duration: float | None
    source: str  # the annotation file that first named it
    probed: bool = False
    durations: dict[str, float] = field(default_factory=dict)  # source name → annotation duration


def ingest(cfg: IngestConfig | dict[str, Any], progress: bool = True) -> IngestResult:
    """The manifest, report, metrics and answer set of `params.ingest` (paths relative to the cwd)."""
    cfg = ingest_config(cfg)
    on_error, exts, workers, vocab_cfg = cfg.on_error, cfg.video_exts, cfg.probe_workers, cfg.vocab
    sources = make_sources(cfg)  # validates root, time_tolerance and every source
    tolerance = sources[0].time_tolerance

    parsed: list[Parsed] = []
    for src in sources:
        result = _parse(src, on_error)
        log.info("%s: %d rows, %d problems", src.name, len(result.items), len(result.problems))
        parsed.append(result)
    problems = [p for r in parsed for p in r.problems]
    _stop_if(on_error, problems)
    kept = [list(r.items) for r in parsed]
    if not cfg.allow_split_overlap:
        new = _check_splits(parsed, kept)
        _stop_if(on_error, new)
        problems += new
    videos: dict[str, _VideoInfo] = {}
    new = _find_videos(parsed, kept, videos, tuple(exts))
    _stop_if(on_error, new)
    problems += new
    new = _probe_durations(parsed, kept, videos, workers, tolerance, progress)
    _stop_if(on_error, new)
    problems += new
    new = _check_audio(parsed, kept)
    _stop_if(on_error, new)
    problems += new
    return _result(cfg, parsed, kept, videos, problems, vocab_cfg, on_error)


def _parse(src, on_error: str) -> Parsed:
    """One source's rows. A file that cannot be read at all (malformed JSON, not UTF-8 ...) stops the run in
    `fail` mode; with `skip` the whole source is listed in the report with the reason and ingest goes on."""
    try:
        return FORMATS[src.format].parse(src)
    except UserError as e:
        if on_error == "fail":
            raise
        files = [str(p) for v in src.paths.values() for p in (v if isinstance(v, list) else [v])]
        message = str(e)
        file = next((f for f in files if message.startswith(f)), files[0] if files else src.name)
        reason = message[len(file):].lstrip(": ") if message.startswith(file) else message
        log.warning("%s: skipped as a whole: %s", file, reason)
        return Parsed(src, problems=[Problem(file, "whole file", "file", reason, 1, src.name)])


def _check_splits(parsed: list[Parsed], kept: list[list[Item]]) -> list[Problem]:
    """A video belongs to one split: rows of a video already seen in another split (in source order) are
    problems — a video in train and test leaks its answers into training."""
    home: dict[str, tuple[str, str]] = {}  # video id -> (split, the file that put it there)
    problems: list[Problem] = []
    for i, r in enumerate(parsed):
        bad: set[str] = set()
        for vid, items in _by_video(kept[i]).items():
            for split in dict.fromkeys(item.row.split for item in items):
                first = home.setdefault(vid, (split, items[0].file))
                if first[0] != split:
                    rows = [item for item in items if item.row.split == split]
                    problems.append(Problem(
                        rows[0].file, f"video '{vid}'", "split",
                        f"video '{vid}' is in split '{split}' here and in split '{first[0]}' in {first[1]}; a video in "
                        "two splits leaks between them (set ingest.allow_split_overlap: true if that is intended)",
                        len(rows), r.source.name))
                    bad.add((vid, split))
        kept[i] = [item for item in kept[i] if (item.row.video_id, item.row.split) not in bad]
    return problems


def _find_videos(
    parsed: list[Parsed], kept: list[list[Item]], videos: dict[str, _VideoInfo], exts: tuple[str, ...]
) -> list[Problem]:
    """Every row's video file exists, and one id names one file; note annotation durations."""
    folders: dict[Path, VideoFolder] = {}
    problems: list[Problem] = []
    for i, r in enumerate(parsed):
        src = r.source
        if src.videos not in folders:
            folders[src.videos] = VideoFolder(src.videos, exts)
        folder = folders[src.videos]
        bad: set[str] = set()
        for vid, items in _by_video(kept[i]).items():
            path = folder.find(vid)
            reason = None
            if path is None:
                reason = f"video file not found: {folder.expected(vid)}"
            elif vid in videos and videos[vid].path != path:
                reason = f"video id '{vid}' names two files: {videos[vid].path} and {path}"
            if reason is not None:
                problems.append(
                    Problem(items[0].file, f"video '{vid}'", "video", reason, len(items), src.name)
                )
                bad.add(vid)
                continue
            info = videos.setdefault(vid, _VideoInfo(path, None, items[0].file))
            duration = r.durations.get(vid)
            if duration is not None:
                info.durations[src.name] = duration
                if info.duration is None:
                    info.duration = duration
        kept[i] = [item for item in kept[i] if item.row.video_id not in bad]
    return problems


def _probe_durations(
    parsed: list[Parsed],
    kept: list[list[Item]],
    videos: dict[str, _VideoInfo],
    workers: int,
    tolerance: float,
    progress: bool,
) -> list[Problem]:
    """Probe the videos no annotation gives a duration for; check spans not yet checked against one."""
    missing = [vid for vid, info in videos.items() if info.duration is None]
    failed: dict[str, str] = {}
    if missing:
        log.info("probing %d video durations with ffprobe", len(missing))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {vid: pool.submit(_probe, videos[vid].path) for vid in missing}
            bar = tqdm(missing, desc="probe", unit="video", disable=None if progress else True, leave=False)
            for vid in bar:
                value = futures[vid].result()
                if isinstance(value, str):
                    failed[vid] = value
                else:
                    videos[vid].duration, videos[vid].probed = value, True
    problems: list[Problem] = []
    for i, r in enumerate(parsed):
        for vid, items in _by_video(kept[i]).items():
            if vid in failed:
                reason = f"cannot read the duration of {videos[vid].path} ({failed[vid]})"
                problems.append(
                    Problem(items[0].file, f"video '{vid}'", "video", reason, len(items), r.source.name)
                )
        keep = []
        for item in kept[i]:
            vid = item.row.video_id
            if vid in failed:
                continue
            if r.durations.get(vid) is None and item.row.table in TIMED:
                try:
                    item.row.start, item.row.end = checks.span(
                        item.row.start, item.row.end, videos[vid].duration, tolerance, "times", item.end_slack
                    )
                except Bad as bad:
                    problems.append(Problem(item.file, item.entry, bad.field, bad.reason, 1, r.source.name))
                    continue
            keep.append(item)
        kept[i] = keep
    return problems


def _check_audio(parsed: list[Parsed], kept: list[list[Item]]) -> list[Problem]:
    """Spoken queries: every WAV exists."""
    problems: list[Problem] = []
    for i, r in enumerate(parsed):
        keep = []
        for item in kept[i]:
            audio = getattr(item.row, "audio", None)
            if audio is not None and not Path(audio).is_file():
                reason = f"audio file not found: {audio}"
                problems.append(Problem(item.file, item.entry, "audios", reason, 1, r.source.name))
                continue
            keep.append(item)
        kept[i] = keep
    return problems


def _probe(path: Path) -> float | str:
    try:
        return probe_duration(path)
    except ValueError as e:
        return str(e)


def _by_video(items: list[Item]) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for item in items:
        out.setdefault(item.row.video_id, []).append(item)
    return out


def _stop_if(on_error: str, problems: list[Problem]) -> None:
    if on_error == "fail" and problems:
        more = len(problems) - 1
        tail = (
            (
                f" (and {more} more problem{'s' if more > 1 else ''}; with ingest.on_error: skip every bad "
                "entry is left out and listed in data/manifest/report.json)"
            )
            if more
            else ""
        )
        raise UserError(problems[0].message() + tail)


def _result(
    cfg: dict[str, Any],
    parsed: list[Parsed],
    kept: list[list[Item]],
    videos: dict[str, _VideoInfo],
    problems: list[Problem],
    vocab_cfg: dict[str, Any],
    on_error: str,
) -> IngestResult:
    manifest = Manifest()
    used: set[str] = set()
    for items in kept:
        for item in items:
            getattr(manifest, item.row.table).append(item.row)
            used.add(item.row.video_id)
    for vid, info in videos.items():
        if vid in used:
            manifest.videos.append(Video(vid, str(info.path), info.duration, info.source))
    manifest.vocab = _vocab(manifest, vocab_cfg)
    answers = _answers(parsed)

    dropped_by_source = Counter()
    for p in problems:
        dropped_by_source[p.source] += p.dropped
    sources = []
    for r, items in zip(parsed, kept, strict=True):
        rows = Counter(item.row.table for item in items)
        files = [str(p) for v in r.source.paths.values() for p in (v if isinstance(v, list) else [v])]
        sources.append(
            {
                "name": r.source.name,
                "format": r.source.format,
                "split": r.source.split,
                "files": files,
                "videos": str(r.source.videos),
                "entries": len(items) + dropped_by_source[r.source.name],
                "kept": len(items),
                "dropped": dropped_by_source[r.source.name],
                "problems": sum(1 for p in problems if p.source == r.source.name),
                "not_selected": r.not_selected,
                "rows": dict(sorted(rows.items())),
            }
        )
    conflicts = [
        {"video_id": vid, "durations": info.durations}
        for vid, info in videos.items()
        if vid in used
        and len(info.durations) > 1
        and max(info.durations.values()) - min(info.durations.values())
        > float(cfg.time_tolerance)
    ]
    for c in conflicts:
        log.warning(
            "video '%s': the annotations disagree on its duration %s (the first is kept)",
            c["video_id"],
            c["durations"],
        )
    report = {
        "on_error": on_error,
        "sources": sources,
        "skipped": [p.as_dict() for p in problems],
        "videos": {"count": len(manifest.videos), "probed": sum(1 for v in videos.values() if v.probed)},
        "duration_conflicts": conflicts,
    }
    metrics: dict[str, Any] = {"videos": len(manifest.videos)}
    for table in TABLES:
        rows = getattr(manifest, table)
        per_split = Counter(r.split for r in rows)
        metrics[table] = {s: per_split.get(s, 0) for s in SPLITS} | {"total": len(rows)}
    metrics["vocab_size"] = len(manifest.vocab.get("word_to_ix", {}))
    metrics["skipped"] = len(problems)
    metrics["dropped_rows"] = sum(p.dropped for p in problems)
    return IngestResult(manifest, report, metrics, answers)


def _vocab(manifest: Manifest, cfg: VocabConfig) -> dict[str, Any]:
    tables, max_words, min_count = cfg.tables, cfg.max_words, cfg.min_count
    sentences = []
    for table in tables:
        for row in getattr(manifest, table):
            if row.split == "train":
                sentences.append(getattr(row, "sentence", None) or getattr(row, "text", None) or row.question)
    return build_vocab(sentences, max_words, min_count)


def _answers(parsed: list[Parsed]) -> dict[str, int] | None:
    answers: dict[str, int] | None = None
    owner = ""
    for r in parsed:
        if r.answers is None:
            continue
        if answers is None:
            answers, owner = r.answers, r.source.name
        elif r.answers != answers:
            raise UserError(
                f"params.yaml: ingest sources '{owner}' and '{r.source.name}' name different "
                "closed answer sets; QA sources must share one"
            )
    return answers
