"""SynthVid annotations in the real public formats, exactly as the datasets ship them.

Layout under `annotations/` (the contract with `ingest`):
  activitynet/{train,val,val_1,val_2}.json     ActivityNet Captions (val_1/val_2: test videos, two annotators)
  charades_sta/charades_sta_{split}.txt        "<vid> <start> <end>##<sentence>"
  charades_sta/Charades_v1_{split}.csv         Charades metadata (real header; `length` = duration)
  mmn/{split}.json                             MMN grounding JSON
  activitynet_speech/{split}.json              MMN JSON + "audios" (WAVs in audio/)
  msrvtt/MSRVTT_data.json, MSRVTT_train.csv, MSRVTT_JSFUSION_{val,test}.csv
  ego4d_hcap/{clips,segments}_{split}.pkl, videos_{split}.json,
                                               segments_train_pseudo.pkl, videos_train_pseudo.json
  msrvtt_qa/{split}.jsonl, train_ans2label.json
Files are written in a fixed order with fixed formatting, so equal inputs give equal bytes.
"""
from __future__ import annotations

import csv
import io
import json
import pickle
from collections.abc import Iterable
from pathlib import Path

from vidmem.common import write_bytes, write_text
from vidmem.synth.annotate import VideoText
from vidmem.synth.config import EVENT_KINDS, SPLITS
from vidmem.synth.palette import BACKGROUNDS
from vidmem.synth.scene import VideoSpec

Item = tuple[VideoSpec, VideoText]
MSRVTT_SPLIT = {"train": "train", "val": "validate", "test": "test"}
CHARADES_HEADER = ["id", "subject", "scene", "quality", "relevance", "verified", "script", "objects",
                   "descriptions", "actions", "length"]
PICKLE_PROTOCOL = 4


def audio_name(video_id: str, split: str, k: int) -> str:
    return f"{video_id}_{split}_{k}.wav"


def _t(x: float) -> float:
    """Times as plain Python floats, rounded (pickles must hold builtins only)."""
    return round(float(x), 3)


def _json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, ensure_ascii=False) + "\n")


def _csv(path: Path, header: list[str], rows: Iterable[list]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    write_text(path, buf.getvalue())


def _pickle(path: Path, obj) -> None:
    write_bytes(path, pickle.dumps(obj, protocol=PICKLE_PROTOCOL))


def _split(items: list[Item], split: str) -> list[Item]:
    return [(s, t) for s, t in items if s.split == split]


def _grounding(items: list[Item], sentences, audios: bool = False) -> dict:
    out = {}
    for spec, text in items:
        if not spec.events:
            continue
        entry = {
            "duration": _t(spec.duration),
            "timestamps": [[_t(e.start), _t(e.end)] for e in spec.events],
            "sentences": sentences(text),
        }
        if audios:
            entry["audios"] = [audio_name(spec.video_id, spec.split, k) for k in range(len(spec.events))]
        out[spec.video_id] = entry
    return out


# ---------------------------------------------------------------------------------------------------- writers
def write_activitynet(root: Path, short: list[Item]) -> None:
    d = root / "activitynet"
    _json(d / "train.json", _grounding(_split(short, "train"), lambda t: t.captions[0]))
    _json(d / "val.json", _grounding(_split(short, "val"), lambda t: t.captions[0]))
    for a in (0, 1):
        _json(d / f"val_{a + 1}.json", _grounding(_split(short, "test"), lambda t, a=a: t.captions[a]))


def write_charades(root: Path, short: list[Item]) -> None:
    d = root / "charades_sta"
    for split in SPLITS:
        items = _split(short, split)
        lines = [
            f"{spec.video_id} {e.start:.1f} {e.end:.1f}##{q}"
            for spec, text in items
            for e, q in zip(spec.events, text.queries, strict=True)
        ]
        write_text(d / f"charades_sta_{split}.txt", "".join(line + "\n" for line in lines))
        rows = []
        for spec, text in items:
            actions = ";".join(
                f"c{EVENT_KINDS.index(e.kind):03d} {e.start:.2f} {e.end:.2f}" for e in spec.events
            )
            rows.append([
                spec.video_id, "SYN", spec.background, 7, 7, "Yes", text.retrieval[0],
                ";".join(o.shape for o in spec.objects), text.retrieval[-1], actions, f"{spec.duration:.2f}",
            ])
        _csv(d / f"Charades_v1_{split}.csv", CHARADES_HEADER, rows)


def write_mmn(root: Path, short: list[Item]) -> None:
    for split in SPLITS:
        items = _split(short, split)
        _json(root / "mmn" / f"{split}.json", _grounding(items, lambda t: t.queries))
        speech = _grounding(items, lambda t: t.queries, audios=True)
        _json(root / "activitynet_speech" / f"{split}.json", speech)


def write_msrvtt(root: Path, short: list[Item]) -> None:
    d = root / "msrvtt"
    videos, sentences = [], []
    for i, (spec, text) in enumerate(short):
        videos.append({
            "category": list(BACKGROUNDS).index(spec.background), "url": f"videos/{spec.video_id}.mp4",
            "video_id": spec.video_id, "start time": 0.0, "end time": _t(spec.duration),
            "split": MSRVTT_SPLIT[spec.split], "id": i,
        })
        for c in text.retrieval:
            sentences.append({"caption": c, "video_id": spec.video_id, "sen_id": len(sentences)})
    info = {"year": "2016", "version": "synthvid-1", "description": "SynthVid in the MSR-VTT 10K layout",
            "contributor": "vidmem synth stage", "data_created": "1970-01-01 00:00:00"}
    _json(d / "MSRVTT_data.json", {"info": info, "videos": videos, "sentences": sentences})
    _csv(d / "MSRVTT_train.csv", ["video_id"], [[s.video_id] for s, _ in _split(short, "train")])
    ids = {spec.video_id: i for i, (spec, _) in enumerate(short)}
    for split in ("val", "test"):
        rows = [[f"ret{k}", f"msr{ids[s.video_id]}", s.video_id, t.retrieval[0]]
                for k, (s, t) in enumerate(_split(short, split))]
        _csv(d / f"MSRVTT_JSFUSION_{split}.csv", ["key", "vid_key", "video_id", "sentence"], rows)


def write_ego4d_hcap(root: Path, long: list[Item]) -> None:
    d = root / "ego4d_hcap"
    for split in SPLITS:
        clips, segments, pseudo, videos, pseudo_videos = [], [], [], [], []
        for spec, text in _split(long, split):
            vid = spec.video_id
            clips += [(vid, _t(s), _t(e), c) for s, e, c in text.clips]
            segments += [_segment(text, vid, f"{vid}_{k}", s, e, desc) for k, (s, e, desc) in enumerate(text.segments)]
            pseudo += [_segment(text, vid, f"{vid}_p{k}", s, e, desc) for k, (s, e, desc) in enumerate(text.segments_pseudo)]
            videos.append(_summary(text, vid, 0.0, spec.duration, text.summary))
            pseudo_videos += [_summary(text, vid, s, e, summ) for s, e, summ in text.summaries_pseudo]
        _pickle(d / f"clips_{split}.pkl", clips)
        _pickle(d / f"segments_{split}.pkl", segments)
        if split == "train":        # the released pseudo-labels are train-only too
            _pickle(d / "segments_train_pseudo.pkl", pseudo)
            _json(d / "videos_train_pseudo.json", pseudo_videos)
        _json(d / f"videos_{split}.json", videos)


def _summary(text: VideoText, vid: str, s: float, e: float, summ: str) -> dict:
    """One videos_*.json entry: the summary of [s, e) and the reference / "predicted" segment descriptions
    inside it."""
    inside = [k for k, (a, _, _) in enumerate(text.segments) if s <= a < e]
    return {
        "vid": vid, "start_sec": _t(s), "end_sec": _t(e), "video_summary": summ,
        "segment_descriptions": [text.segments[k][2] for k in inside],
        "segment_descriptions_pred": [text.segments_pred[k] for k in inside],
    }


def _segment(text: VideoText, vid: str, sid: str, s: float, e: float, desc: str) -> dict:
    """One segments_*.pkl entry: its description and the reference / "predicted" clip captions inside it."""
    inside = [(a, b, c) for a, b, c in text.clips if s <= a < e]
    inside_pred = [(a, b, c) for a, b, c in text.clips_pred if s <= a < e]
    return {
        "vid": vid, "sid": sid, "start_sec": _t(s), "end_sec": _t(e), "segment_description": desc,
        "captions_gt": [[vid, _t(a), _t(b), c] for a, b, c in inside],
        "captions_pred": [[vid, _t(a), _t(b), c] for a, b, c in inside_pred],
    }


def write_msrvtt_qa(root: Path, short: list[Item], answers: list[str]) -> None:
    d = root / "msrvtt_qa"
    for split in SPLITS:
        lines = [
            json.dumps({"answer": q["answer"], "question": q["question"], "video_id": spec.video_id,
                        "answer_type": q["answer_type"]}, ensure_ascii=False)
            for spec, text in _split(short, split)
            for q in text.qa
        ]
        write_text(d / f"{split}.jsonl", "".join(line + "\n" for line in lines))
    _json(d / "train_ans2label.json", {a: i for i, a in enumerate(answers)})


def write_annotations(root: Path, items: list[Item], answers: list[str]) -> None:
    """Every annotation file of the layout above, under root/annotations."""
    root = Path(root) / "annotations"
    short = [(s, t) for s, t in items if not s.long]
    long = [(s, t) for s, t in items if s.long]
    write_activitynet(root, short)
    write_charades(root, short)
    write_mmn(root, short)
    write_msrvtt(root, short)
    write_ego4d_hcap(root, long)
    write_msrvtt_qa(root, short, answers)
