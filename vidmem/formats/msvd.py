"""MSVD retrieval annotations (CLIP4Clip / EMCL layout) → `Caption` rows.

`{train,val,test}_list.txt`: one video id per line (`-4wsuPCjDBc_5_15`), videos `<id>.avi`.
`raw-captions.pkl`: a dict from video id to a list of captions, each a list of tokens (joined with spaces).
The pickle holds every split; a source takes the videos of its list.
"""

from __future__ import annotations

from vidmem.common import UserError
from vidmem.formats import checks
from vidmem.formats.base import Bad, Parsed, Source
from vidmem.formats.readers import load_pickle, read_lines
from vidmem.manifest import Caption


def parse_msvd(src: Source) -> Parsed:
    out = Parsed(src)
    if not isinstance(src.split, str):
        raise UserError(f"params.yaml: ingest source '{src.name}': split must be one of train/val/test")
    captions_path = src.path("captions")
    captions_file = src.display(captions_path)
    captions = load_pickle(captions_path)
    if not isinstance(captions, dict):
        raise UserError(
            f"{captions_file}: expected a dict from video id to token lists, got {type(captions).__name__}"
        )
    list_path = src.path("list")
    file = src.display(list_path)
    seen: dict[str, str] = {}
    for lineno, line in read_lines(list_path):
        try:
            vid = checks.ident(line, "video id")
        except Bad as bad:
            out.problem(file, f"line {lineno}", bad)
            continue
        try:
            checks.unique(seen, vid, f"line {lineno}", "video id")
        except Bad as bad:
            out.problem(file, f"line {lineno} (video '{vid}')", bad, dropped=0)
            continue
        if vid not in captions:
            bad = Bad("video id", f"unknown video id '{vid}': no captions in {captions_file}")
            out.problem(file, f"line {lineno} (video '{vid}')", bad)
            continue
        try:
            caps = checks.seq(captions[vid], f"captions of '{vid}'")
        except Bad as bad:
            out.problem(captions_file, f"video '{vid}'", bad)
            continue
        out.video(vid)
        for k, cap in enumerate(caps):
            entry = f"video '{vid}' caption {k}"
            try:
                if isinstance(cap, (list, tuple)):
                    for j, token in enumerate(cap):
                        checks.text(token, f"caption {k} token {j}")
                    cap = " ".join(t.strip() for t in cap)
                text = checks.text(cap, f"caption {k}")
            except Bad as bad:
                out.problem(captions_file, entry, bad)
                continue
            out.add(
                Caption(f"{src.name}/{vid}/{k}", vid, src.split, text, captions_file), captions_file, entry
            )
    return out
