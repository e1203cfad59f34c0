"""SynthVid: determinism, the public file formats, the text, the speech, and that frames show the events.

A tiny dataset (160x120, 8-10 s short videos, two ~30-s long ones) is rendered twice: once by the stage
(`python -m stages.synth` in a temp dir with its own params.yaml, 2 worker processes) and once in-process
with 1 worker. The two must agree to the byte.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pickle
import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml

from vidmem.common import UserError
from vidmem.params import read
from vidmem.synth import SynthConfig, build, generate
from vidmem.synth.annotate import pseudo_summary_spans, pseudo_windows
from vidmem.synth.grammar import contains_marker, heldout_markers
from vidmem.synth.motion import Timeline
from vidmem.synth.shapes import EXTENT

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "seed": 3,
    "out": "data/raw/synth",
    "workers": 2,
    "video": {"size": [160, 120], "portrait_prob": 0.25, "fps": 8},
    "short": {"count": {"train": 6, "val": 2, "test": 3}, "duration": [8, 10], "events": [3, 5]},
    "long": {"count": {"train": 1, "val": 0, "test": 1}, "duration": [24, 30], "segment_sec": 12},
    "events": {"duration": [2.5, 4]},
    "text": {"heldout_prob": 0.5},
}
TRAIN_VAL_FILES = [
    "activitynet/train.json", "activitynet/val.json", "charades_sta/charades_sta_train.txt",
    "charades_sta/charades_sta_val.txt", "charades_sta/Charades_v1_train.csv",
    "charades_sta/Charades_v1_val.csv",
    "mmn/train.json", "mmn/val.json", "activitynet_speech/train.json", "activitynet_speech/val.json",
    "msrvtt/MSRVTT_JSFUSION_val.csv", "ego4d_hcap/videos_train.json", "ego4d_hcap/videos_val.json",
    "msrvtt_qa/train.jsonl", "msrvtt_qa/val.jsonl",
]


class BuiltinsOnly(pickle.Unpickler):
    """The pickles must hold plain builtins only (ingest reads them with a restricted unpickler)."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name} in a SynthVid pickle")


def load_pickle(path: Path):
    with path.open("rb") as f:
        return BuiltinsOnly(f).load()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(stage output dir, in-process output dir, metrics) of two renders of TINY."""
    work = tmp_path_factory.mktemp("stage")
    (work / "params.yaml").write_text(yaml.safe_dump({"synth": TINY}))
    env = dict(os.environ, PYTHONPATH=str(REPO), VIDMEM_LOG="WARNING")
    r = subprocess.run([sys.executable, "-m", "stages.synth"], cwd=work, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((work / "metrics/synth.json").read_text())
    again = tmp_path_factory.mktemp("inproc") / "synth"
    generate(read(SynthConfig, TINY, "synth"), again, workers=1)
    return work / "data/raw/synth", again, metrics


@pytest.fixture(scope="module")
def ds():
    return build(read(SynthConfig, TINY, "synth"))


def files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def decode(path: Path) -> np.ndarray:
    import decord

    vr = decord.VideoReader(str(path))
    return vr.get_batch(list(range(len(vr)))).asnumpy()


# ---------------------------------------------------------------------------------------------- determinism
def test_two_runs_are_byte_identical(runs):
    a, b, _ = runs
    fa, fb = files(a), files(b)
    assert fa.keys() == fb.keys()
    differ = [k for k in fa if fa[k].read_bytes() != fb[k].read_bytes()]
    assert not differ, f"differ between runs: {differ[:5]}"


def test_decoded_frames_repeat_and_match_the_spec(runs, ds):
    a, b, _ = runs
    spec = ds.items[0][0]
    fa, fb = decode(a / f"videos/{spec.video_id}.mp4"), decode(b / f"videos/{spec.video_id}.mp4")
    assert np.array_equal(fa, fb)
    assert fa.shape == (spec.n_frames, spec.height, spec.width, 3)


def test_metrics(runs, ds):
    _, _, m = runs
    assert m["train"]["videos_short"] == 6 and m["test"]["videos_long"] == 1
    train_short = [s for s, _ in ds.items if s.split == "train" and not s.long]
    assert m["train"]["events"] == sum(len(s.events) for s in train_short)
    assert m["test"]["clip_captions"] > 0 and m["test"]["summaries"] == 1
    assert 50 < m["vocab_size"] < 400
    assert m["total_seconds"] == pytest.approx(sum(s.duration for s, _ in ds.items), abs=1e-3)


# ---------------------------------------------------------------------------------------------------- formats
def test_activitynet_captions(runs, ds):
    root = runs[0] / "annotations/activitynet"
    short = {s.video_id: s for s, _ in ds.items if not s.long}
    for name, split in (("train", "train"), ("val", "val"), ("val_1", "test"), ("val_2", "test")):
        data = json.loads((root / f"{name}.json").read_text())
        assert set(data) == {v for v, s in short.items() if s.split == split and s.events}
        for vid, entry in data.items():
            assert set(entry) == {"duration", "timestamps", "sentences"}
            assert len(entry["timestamps"]) == len(entry["sentences"]) == len(short[vid].events)
            assert all(isinstance(x, str) and x.endswith(".") for x in entry["sentences"])
    v1 = json.loads((root / "val_1.json").read_text())
    v2 = json.loads((root / "val_2.json").read_text())
    assert {k: e["timestamps"] for k, e in v1.items()} == {k: e["timestamps"] for k, e in v2.items()}
    assert all(a != b for k in v1 for a, b in zip(v1[k]["sentences"], v2[k]["sentences"]))


def test_grounding_formats(runs):
    root = runs[0] / "annotations"
    line = re.compile(r"^(syn_s\d{5}) (\d+\.\d) (\d+\.\d)##([a-z].*\.)$")
    for split in ("train", "val", "test"):
        lines = (root / f"charades_sta/charades_sta_{split}.txt").read_text().splitlines()
        parsed = [line.match(x) for x in lines]
        assert lines and all(parsed), [x for x, p in zip(lines, parsed) if not p][:3]
        with (root / f"charades_sta/Charades_v1_{split}.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["id", "subject", "scene", "quality", "relevance", "verified", "script",
                                 "objects", "descriptions", "actions", "length"]
        length = {r["id"]: float(r["length"]) for r in rows}
        mmn = json.loads((root / f"mmn/{split}.json").read_text())
        speech = json.loads((root / f"activitynet_speech/{split}.json").read_text())
        by_vid: dict[str, list] = {}
        for m in parsed:
            by_vid.setdefault(m[1], []).append([float(m[2]), float(m[3])])
        assert by_vid.keys() == mmn.keys() == speech.keys() <= length.keys()
        for vid, entry in mmn.items():
            assert set(entry) == {"duration", "timestamps", "sentences"}
            assert entry["timestamps"] == by_vid[vid]
            assert entry["duration"] == pytest.approx(length[vid], abs=0.01)
            s = speech[vid]
            assert set(s) == {"duration", "timestamps", "sentences", "audios"}
            assert s["sentences"] == entry["sentences"] and s["timestamps"] == entry["timestamps"]
            assert s["audios"] == [f"{vid}_{split}_{k}.wav" for k in range(len(entry["sentences"]))]
            assert all((runs[0] / "audio" / w).is_file() for w in s["audios"])


def test_msrvtt_formats(runs, ds):
    root = runs[0] / "annotations/msrvtt"
    data = json.loads((root / "MSRVTT_data.json").read_text())
    assert set(data) == {"info", "videos", "sentences"}
    assert set(data["info"]) == {"year", "version", "description", "contributor", "data_created"}
    for v in data["videos"]:
        assert list(v) == ["category", "url", "video_id", "start time", "end time", "split", "id"]
        assert v["split"] in ("train", "validate", "test")
    for s in data["sentences"]:
        assert list(s) == ["caption", "video_id", "sen_id"]
    assert [s["sen_id"] for s in data["sentences"]] == list(range(len(data["sentences"])))
    per_video = {v["video_id"]: 0 for v in data["videos"]}
    for s in data["sentences"]:
        per_video[s["video_id"]] += 1
    assert set(per_video.values()) == {read(SynthConfig, TINY, "synth").text.captions_per_video}
    train = list(csv.DictReader((root / "MSRVTT_train.csv").open(newline="")))
    assert list(train[0]) == ["video_id"]
    assert {r["video_id"] for r in train} == {v["video_id"] for v in data["videos"] if v["split"] == "train"}
    for split, name in (("val", "validate"), ("test", "test")):
        rows = list(csv.DictReader((root / f"MSRVTT_JSFUSION_{split}.csv").open(newline="")))
        assert list(rows[0]) == ["key", "vid_key", "video_id", "sentence"]
        assert [r["video_id"] for r in rows] == [v["video_id"] for v in data["videos"] if v["split"] == name]


def test_ego4d_hcap_formats(runs, ds):
    root = runs[0] / "annotations/ego4d_hcap"
    long = {s.video_id: s for s, _ in ds.items if s.long}
    for split in ("train", "val", "test"):
        clips = load_pickle(root / f"clips_{split}.pkl")
        segments = load_pickle(root / f"segments_{split}.pkl")
        videos = json.loads((root / f"videos_{split}.json").read_text())
        assert {v["vid"] for v in videos} == {k for k, s in long.items() if s.split == split}
        for vid, s, e, cap in clips:
            assert isinstance(cap, str) and cap and s % 4 == 0 and 0 < e - s <= 4
            assert e <= long[vid].duration
        for seg in segments:
            assert set(seg) == {"vid", "sid", "start_sec", "end_sec", "segment_description", "captions_gt",
                                "captions_pred"}
            assert all(len(c) == 4 and c[0] == seg["vid"] for c in seg["captions_gt"] + seg["captions_pred"])
            assert all(seg["start_sec"] <= c[1] < seg["end_sec"] for c in seg["captions_gt"])
        for v in videos:
            assert set(v) == {"vid", "start_sec", "end_sec", "video_summary", "segment_descriptions",
                              "segment_descriptions_pred"}
            n = math.ceil(long[v["vid"]].duration / 12)
            assert len(v["segment_descriptions"]) == len(v["segment_descriptions_pred"]) == n
            assert sum(1 for c in clips if c[0] == v["vid"]) == math.ceil(long[v["vid"]].duration / 4)


def test_pseudo_segments_file(runs, ds):
    """segments_train_pseudo.pkl: the train videos' shifted grids (TINY: 12 s segments, 5 grids → shifts 2 … 10 s),
    in the segments_*.pkl layout, each description naming exactly the events whose midpoint lies inside."""
    root = runs[0] / "annotations/ego4d_hcap"
    assert sorted(p.name for p in root.glob("*pseudo*")) == ["segments_train_pseudo.pkl", "videos_train_pseudo.json"]
    pseudo = load_pickle(root / "segments_train_pseudo.pkl")
    long = {s.video_id: (s, t) for s, t in ds.items if s.long}
    train = sorted(v for v, (s, _) in long.items() if s.split == "train")
    assert sorted({p["vid"] for p in pseudo}) == train
    for vid in train:
        spec, text = long[vid]
        mine = [p for p in pseudo if p["vid"] == vid]
        assert [(p["start_sec"], p["end_sec"]) for p in mine] == pseudo_windows(spec.duration, 12, (2.0, 4.0, 6.0, 8.0, 10.0))
        assert [(p["start_sec"], p["end_sec"], p["segment_description"]) for p in mine] == text.segments_pseudo
        assert len({p["sid"] for p in mine}) == len(mine)
        for p in mine:
            assert set(p) == {"vid", "sid", "start_sec", "end_sec", "segment_description", "captions_gt",
                              "captions_pred"}
            assert [c[1:] for c in p["captions_gt"]] == [
                [a, b, c] for a, b, c in text.clips if p["start_sec"] <= a < p["end_sec"]]
            inside = [e for e in spec.events if p["start_sec"] <= (e.start + e.end) / 2 < p["end_sec"]]
            sentences = p["segment_description"].count(".")
            assert sentences == (len({e.obj for e in inside}) or 1)
            assert p["segment_description"].count(" and then ") == sum(
                1 for o in {e.obj for e in inside} if sum(e.obj == o for e in inside) > 1)


def test_pseudo_summaries_file(runs, ds):
    """videos_train_pseudo.json: a summary of every run of >= 2 consecutive segments short of the whole train
    video, in the videos_*.json layout, naming each shape's activities inside the span only."""
    root = runs[0] / "annotations/ego4d_hcap"
    pseudo = json.loads((root / "videos_train_pseudo.json").read_text())
    long = {s.video_id: (s, t) for s, t in ds.items if s.long and s.split == "train"}
    assert {p["vid"] for p in pseudo} <= set(long)
    for vid, (spec, text) in long.items():
        mine = [p for p in pseudo if p["vid"] == vid]
        assert [(p["start_sec"], p["end_sec"]) for p in mine] == pseudo_summary_spans(spec.duration, 12)
        assert [(p["start_sec"], p["end_sec"], p["video_summary"]) for p in mine] == text.summaries_pseudo
        for p in mine:
            assert set(p) == {"vid", "start_sec", "end_sec", "video_summary", "segment_descriptions",
                              "segment_descriptions_pred"}
            assert p["segment_descriptions"] == [d for a, _, d in text.segments if p["start_sec"] <= a < p["end_sec"]]
            assert len(p["segment_descriptions_pred"]) == len(p["segment_descriptions"]) >= 2
            movers = {e.obj for e in spec.events if e.kind != "still"
                      and p["start_sec"] <= (e.start + e.end) / 2 < p["end_sec"]}
            assert p["video_summary"].count(".") == 1 + len(movers)   # the opening + one per active shape


def test_pseudo_windows_hand_worked():
    assert pseudo_windows(75, 30, (10.0, 20.0)) == [
        (0.0, 10.0), (10.0, 40.0), (40.0, 70.0), (70.0, 75.0), (0.0, 20.0), (20.0, 50.0), (50.0, 75.0)]
    assert pseudo_windows(15, 30, (10.0, 20.0)) == [(0.0, 10.0), (10.0, 15.0)]   # a shift past the end: no grid
    assert pseudo_windows(75, 30, ()) == []
    assert pseudo_summary_spans(100, 30) == [(0.0, 60.0), (30.0, 90.0), (60.0, 100.0), (0.0, 90.0), (30.0, 100.0)]
    assert pseudo_summary_spans(60, 30) == []          # two segments: the only run is the whole video
    assert read(SynthConfig, {**TINY, "long": {**TINY["long"], "pseudo_grids": 5}}, "synth").long.pseudo_shifts \
        == (2.0, 4.0, 6.0, 8.0, 10.0)


def test_pseudo_labels_leave_the_rest_of_the_text_unchanged(ds):
    """The pseudo-labels draw from their own random stream: every other text (and scene) is the same without
    them, so turning them on or off changes nothing but segments_train_pseudo.pkl."""
    none = build(read(SynthConfig, {**TINY, "long": {**TINY["long"], "pseudo_grids": 0, "pseudo_summaries": False}},
                      "synth"))
    assert [s for s, _ in none.items] == [s for s, _ in ds.items]
    for (_, a), (spec, b) in zip(none.items, ds.items, strict=True):
        assert not a.segments_pseudo and not a.summaries_pseudo
        assert bool(b.segments_pseudo) == (spec.long and spec.split == "train")
        b = dataclasses.replace(b, segments_pseudo=[], summaries_pseudo=[])
        assert a == b


def test_qa_answers_in_closed_set(runs):
    root = runs[0] / "annotations/msrvtt_qa"
    ans2label = json.loads((root / "train_ans2label.json").read_text())
    assert sorted(ans2label.values()) == list(range(len(ans2label)))
    types = set()
    for split in ("train", "val", "test"):
        rows = [json.loads(x) for x in (root / f"{split}.jsonl").read_text().splitlines()]
        assert rows
        for r in rows:
            assert list(r) == ["answer", "question", "video_id", "answer_type"]
            assert r["answer"] in ans2label, r
            assert r["question"].endswith("?")
            types.add(r["answer_type"])
    assert types <= {"what", "how", "where"} and "what" in types


# ---------------------------------------------------------------------------------------------------- content
def test_events_inside_videos(runs, ds):
    import decord

    for spec, _ in ds.items:
        for e in spec.events:
            assert 0 <= e.start < e.end <= spec.duration, (spec.video_id, e)
        vr = decord.VideoReader(str(runs[0] / f"videos/{spec.video_id}.mp4"))
        assert len(vr) == spec.n_frames and vr[0].shape == (spec.height, spec.width, 3)
    assert any(s.height > s.width for s, _ in ds.items), "some videos are portrait"


def test_events_overlap_across_objects(ds):
    def overlapping(spec):
        return any(a.obj != b.obj and a.start < b.end and b.start < a.end
                   for i, a in enumerate(spec.events) for b in spec.events[i + 1:])

    assert sum(overlapping(s) for s, _ in ds.items if not s.long) >= 3
    for spec, _ in ds.items:  # one object does one thing at a time
        for o in range(len(spec.objects)):
            evs = spec.object_events(o)
            assert all(a.end <= b.start for a, b in zip(evs, evs[1:]))


def test_heldout_phrasings_only_in_test(runs):
    root = runs[0] / "annotations"
    markers = heldout_markers()
    seen = []
    for name in TRAIN_VAL_FILES:
        for line in (root / name).read_text().splitlines():
            hit = contains_marker(line, markers)
            assert hit is None, f"{name}: held-out phrase '{hit}' in {line[:120]}"
    data = json.loads((root / "msrvtt/MSRVTT_data.json").read_text())
    split = {v["video_id"]: v["split"] for v in data["videos"]}
    for s in data["sentences"]:
        hit = contains_marker(s["caption"], markers)
        assert hit is None or split[s["video_id"]] == "test", s
    for name in ("clips_train.pkl", "segments_train.pkl", "segments_train_pseudo.pkl"):
        assert contains_marker(repr(load_pickle(root / "ego4d_hcap" / name)), markers) is None
    assert contains_marker((root / "ego4d_hcap/videos_train_pseudo.json").read_text(), markers) is None
    test_files = ("activitynet/val_1.json", "mmn/test.json", "ego4d_hcap/videos_test.json",
                  "msrvtt_qa/test.jsonl")
    for name in test_files:
        seen += [m for m in markers if contains_marker((root / name).read_text(), [m])]
    assert len(set(seen)) >= 5, "the test split uses held-out phrasings"


def test_speech_wavs(runs, ds):
    n = 0
    for spec, text in ds.items:
        for k, _ in enumerate(text.queries):
            with wave.open(str(runs[0] / f"audio/{spec.video_id}_{spec.split}_{k}.wav")) as w:
                assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
                x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
            assert len(x) > 0.4 * 16000
            assert np.sqrt(np.mean(x**2)) > 300, "speech is not silent"
            n += 1
    assert n == len(list((runs[0] / "audio").iterdir())) > 0
    assert len({v for _, t in ds.items for v in t.voices}) >= 3, "several voices"


def _mask(frame: np.ndarray, rgb) -> np.ndarray:
    d = np.linalg.norm(frame.astype(np.float64) - np.asarray(rgb, dtype=np.float64), axis=-1)
    return d < 60


def _clear_of_others(spec, tl: Timeline, obj: int, t: float) -> bool:
    me = tl.look(obj, t)
    for o in range(len(spec.objects)):
        other = tl.look(o, t)
        if o == obj or other.alpha <= 0:
            continue
        reach = EXTENT[spec.objects[o].shape] * other.radius + EXTENT[spec.objects[obj].shape] * me.radius + 3
        if abs(me.x - other.x) < reach and abs(me.y - other.y) < reach:
            return False
    return True


def test_frames_show_the_events(runs, ds):
    """Measure each event in the decoded frames: centroids move, areas grow/shrink, colours change, fades."""
    checked: dict[str, int] = {}
    for spec, _ in ds.items:
        if spec.long:
            continue
        frames = decode(runs[0] / f"videos/{spec.video_id}.mp4")
        tl = Timeline(spec)
        for e in spec.events:
            if e.kind in ("spin", "bounce", "still"):
                continue
            t1, t2 = e.start + 0.1 * e.duration, min(e.end, spec.duration - 1 / spec.fps)
            if e.kind in ("appear", "disappear", "recolour"):
                t1 = e.start
            i1, i2 = (min(int(round(t * spec.fps)), spec.n_frames - 1) for t in (t1, t2))
            t1, t2 = i1 / spec.fps, i2 / spec.fps
            if not (_clear_of_others(spec, tl, e.obj, t1) and _clear_of_others(spec, tl, e.obj, t2)):
                continue
            a, b = tl.look(e.obj, t1), tl.look(e.obj, t2)
            m1 = _mask(frames[i1], a.rgb if e.kind != "appear" else b.rgb)
            m2 = _mask(frames[i2], b.rgb)
            where = f"{spec.video_id} {e.kind} {e.start}-{e.end}"
            if e.kind.startswith("move_"):
                assert m1.sum() > 10 and m2.sum() > 10, where
                ys1, xs1 = np.nonzero(m1)
                ys2, xs2 = np.nonzero(m2)
                moved = np.array([xs2.mean() - xs1.mean(), ys2.mean() - ys1.mean()])
                expect = np.array([b.x - a.x, b.y - a.y])
                assert np.dot(moved, expect) / np.dot(expect, expect) > 0.6, (where, moved, expect)
            elif e.kind in ("grow", "shrink"):
                ratio = m2.sum() / max(m1.sum(), 1)
                assert (ratio > 1.4) if e.kind == "grow" else (ratio < 0.7), (where, ratio)
            elif e.kind == "recolour":
                assert m2.sum() > 10 and _mask(frames[i2], a.rgb).sum() < 0.2 * m2.sum(), where
                assert _mask(frames[i1], b.rgb).sum() < 0.2 * m2.sum(), where
            elif e.kind in ("appear", "disappear"):
                big, small = (m2.sum(), m1.sum()) if e.kind == "appear" else (m1.sum(), m2.sum())
                assert big > 10 and small < 0.2 * big, (where, big, small)
            checked[e.kind] = checked.get(e.kind, 0) + 1
    assert sum(checked.values()) >= 10, checked
    assert sum(v for k, v in checked.items() if k.startswith("move_")) >= 2, checked
    assert len(checked) >= 4, checked


# ---------------------------------------------------------------------------------------------------- params
@pytest.mark.parametrize("patch, message", [
    ({"video": {"size": [161, 120]}}, "params.yaml synth.video.size: must be even"),
    ({"scene": {"shapes": ["circle", "blob"]}}, "params.yaml synth.scene.shapes: unknown name 'blob'"),
    ({"short": {"count": {"train": -1}}}, "synth.short.count.train: must be a non-negative integer"),
    ({"short": {"duration": [30, 10]}}, "synth.short.duration: must be a [min, max] pair with min <= max"),
    ({"colour": "red"}, "params.yaml synth.colour: unknown key; valid keys: events, long"),
    ({"text": {"heldout_prob": 2}}, "params.yaml synth.text.heldout_prob: must be in [0, 1], got 2"),
    ({"video": {"preset": "quick"}}, "params.yaml synth.video.preset: must be one of ultrafast"),
    ({"video": {"fps": "x"}}, "params.yaml synth.video.fps: expected an integer, got 'x'"),
    ({"events": {"duration": [8, 12]}}, "synth.short.duration starts at 8.0 s, shorter than one event"),
])
def test_bad_params_name_the_key(patch, message):
    with pytest.raises(UserError, match=re.escape(message)):
        read(SynthConfig, {**TINY, **patch}, "synth")


def test_stage_reports_bad_params_in_one_line(tmp_path):
    bad = {**TINY, "speech": {"voices": ["xx-nope"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"synth": bad}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "stages.synth"], cwd=tmp_path, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: params.yaml: synth.speech.voices: espeak-ng")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "data/raw/synth").exists(), "nothing half-written"


@pytest.mark.slow
def test_hour_long_video_streams(tmp_path):
    """The long-video preset: one 60-minute video, rendered with bounded memory."""
    params = {**TINY, "short": {"count": {"train": 0, "val": 0, "test": 0}},
              "long": {"count": {"train": 0, "val": 0, "test": 1}, "duration": [3600, 3600]},
              "video": {"size": [320, 240], "fps": 8}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"synth": params}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code = ("import resource, runpy, sys; sys.argv=['stages.synth'];"
            "runpy.run_module('stages.synth', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import resource

    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert peak_mb < 1500, peak_mb
    video = tmp_path / "data/raw/synth/videos/syn_l0000.mp4"
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                          str(video)], capture_output=True, text=True)
    assert float(out.stdout) == pytest.approx(3600, abs=0.2)
    videos = json.loads((tmp_path / "data/raw/synth/annotations/ego4d_hcap/videos_test.json").read_text())
    assert len(videos) == 1 and len(videos[0]["segment_descriptions"]) == 60
