"""Charades-STA grounding lines + the Charades metadata csv → `Query` rows.

`charades_sta_{train,test}.txt`, one query per line (`AO8RW 0.0 6.9##a person is putting a book on a shelf.`):
split on the first `##`, then the left part on whitespace into video id, start and end (seconds).
Durations come from the `length` column of `Charades_v1_{train,test}.csv`, whose header is
`id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length`.
"""

from __future__ import annotations

from vidmem.common import UserError
from vidmem.formats import checks
from vidmem.formats.base import Bad, Parsed, Source
from vidmem.formats.readers import read_csv, read_lines
from vidmem.manifest import Query


def read_lengths(out: Parsed, src: Source) -> tuple[dict[str, float], dict[str, str]]:
    """Video id → length (s) from the Charades csv, and id → why its row is unusable."""
    path = src.path("csv")
    file = src.display(path)
    header, rows = read_csv(path, ("id", "length"))
    col_id, col_len = header.index("id"), header.index("length")
    lengths: dict[str, float] = {}
    broken: dict[str, str] = {}
    seen: dict[str, str] = {}
    for lineno, fields in rows:
        entry = f"line {lineno}"
        vid = None
        try:
            if len(fields) != len(header):
                raise Bad("row", f"row has {len(fields)} fields, the header has {len(header)}")
            vid = checks.ident(fields[col_id], "id")
            checks.unique(seen, vid, entry, "id")
            lengths[vid] = checks.duration(fields[col_len], "length")
        except Bad as bad:
            out.problem(file, entry + (f" (video '{vid}')" if vid else ""), bad, dropped=0)
            if vid:
                broken[vid] = f"its row in {file} is unusable ({bad.reason})"
                lengths.pop(vid, None)
    return lengths, broken


def parse_charades_sta(src: Source) -> Parsed:
    out = Parsed(src)
    if not isinstance(src.split, str):
        raise UserError(f"params.yaml: ingest source '{src.name}': split must be one of train/val/test")
    lengths, broken = read_lengths(out, src)
    csv_file = src.display(src.path("csv"))
    path = src.path("file")
    file = src.display(path)
    per_video: dict[str, int] = {}
    for lineno, line in read_lines(path):
        entry = f"line {lineno}"
        try:
            if "##" not in line:
                raise Bad("line", "expected '<video> <start> <end>##<sentence>' (no '##')")
            left, sentence = line.split("##", 1)
            parts = left.split()
            if len(parts) != 3:
                raise Bad("line", f"expected '<video> <start> <end>' before '##', got {left.strip()!r}")
            vid = checks.ident(parts[0], "video id")
            entry = f"line {lineno} (video '{vid}')"
            if vid in broken:
                raise Bad("video id", f"video '{vid}': {broken[vid]}")
            if vid not in lengths:
                raise Bad("video id", f"unknown video id '{vid}': no row in {csv_file}")
            duration = lengths[vid]
            start, end = checks.span(parts[1], parts[2], duration, src.time_tolerance, "times")
            text = checks.text(sentence, "sentence")
        except Bad as bad:
            out.problem(file, entry, bad)
            continue
        out.video(vid, duration)
        k = per_video.get(vid, 0)
        per_video[vid] = k + 1
        out.add(
            Query(f"{src.name}/{vid}/{k}", vid, src.split, start, end, text, None, None, file), file, entry
        )
    return out
