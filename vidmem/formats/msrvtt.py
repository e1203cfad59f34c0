"""MSR-VTT retrieval annotations (CLIP4Clip / EMCL layout) → `Caption` rows.

`MSRVTT_data.json`: {"info": {...}, "videos": [{"category", "url", "video_id", "start time", "end time",
"split", "id"}], "sentences": [{"caption", "video_id", "sen_id"}]} with 20 captions per video and split values
train | validate | test.

A source picks its videos one of three ways:
- `csv` with one column `video_id` (`MSRVTT_train.9k.csv`): the listed videos, all their JSON captions;
- `csv` with columns `key,vid_key,video_id,sentence` (`MSRVTT_JSFUSION_test.csv`): one caption per video, from
  the csv (the 1k-A test protocol); the JSON, when given, only vouches that each video exists;
- no `csv`: the JSON's own `split` field, through the source's split mapping (validate → val by default).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vidmem.common import UserError
from vidmem.formats import checks
from vidmem.formats.base import Bad, Parsed, Source
from vidmem.formats.readers import load_json, read_csv
from vidmem.manifest import Caption

MSRVTT_SPLITS = {"train": "train", "validate": "val", "test": "test"}


class _Data:
    """The videos and sentences of MSRVTT_data.json, validated once."""

    def __init__(self, out: Parsed, path: Path, file: str):
        data = load_json(path)
        if (
            not isinstance(data, Mapping)
            or not isinstance(data.get("videos"), list)
            or not isinstance(data.get("sentences"), list)
        ):
            raise UserError(
                f"{file}: expected an object with 'videos' and 'sentences' lists (MSRVTT_data.json)"
            )
        self.file = file
        self.video_split: dict[str, str] = {}  # video id → the file's split value
        self.bad_videos: dict[str, str] = {}  # video id → why its entry is unusable
        seen: dict[str, str] = {}
        for i, video in enumerate(data["videos"]):
            vid = None
            try:
                checks.mapping(video, f"videos[{i}]")
                checks.no_duplicate_keys(video)
                vid = checks.ident(checks.key(video, "video_id"), "video_id")
                checks.unique(seen, vid, f"videos[{i}]", "video_id")
                self.video_split[vid] = checks.text(checks.key(video, "split"), "split")
            except Bad as bad:
                if vid is not None:
                    self.bad_videos[vid] = f"its entry in the videos list is unusable ({bad.reason})"
                    self.video_split.pop(vid, None)
                out.problem(file, f"videos[{i}]" + (f" (video '{vid}')" if vid else ""), bad, dropped=0)
        self.sentences: dict[str, list[tuple[int, Any]]] = {}  # video id → [(index, sentence entry)]
        for i, sent in enumerate(data["sentences"]):
            try:
                checks.mapping(sent, f"sentences[{i}]")
                vid = checks.ident(checks.key(sent, "video_id"), "video_id")
            except Bad as bad:
                out.problem(file, f"sentences[{i}]", bad)
                continue
            self.sentences.setdefault(vid, []).append((i, sent))

    def unknown(self, vid: str) -> Bad | None:
        if vid in self.bad_videos:
            return Bad("video_id", f"video '{vid}': {self.bad_videos[vid]}")
        if vid not in self.video_split:
            return Bad("video_id", f"unknown video id '{vid}': not in the videos list of {self.file}")
        return None


def parse_msrvtt(src: Source) -> Parsed:
    out = Parsed(src)
    json_path, csv_path = src.optional("file"), src.optional("csv")
    if json_path is None and csv_path is None:
        raise UserError(f"params.yaml: ingest source '{src.name}': msrvtt needs `file`, `csv` or both")
    data = _Data(out, json_path, src.display(json_path)) if json_path is not None else None
    if csv_path is None:
        assert data is not None
        _from_json(out, src, data)
        return out
    header, rows = read_csv(csv_path, ("video_id",))
    if not isinstance(src.split, str):
        raise UserError(
            f"params.yaml: ingest source '{src.name}': with a csv, split must be one of train/val/test"
        )
    if "sentence" in header:
        _from_jsfusion(out, src, data, header, rows)
    elif data is None:
        raise UserError(
            f"params.yaml: ingest source '{src.name}': {src.display(csv_path)} lists videos only; "
            "add `file: <MSRVTT_data.json>` for their captions"
        )
    else:
        _from_list(out, src, data, header, rows)
    return out


def _caption(out: Parsed, src: Source, data: _Data, vid: str, split: str, i: int, sent: Any) -> None:
    entry = f"sentences[{i}] (video '{vid}')"
    try:
        checks.no_duplicate_keys(sent)
        text = checks.text(checks.key(sent, "caption"), "caption")
        sen_id = checks.ident(checks.key(sent, "sen_id"), "sen_id")
    except Bad as bad:
        out.problem(data.file, entry, bad)
        return
    out.add(Caption(f"{src.name}/{sen_id}", vid, split, text, data.file), data.file, entry)


def _from_json(out: Parsed, src: Source, data: _Data) -> None:
    for vid, sents in data.sentences.items():
        bad = data.unknown(vid)
        if bad is not None:
            for i, _ in sents:
                out.problem(data.file, f"sentences[{i}]", bad)
            continue
        split = src.split_for(data.video_split[vid])
        if split is None:
            out.not_selected += len(sents)
            continue
        out.video(vid)
        for i, sent in sents:
            _caption(out, src, data, vid, split, i, sent)


def _from_list(out: Parsed, src: Source, data: _Data, header: list[str], rows: list) -> None:
    file = src.display(src.path("csv"))
    col = header.index("video_id")
    seen: dict[str, str] = {}
    listed: set[str] = set()
    for lineno, fields in rows:
        try:
            vid = checks.ident(fields[col] if col < len(fields) else None, "video_id")
        except Bad as bad:
            out.problem(file, f"line {lineno}", bad)
            continue
        entry = f"line {lineno} (video '{vid}')"
        try:
            checks.unique(seen, vid, f"line {lineno}", "video_id")
        except Bad as bad:
            out.problem(file, entry, bad, dropped=0)  # its captions are already read through the first line
            continue
        listed.add(vid)
        bad = data.unknown(vid)
        if bad is not None:
            out.problem(file, entry, bad, dropped=max(1, len(data.sentences.get(vid, ()))))
            continue
        out.video(vid)
        for i, sent in data.sentences.get(vid, ()):
            _caption(out, src, data, vid, src.split, i, sent)
    out.not_selected += sum(len(s) for v, s in data.sentences.items() if v not in listed)


def _from_jsfusion(out: Parsed, src: Source, data: _Data | None, header: list[str], rows: list) -> None:
    file = src.display(src.path("csv"))
    col = {name: header.index(name) for name in ("key", "video_id", "sentence") if name in header}
    if "key" not in col:
        raise UserError(
            f"{file}: CSV header lacks column key (JSFUSION layout: key,vid_key,video_id,sentence)"
        )
    seen: dict[str, str] = {}
    for lineno, fields in rows:
        entry = f"line {lineno}"
        try:
            if len(fields) != len(header):
                raise Bad("row", f"row has {len(fields)} fields, the header has {len(header)}")
            vid = checks.ident(fields[col["video_id"]], "video_id")
            entry = f"line {lineno} (video '{vid}')"
            checks.unique(seen, vid, f"line {lineno}", "video_id")
            if data is not None and (bad := data.unknown(vid)) is not None:
                raise bad
            key = checks.ident(fields[col["key"]], "key")
            text = checks.text(fields[col["sentence"]], "sentence")
        except Bad as bad:
            out.problem(file, entry, bad)
            continue
        out.video(vid)
        out.add(Caption(f"{src.name}/{key}", vid, src.split, text, file), file, entry)
