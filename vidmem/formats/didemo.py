"""DiDeMo (LocalizingMoments) → a `Caption` (retrieval) and a `Query` (grounding) per description.

`{train,val,test}_data.json`: a list of
    {"annotation_id": 1, "description": "someone kicks the bug towards some rocks.",
     "video": "26292851@N04_4253489686_265c3c8051.m4v", "times": [[4, 4], [4, 4], [0, 0], ...],
     "num_segments": 6, "dl_link": "..."}
`times` holds one [start chunk, end chunk] per annotator; chunk k covers seconds [5k, 5k+5), and the last
chunk ends at the video's end (it is shorter than 5 s when the video is). `{split}_list.txt` names the
split's videos.

The query's moment is the chunk pair most annotators chose (ties: the first given); retrieval models
concatenate a video's captions into one paragraph, as CLIP4Clip does.
"""

from __future__ import annotations

from collections import Counter

from vidmem.common import UserError
from vidmem.formats import checks
from vidmem.formats.base import Bad, Parsed, Source
from vidmem.formats.readers import load_json, read_lines
from vidmem.manifest import Caption, Query

CHUNK = 5.0  # seconds per DiDeMo chunk


def parse_didemo(src: Source) -> Parsed:
    out = Parsed(src)
    if not isinstance(src.split, str):
        raise UserError(f"params.yaml: ingest source '{src.name}': split must be one of train/val/test")
    list_path = src.path("list")
    list_file = src.display(list_path)
    listed: dict[str, str] = {}
    for lineno, line in read_lines(list_path):
        try:
            checks.unique(listed, checks.ident(line, "video"), f"line {lineno}", "video")
        except Bad as bad:
            out.problem(list_file, f"line {lineno}", bad, dropped=0)
    path = src.path("file")
    file = src.display(path)
    data = load_json(path)
    if not isinstance(data, list):
        raise UserError(f"{file}: expected a JSON list of DiDeMo descriptions")
    seen: dict[str, str] = {}
    for i, item in enumerate(data):
        entry = f"entry {i}"
        try:
            checks.mapping(item, entry)
            checks.no_duplicate_keys(item)
            ann_id = checks.ident(checks.key(item, "annotation_id"), "annotation_id")
            entry = f"entry {i} (annotation {ann_id})"
            checks.unique(seen, ann_id, f"entry {i}", "annotation_id", "annotation id")
            vid = checks.ident(checks.key(item, "video"), "video")
            if vid not in listed:
                raise Bad("video", f"unknown video id '{vid}': not in {list_file}")
            text = checks.text(checks.key(item, "description"), "description")
            first, last = _moment(item)
        except Bad as bad:
            out.problem(file, entry, bad, dropped=2)
            continue
        out.video(vid)
        qid = f"{src.name}/{ann_id}"
        out.add(Caption(qid, vid, src.split, text, file), file, entry)
        query = Query(qid, vid, src.split, first * CHUNK, (last + 1) * CHUNK, text, None, None, file)
        out.add(query, file, entry, end_slack=CHUNK)
    return out


def _moment(item: dict) -> tuple[int, int]:
    """The chunk pair most annotators chose, after checking every pair."""
    times = checks.seq(checks.key(item, "times"), "times")
    if not times:
        raise Bad("times", "times is empty")
    n = checks.integer(item["num_segments"], "num_segments") if item.get("num_segments") is not None else None
    pairs = []
    for k, t in enumerate(times):
        a, b = checks.pair(t, f"times[{k}]")
        a, b = checks.integer(a, f"times[{k}] start chunk"), checks.integer(b, f"times[{k}] end chunk")
        if a < 0 or a > b:
            raise Bad("times", f"times[{k}] = [{a}, {b}] is not a chunk range (0 <= start <= end)")
        if n is not None and b >= n:
            raise Bad("times", f"times[{k}] = [{a}, {b}] ends past num_segments {n}")
        pairs.append((a, b))
    counts = Counter(pairs)
    best = max(counts.values())
    return next(p for p in pairs if counts[p] == best)
