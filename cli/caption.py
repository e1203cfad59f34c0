"""`vidmem caption PATH…`: dense captions (CM2) of every video, and the ReCap hierarchy of the long ones.

Per run, in OUT (default ./vidmem-captions):
    captions.json     ActivityNet Captions result format ({version, results: {video id: [{timestamp,
                      sentence, proposal_score}]}, external_data}), as `python -m metrics.dense` reads it
    hierarchy.json    Ego4D-HCap-style levels of the long videos: clips (vid, start, end, caption),
                      segments ({vid, start_sec, end_sec, segment_description, captions_pred}), videos
                      ({vid, start_sec, end_sec, video_summary, segment_descriptions_pred})
    videos.json       video id → source file and duration, every file that failed with its reason, and the
                      wall time and peak memory of each step (compress, extract_clip, extract_lavila, dense,
                      hierarchy)
    index.html        one self-contained page: a timeline of each video's events, its hierarchy
    index/            the work index (cli.index): a rerun on the same files reuses its compressed videos and
                      features and processes only new or changed files
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from cli.html import caption_page
from cli.index import IndexedFeatures, describe_failures, update_index
from cli.progress import bar
from cli.project import Project, relative, with_data
from vidmem.common import UserError, read_json, write_json, write_text

log = logging.getLogger("vidmem.cli")

LEVEL_KEYS = ("recap_clip", "recap_segment", "recap_video")
LEVEL_OF = {"recap_clip": "clip", "recap_segment": "segment", "recap_video": "video"}
DEFAULT_HIERARCHY_FROM = 180.0  # s: the ReCap hierarchy for videos of at least 3 minutes


def dense_captions(
    project: Project, index: Path, catalog, vids: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """CM2's predictions for `vids` through the dense task's own predict (the evaluate stage's path)."""
    from models.dense.data import DenseCaptionDataset, VideoAnnotation
    from vidmem.bank import load_bank
    from vidmem.formats.vocab import Vocab

    vocab_file = project.vocab_file()
    vocab = Vocab.from_json(read_json(vocab_file), str(vocab_file))
    task, ckpt = project.task("cm2")
    if task.config.retrieval and task.config.retrieval_query != "frames":
        raise UserError(f"params.yaml train.cm2.retrieval_query: vidmem caption retrieves with the frame "
                        f"features only, not {task.config.retrieval_query!r}; train cm2 with "
                        "retrieval_query: frames")
    bank = load_bank(project.bank_path()).to(task.device) if task.config.retrieval else None
    feats = IndexedFeatures(index, catalog, "clip")
    ds = DenseCaptionDataset(
        [VideoAnnotation(v, float(catalog.videos[v]["duration"])) for v in vids],
        feats,
        vocab,
        task.config.max_words,
        task.config.resample_len,
        where="vidmem caption",
    )
    task = with_data(task, datasets={"own": ds}, bank=bank)
    model = task.restore(ckpt)
    results = task.predict(model, "own")
    return {v: sorted(results.get(v, []), key=lambda e: (e["timestamp"][0], e["timestamp"][1])) for v in vids}


def hierarchy(project: Project, index: Path, catalog, vids: list[str]) -> dict[str, list[Any]]:
    """ReCap's recursion on each long video: clip captions every clip_sec → segment descriptions → summary,
    each level's model reading the level below's captions (as the captions@<level> stages do)."""
    from models.recap.data import hcap_entries
    from models.recap.task import RecapData
    from vidmem.formats.vocab import Vocab

    out: dict[str, list[Any]] = {"clips": [], "segments": [], "videos": []}
    if not vids:
        return out
    vocab_file = project.vocab_file()
    vocab = Vocab.from_json(read_json(vocab_file), str(vocab_file))
    lavila = IndexedFeatures(index, catalog, "lavila")
    clip = IndexedFeatures(index, catalog, "clip")
    levels = []
    for key in LEVEL_KEYS:
        task, ckpt = project.task(key)
        levels.append((key, task, ckpt))
    models: dict[str, Any] = {}
    for vid in bar(vids, desc="hierarchy", unit="video"):
        data = RecapData(
            {vid: ("own", float(catalog.videos[vid]["duration"]))},
            [],
            {
                vid: (
                    np.asarray(lavila.get(vid), np.float32),
                    np.asarray(lavila.get(vid, "times"), np.float64),
                )
            },
            vocab,
            {vid: (np.asarray(clip.get(vid), np.float32), np.asarray(clip.get(vid, "times"), np.float64))},
        )
        lower: list = []
        for key, task, ckpt in levels:
            t = with_data(task, data=data)
            if key not in models:
                models[key] = t.restore(ckpt)
            level = LEVEL_OF[key]
            caps = t.caption_videos(models[key], level, [vid], {vid: lower})[vid]
            inputs = (
                [[c for c in lower if s - 1e-6 <= c[0] < e - 1e-6] for s, e, _ in caps] if lower else None
            )
            out[{"clip": "clips", "segment": "segments", "video": "videos"}[level]] += [
                list(e) if isinstance(e, tuple) else e for e in hcap_entries(level, vid, caps, inputs)
            ]
            lower = caps
    return out


def run(args) -> int:
    project = Project.open(args.project, overrides=vars(args))
    out = Path(args.out)
    threshold = None if args.no_hierarchy else float(args.hierarchy_from)
    # every checkpoint the run needs, before any work: a missing one is one line naming its command
    project.clip_checkpoint()
    project.require("cm2")
    project.vocab_file()
    levels = LEVEL_KEYS if threshold is not None else ()
    for key in levels:
        project.require(key)
    for key in ("cm2", *levels):
        project.task(key)  # loads and checks it (kept for the run)

    def kinds(duration: float) -> tuple[str, ...]:
        return ("clip", "lavila") if threshold is not None and duration >= threshold else ("clip",)

    index = out / "index"
    res = update_index(index, args.paths, project, kinds_of=kinds, prune=True, exclude=[out])
    catalog = res.catalog
    vids = list(catalog.videos)
    long_vids = [v for v in vids if "lavila" in catalog.videos[v]["stores"]]
    steps = res.steps
    with steps("dense"):
        results = dense_captions(project, index, catalog, vids) if vids else {}
    with steps("hierarchy"):
        levels = hierarchy(project, index, catalog, long_vids)

    from metrics.dense import write_predictions

    write_predictions(
        out / "captions.json",
        results,
        external_data={"used": True, "details": "vidmem caption: CM2 on tuned-CLIP frame features"},
    )
    write_json(out / "hierarchy.json", levels)
    videos = {
        v: {
            "path": e["input"]["path"],
            "duration": e["duration"],
            "events": len(results.get(v, [])),
            "hierarchy": v in long_vids,
        }
        for v, e in catalog.videos.items()
    }
    write_json(out / "videos.json", {"videos": videos, "failed": res.failed, "seconds": steps.seconds,
                                      "peak_rss_mb": {**steps.peak_rss_mb, "run": steps.run_peak()}})
    write_text(out / "index.html", caption_page(videos, results, levels, res.failed))
    print(summary(videos, results, levels, res.failed, out))
    return 1 if not vids else 0


def summary(
    videos: dict[str, dict],
    results: dict[str, list],
    levels: dict[str, list],
    failed: dict[str, str],
    out: Path,
) -> str:
    lines = [f"captioned {len(videos)} video(s)" + (f", {len(failed)} failed" if failed else "")]
    summaries = {e["vid"]: e["video_summary"] for e in levels.get("videos", [])}
    for vid, v in videos.items():
        lines.append(f"\n{Path(v['path']).name}  ({v['duration']:.1f} s, {v['events']} events)")
        if vid in summaries:
            lines.append(f"  summary: {summaries[vid]}")
        for e in results.get(vid, [])[:8]:
            s, t = e["timestamp"]
            lines.append(f"  {s:7.1f}–{t:7.1f} s  {e['sentence']}")
        if len(results.get(vid, [])) > 8:
            lines.append(f"  … {len(results[vid]) - 8} more in captions.json")
    if failed:
        lines.append("\nnot captioned:")
        lines += list(describe_failures(failed))
    lines.append(
        f"\nwrote {relative(out / 'captions.json')}, {relative(out / 'hierarchy.json')}, "
        f"{relative(out / 'index.html')}"
    )
    return "\n".join(lines)
