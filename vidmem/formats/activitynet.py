"""Dense-captioning annotations: ActivityNet Captions JSON and YouCook2 JSON → `Event` rows.

ActivityNet Captions (as PDVC and CM2 ship it, `data/anet/captiondata/{train,val_1,val_2}.json`):
    {"v_abc": {"duration": 82.73, "timestamps": [[0.83, 19.86], ...], "sentences": ["...", ...]}, ...}
`timestamps` and `sentences` are parallel lists (optional extra keys such as `action_labels` are ignored).
val_1 and val_2 hold the same videos captioned by two annotators; a source lists both files and the i-th
file's events get `annotator = i`, so evaluators can score against each reference, as the official tool does.

YouCook2 (`youcookii_annotations_trainval.json`):
    {"database": {"GLd3aX16zBg": {"duration": 241.62, "subset": "training", "recipe_type": "113",
        "annotations": [{"segment": [90, 102], "id": 0, "sentence": "spread margarine on ..."}, ...],
        "video_url": "..."}}}
`subset` picks the split through the source's split mapping (default training→train, validation→val).
PDVC's converted YouCook2 files are in the ActivityNet form and are read with `activitynet_captions`.
"""

from __future__ import annotations

from typing import Any

from vidmem.common import UserError
from vidmem.formats import checks
from vidmem.formats.base import Bad, Parsed, Source
from vidmem.formats.readers import load_json
from vidmem.manifest import Event


def parse_activitynet(src: Source) -> Parsed:
    out = Parsed(src)
    files = src.paths["files"]
    assert isinstance(files, list)
    split = src.split if isinstance(src.split, str) else None
    if split is None:
        raise UserError(f"params.yaml: ingest source '{src.name}': split must be one of train/val/test")
    for annotator, path in enumerate(files):
        file = src.display(path)
        data = load_json(path)
        for vid, item in checks.video_entries(out, data, file, checks.event_rows):
            try:
                checks.mapping(item, f"video '{vid}'")
                checks.no_duplicate_keys(item)
                duration = checks.duration(checks.key(item, "duration"))
                stamps = checks.seq(checks.key(item, "timestamps"), "timestamps")
                sentences = checks.seq(checks.key(item, "sentences"), "sentences")
                if len(stamps) != len(sentences):
                    raise Bad("sentences", f"{len(sentences)} sentences for {len(stamps)} timestamps")
            except Bad as bad:
                out.problem(file, f"video '{vid}'", bad, checks.event_rows(item))
                continue
            out.video(vid, duration)
            for i, (stamp, sentence) in enumerate(zip(stamps, sentences, strict=True)):
                entry = f"video '{vid}' event {i}"
                try:
                    start, end = checks.span(
                        *checks.pair(stamp, f"timestamps[{i}]"),
                        duration,
                        src.time_tolerance,
                        f"timestamps[{i}]",
                    )
                    text = checks.text(sentence, f"sentences[{i}]")
                except Bad as bad:
                    out.problem(file, entry, bad)
                    continue
                out.add(Event(vid, split, start, end, text, annotator, file), file, entry)
    return out


YOUCOOK2_SPLITS = {"training": "train", "validation": "val", "testing": "test"}


def parse_youcook2(src: Source) -> Parsed:
    out = Parsed(src)
    path = src.path("file")
    file = src.display(path)
    data = load_json(path)
    if not isinstance(data, dict) or "database" not in data:
        raise UserError(f"{file}: expected a YouCook2 JSON object with a 'database' key")
    database = data["database"]
    for vid, item in checks.video_entries(out, database, file, lambda v: checks.count_list(v, "annotations")):
        try:
            checks.mapping(item, f"video '{vid}'")
            checks.no_duplicate_keys(item)
            subset = checks.text(checks.key(item, "subset"), "subset")
            split = src.split_for(subset)
            if split is None:
                out.not_selected += checks.count_list(item, "annotations")
                continue
            duration = checks.duration(checks.key(item, "duration"))
            annotations = checks.seq(checks.key(item, "annotations"), "annotations")
        except Bad as bad:
            out.problem(file, f"video '{vid}'", bad, checks.count_list(item, "annotations"))
            continue
        out.video(vid, duration)
        for i, ann in enumerate(annotations):
            entry = f"video '{vid}' annotation {i}"
            try:
                _event(out, ann, vid, split, duration, src.time_tolerance, file, entry)
            except Bad as bad:
                out.problem(file, entry, bad)
    return out


def _event(
    out: Parsed, ann: Any, vid: str, split: str, duration: float, tol: float, file: str, entry: str
) -> None:
    checks.mapping(ann, "annotation")
    checks.no_duplicate_keys(ann)
    start, end = checks.span(*checks.pair(checks.key(ann, "segment"), "segment"), duration, tol, "segment")
    text = checks.text(checks.key(ann, "sentence"), "sentence")
    out.add(Event(vid, split, start, end, text, 0, file), file, entry)
