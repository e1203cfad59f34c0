"""Ego4D-HCap hierarchical captions (Video ReCap `datasets.md`) → `HierarchyText` rows at three levels.

- clips (`clips_{split}.pkl`): a list of tuples (vid, start_sec, end_sec, clip_caption);
- segments (`segments_{split}.pkl`): a list of dicts with `vid`, `start_sec`, `end_sec`,
  `segment_description`,
  `captions_gt` / `captions_pred` (lists of [vid, start, end, caption]: the clip level again, not read here)
  and, in the released files, a `sid`;
- summaries (`videos_{split}.json`; `datasets.md` says .pkl but the scripts read JSON): a list of dicts with
  `vid`, `start_sec`, `end_sec`, `video_summary`, `segment_descriptions`, `segment_descriptions_pred`.
- pseudo-labels (`segments_train_pseudo.pkl`, `videos_train_pseudo.json`: the LLM-written descriptions and
  summaries the paper adds to training), the same layouts → the `hierarchy_pseudo` table, train split only.
Times are seconds from the start of the full video. The same video may carry several summaries (different
spans), so repeated `vid`s are expected; a repeated (vid, start, end) at one level is not.
The files give no video duration: `ingest` probes the video and checks every span against it.
"""

from __future__ import annotations

from typing import Any

from vidmem.common import UserError
from vidmem.formats import checks
from vidmem.formats.base import Bad, Parsed, Source
from vidmem.formats.readers import load_json, load_pickle
from vidmem.manifest import HierarchyText, PseudoText

# params key → (level, text key in each dict (None: a 4-tuple), row type)
LEVEL_FILES = {
    "clips": ("clip", None, HierarchyText),
    "segments": ("segment", "segment_description", HierarchyText),
    "summaries": ("video", "video_summary", HierarchyText),
    "segments_pseudo": ("segment", "segment_description", PseudoText),
    "summaries_pseudo": ("video", "video_summary", PseudoText),
}


def parse_ego4d_hcap(src: Source) -> Parsed:
    out = Parsed(src)
    if not isinstance(src.split, str):
        raise UserError(f"params.yaml: ingest source '{src.name}': split must be one of train/val/test")
    if not any(src.optional(key) for key in LEVEL_FILES):
        raise UserError(
            f"params.yaml: ingest source '{src.name}': ego4d_hcap needs at least one of "
            + ", ".join(f"`{k}`" for k in LEVEL_FILES)
        )
    for key, (level, text_key, row_type) in LEVEL_FILES.items():
        path = src.optional(key)
        if path is None:
            continue
        if row_type is PseudoText and src.split != "train":
            raise UserError(f"params.yaml: ingest source '{src.name}': `{key}` is training text; give it on the "
                            f"train source (this one is split {src.split})")
        file = src.display(path)
        data = load_json(path) if path.suffix == ".json" else load_pickle(path)
        if not isinstance(data, list):
            raise UserError(f"{file}: expected a list of {level} entries, got {type(data).__name__}")
        seen: dict[str, str] = {}
        for i, item in enumerate(data):
            entry = f"entry {i}"
            try:
                vid, start, end, text, local = _entry(item, text_key, i)
                entry = f"entry {i} (video '{vid}')"
                checks.unique(
                    seen, f"{vid} {start:g}-{end:g}", f"entry {i}", "start_sec/end_sec", f"{level} span"
                )
                start, end = checks.span(start, end, None, src.time_tolerance, "start_sec/end_sec")
            except Bad as bad:
                out.problem(file, entry, bad)
                continue
            out.video(vid)
            kind = level if row_type is HierarchyText else f"{level}_pseudo"
            row = row_type(f"{src.name}/{kind}/{local}", vid, src.split, level, start, end, text, file)
            out.add(row, file, entry)
    return out


def _entry(item: Any, text_key: str | None, i: int) -> tuple[str, float, float, str, str]:
    """(vid, start, end, text, local id) of one clip tuple or segment / summary dict."""
    if text_key is None:
        if not isinstance(item, (list, tuple)) or len(item) != 4:
            raise Bad("clip", "expected a (vid, start_sec, end_sec, clip_caption) tuple")
        vid = checks.ident(item[0], "vid")
        start = checks.number(item[1], "start_sec")
        end = checks.number(item[2], "end_sec")
        return vid, start, end, checks.text(item[3], "clip_caption"), str(i)
    checks.mapping(item, f"entry {i}")
    checks.no_duplicate_keys(item)
    vid = checks.ident(checks.key(item, "vid"), "vid")
    start = checks.number(checks.key(item, "start_sec"), "start_sec")
    end = checks.number(checks.key(item, "end_sec"), "end_sec")
    text = checks.text(checks.key(item, text_key), text_key)
    local = checks.ident(item["sid"], "sid") if item.get("sid") is not None else str(i)
    return vid, start, end, text, local
