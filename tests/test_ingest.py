"""The `ingest` stage end to end: `python -m stages.ingest` in a temp dir with its own params.yaml, over
a root holding the hand-written fixtures of every format (tests/fixtures/) and their videos.

Videos: where the annotation gives the duration, only existence matters and the file is an empty placeholder;
where it does not (MSR-VTT, MSVD, DiDeMo, Ego4D-HCap, MSRVTT-QA) the duration is probed, so the file is a tiny
real video made here with ffmpeg (`testsrc`, 2 s; DiDeMo needs 28 s, a 1-fps colour clip). WAVs of spoken
queries are empty placeholders (only their existence is checked).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vidmem.formats.assemble import ingest
from vidmem.formats.registry import TABLES
from vidmem.manifest import Manifest

REPO = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures"

PLACEHOLDER_VIDEOS = [
    "v_QOlSCBRmfWY.mp4",
    "v_ehGHCYKzyZ8.mp4",
    "v_uqiMw7tQ1Cc.mp4",
    "GLd3aX16zBg.webm",
    "9GX8f5EwwE4.mp4",
    "AO8RW.mp4",
    "Y6R7T.mp4",
    "3MSZA.mp4",
    "AKO6M.mp4",
    "v_bXdq2zI1Ms0.mp4",
    "s30-d52.avi",
]
SHORT_VIDEOS = [
    "video0.mp4",
    "video1.mp4",
    "video6513.mp4",
    "video9770.mp4",
    "-4wsuPCjDBc_5_15.avi",
    "-7KMZQEsJW4_205_208.avi",
    "a3f1e2c4-0b9d-4f6e-8a7b-1c2d3e4f5a6b.mp4",
]
# DiDeMo ids carry their original extension; the second is found re-encoded as .mp4
LONG_VIDEOS = ["26292851@N04_4253489686_265c3c8051.m4v", "47704451@N00_5409063464_ccb1be6a7c.mp4"]
WAVS = ["bXdq2zI1Ms0_train_1.wav", "bXdq2zI1Ms0_train_2.wav"]

A = "annotations"
SOURCES = [
    {"format": "activitynet_captions", "split": "train", "files": [f"{A}/activitynet/train.json"]},
    {
        "format": "activitynet_captions",
        "split": "test",
        "files": [f"{A}/activitynet/val_1.json", f"{A}/activitynet/val_2.json"],
    },
    {"format": "youcook2", "file": f"{A}/youcook2/youcookii_annotations_trainval.json"},
    {
        "format": "charades_sta",
        "split": "train",
        "file": f"{A}/charades_sta/charades_sta_train.txt",
        "csv": f"{A}/charades_sta/Charades_v1_train.csv",
    },
    {"format": "mmn", "split": "train", "file": f"{A}/mmn/train.json"},
    {
        "format": "activitynet_speech",
        "split": "train",
        "file": f"{A}/activitynet_speech/train.json",
        "audio": "audio",
    },
    {"format": "tacos", "split": "train", "file": f"{A}/tacos/train.json"},
    {
        "format": "msrvtt",
        "split": "train",
        "file": f"{A}/msrvtt/MSRVTT_data.json",
        "csv": f"{A}/msrvtt/MSRVTT_train.9k.csv",
    },
    {
        "format": "msrvtt",
        "split": "test",
        "file": f"{A}/msrvtt/MSRVTT_data.json",
        "csv": f"{A}/msrvtt/MSRVTT_JSFUSION_test.csv",
    },
    {
        "format": "msvd",
        "split": "train",
        "list": f"{A}/msvd/train_list.txt",
        "captions": f"{A}/msvd/raw-captions.pkl",
    },
    {
        "format": "didemo",
        "split": "train",
        "file": f"{A}/didemo/train_data.json",
        "list": f"{A}/didemo/train_list.txt",
    },
    {
        "format": "ego4d_hcap",
        "split": "train",
        "clips": f"{A}/ego4d_hcap/clips_train.pkl",
        "summaries": f"{A}/ego4d_hcap/videos_train.json",
    },
    {
        "format": "msrvtt_qa",
        "split": "train",
        "file": f"{A}/msrvtt_qa/train.jsonl",
        "answers": f"{A}/msrvtt_qa/train_ans2label.json",
    },
    {
        "format": "msrvtt_qa",
        "split": "test",
        "file": f"{A}/msrvtt_qa/test.jsonl",
        "answers": f"{A}/msrvtt_qa/train_ans2label.json",
    },
]
EGO_VID = "a3f1e2c4-0b9d-4f6e-8a7b-1c2d3e4f5a6b"
# input entries (manifest rows they make) per source, counted by hand in the fixtures; DiDeMo: caption + query
INPUT_ENTRIES = {
    "activitynet_captions:train": 5,
    "activitynet_captions:test": 5,
    "youcook2:youcookii_annotations_trainval": 3,
    "charades_sta:train": 3,
    "mmn:train": 4,
    "activitynet_speech:train": 2,
    "tacos:train": 2,
    "msrvtt:train": 3,
    "msrvtt:test": 1,
    "msvd:train": 2,
    "didemo:train": 6,
    "ego4d_hcap:train": 3,
    "msrvtt_qa:train": 2,
    "msrvtt_qa:test": 1,
}


@pytest.fixture(scope="session")
def clips(tmp_path_factory, ffmpeg_bin: str) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    made = {"short": d / "short.mp4", "long": d / "long.mp4"}
    for name, src in (
        ("short", "testsrc=duration=2:size=64x48:rate=5"),
        ("long", "color=c=blue:s=32x32:r=1:d=28"),
    ):
        subprocess.run(
            [
                ffmpeg_bin,
                "-v",
                "error",
                "-nostdin",
                "-y",
                "-f",
                "lavfi",
                "-i",
                src,
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                str(made[name]),
            ],
            check=True,
        )
    return made


@pytest.fixture
def project(tmp_path: Path, clips: dict[str, Path]) -> Path:
    """tmp_path/{params.yaml, raw/{annotations,videos,audio}}: the stage runs with tmp_path as its cwd."""
    return build_project(tmp_path, clips)


def build_project(tmp_path: Path, clips: dict[str, Path]) -> Path:
    root = tmp_path / "raw"
    shutil.copytree(FIX, root / A)
    (root / A / "msvd/raw-captions.pkl").write_bytes(
        pickle.dumps(
            {
                "-4wsuPCjDBc_5_15": [["a", "squirrel", "is", "eating", "a", "peanut"]],
                "-7KMZQEsJW4_205_208": [["a", "woman", "is", "slicing", "a", "tomato"]],
            }
        )
    )
    (root / A / "ego4d_hcap/clips_train.pkl").write_bytes(
        pickle.dumps(
            [(EGO_VID, 0.0, 0.8, "#C C opens the fridge"), (EGO_VID, 0.8, 2.3, "#C C takes out the bread")]
        )
    )
    videos, audio = root / "videos", root / "audio"
    videos.mkdir()
    audio.mkdir()
    for name in PLACEHOLDER_VIDEOS:
        (videos / name).touch()
    for name in SHORT_VIDEOS:
        shutil.copy(clips["short"], videos / name)
    for name in LONG_VIDEOS:
        shutil.copy(clips["long"], videos / name)
    for name in WAVS:
        (audio / name).touch()
    write_params(tmp_path, on_error="fail")
    return tmp_path


def write_params(project: Path, sources: list[dict] | None = None, **ingest_keys) -> None:
    cfg = {
        "root": "raw",
        "on_error": "fail",
        "time_tolerance": 1.0,
        "probe_workers": 2,
        "vocab": {"tables": ["events", "captions", "hierarchy"], "max_words": 30, "min_count": 1},
        "sources": [dict(s, videos="videos") for s in (sources or SOURCES)],
    } | ingest_keys
    (project / "params.yaml").write_text(yaml.safe_dump({"ingest": cfg}, sort_keys=False))


def run_stage(project: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), VIDMEM_LOG="WARNING")
    return subprocess.run(
        [sys.executable, "-m", "stages.ingest"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def error_line(res: subprocess.CompletedProcess) -> str:
    """The stage must fail with exit status 2 and exactly one line on stderr."""
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


# ---------------------------------------------------------------------------------------------- happy path
def test_stage_writes_manifest_report_and_metrics(project: Path):
    res = run_stage(project)
    assert res.returncode == 0, res.stderr
    m = Manifest.read(project / "data/manifest")
    metrics = json.loads((project / "metrics/ingest.json").read_text())
    report = json.loads((project / "data/manifest/report.json").read_text())
    assert metrics["events"] == {"train": 7, "val": 1, "test": 5, "total": 13}  # ANet 5 + YC2 2 train
    assert metrics["queries"] == {"train": 14, "val": 0, "test": 0, "total": 14}  # 3+4+2+2 + DiDeMo 3
    assert metrics["captions"] == {"train": 8, "val": 0, "test": 1, "total": 9}  # MSR-VTT 3, MSVD 2, DiDeMo 3
    assert metrics["hierarchy"] == {"train": 3, "val": 0, "test": 0, "total": 3}
    assert metrics["qa"] == {"train": 2, "val": 0, "test": 1, "total": 3}
    assert metrics["videos"] == 20 and metrics["skipped"] == 0 and metrics["dropped_rows"] == 0
    assert metrics["vocab_size"] == len(m.vocab["word_to_ix"]) > 20
    assert report["skipped"] == [] and report["videos"]["probed"] == 9
    assert {s["name"]: s["kept"] for s in report["sources"]} == INPUT_ENTRIES
    videos = m.video_index()
    # durations: from the annotation when given, else probed from the real file
    assert videos["v_QOlSCBRmfWY"].duration == 82.73
    assert videos["GLd3aX16zBg"].path == "raw/videos/GLd3aX16zBg.webm"
    assert videos["s30-d52.avi"].path == "raw/videos/s30-d52.avi"
    assert videos["video0"].duration == pytest.approx(2.0, abs=0.05)
    didemo = "47704451@N00_5409063464_ccb1be6a7c.mov"
    assert videos[didemo].path == "raw/videos/47704451@N00_5409063464_ccb1be6a7c.mp4"
    assert videos[didemo].duration == pytest.approx(28.0, abs=0.05)
    # DiDeMo's last chunk [25, 30) ends with the 28-s video; an Ego4D clip ending at 2.3 s is clamped to 2 s
    q = {r.query_id: r for r in m.queries}
    assert q["didemo:train/2"].end == pytest.approx(28.0, abs=0.05)
    assert [round(h.end, 1) for h in m.hierarchy] == [0.8, 2.0, 1.6]
    speech = [r for r in m.queries if r.audio]
    assert [r.audio for r in speech] == [f"raw/audio/{w}" for w in WAVS]
    answers = json.loads((project / "data/manifest/answers.json").read_text())
    assert answers == {"couch": 0, "car": 1, "dance": 2}
    # a second run gives byte-identical outputs
    before = {p.name: p.read_bytes() for p in (project / "data/manifest").iterdir()}
    assert run_stage(project).returncode == 0
    assert {p.name: p.read_bytes() for p in (project / "data/manifest").iterdir()} == before


# ---------------------------------------------------------------------------------------------- errors
def _break_anet_event(p: Path) -> None:
    edit_json(
        p / "raw/annotations/activitynet/train.json",
        lambda d: d["v_ehGHCYKzyZ8"]["timestamps"].__setitem__(1, [40.0, 30.0]),
    )


def _missing_video(p: Path) -> None:
    (p / "raw/videos/AO8RW.mp4").unlink()


def _missing_audio(p: Path) -> None:
    (p / "raw/audio/bXdq2zI1Ms0_train_2.wav").unlink()


def _unknown_msrvtt_video(p: Path) -> None:
    edit_json(
        p / "raw/annotations/msrvtt/MSRVTT_data.json",
        lambda d: d.__setitem__("videos", [v for v in d["videos"] if v["video_id"] != "video1"]),
    )


def _bad_utf8(p: Path) -> None:
    path = p / "raw/annotations/mmn/train.json"
    path.write_bytes(path.read_bytes().replace(b"turn a light", b"turn a \xff light"))


def _empty_sentence(p: Path) -> None:
    edit_json(
        p / "raw/annotations/youcook2/youcookii_annotations_trainval.json",
        lambda d: d["database"]["GLd3aX16zBg"]["annotations"][1].__setitem__("sentence", "  "),
    )


def _past_duration(p: Path) -> None:
    edit_json(
        p / "raw/annotations/tacos/train.json", lambda d: d["s30-d52.avi"]["timestamps"].append([7000, 9000])
    )
    edit_json(p / "raw/annotations/tacos/train.json", lambda d: d["s30-d52.avi"]["sentences"].append("late"))


def _undecodable_video(p: Path) -> None:
    (p / "raw/videos/video6513.mp4").write_bytes(b"not a video at all")


def _malformed_json(p: Path) -> None:
    (p / "raw/annotations/didemo/train_data.json").write_text('[{"video": "x",', encoding="utf-8")


@pytest.mark.parametrize(
    "breaker, expected",
    [
        (
            _break_anet_event,
            "raw/annotations/activitynet/train.json: video 'v_ehGHCYKzyZ8' event 1: start 40 > end 30",
        ),
        (
            _missing_video,
            "raw/annotations/charades_sta/charades_sta_train.txt: video 'AO8RW': video file not found: "
            "raw/videos/AO8RW.{mp4,webm,mkv,avi,mov,m4v,mpg,mpeg,3gp,flv,wmv,ogv}",
        ),
        (
            _missing_audio,
            "raw/annotations/activitynet_speech/train.json: video 'v_bXdq2zI1Ms0' sentence 1: "
            "audio file not found: raw/audio/bXdq2zI1Ms0_train_2.wav",
        ),
        (
            _unknown_msrvtt_video,
            "raw/annotations/msrvtt/MSRVTT_train.9k.csv: line 3 (video 'video1'): unknown video id "
            "'video1': not in the videos list of raw/annotations/msrvtt/MSRVTT_data.json",
        ),
        (
            _bad_utf8,
            "raw/annotations/mmn/train.json: video '3MSZA' sentence 0: sentences[0] is not valid UTF-8 "
            "(byte 0xff)",
        ),
        (
            _empty_sentence,
            "raw/annotations/youcook2/youcookii_annotations_trainval.json: video 'GLd3aX16zBg' "
            "annotation 1: sentence is empty",
        ),
        (
            _past_duration,
            "raw/annotations/tacos/train.json: video 's30-d52.avi' sentence 2: end 306.122 is past the "
            "video duration 249.864 (by 56.3 s; time_tolerance 1 s)",
        ),
        (
            _undecodable_video,
            "raw/annotations/msrvtt_qa/train.jsonl: video 'video6513': cannot read the duration of "
            "raw/videos/video6513.mp4 (",
        ),
        (_malformed_json, "raw/annotations/didemo/train_data.json: malformed JSON at line 1 column 16"),
    ],
)
def test_bad_input_fails_with_one_line(project: Path, breaker, expected: str):
    breaker(project)
    line = error_line(run_stage(project))
    assert line.startswith(f"error: {expected}"), line
    assert not (project / "data/manifest").exists()


def test_duplicate_ids_fail(project: Path):
    p = project / "raw/annotations/msrvtt_qa/train_ans2label.json"
    p.write_text('{"couch": 0, "car": 1, "couch": 2}')
    assert "train_ans2label.json: answer 'couch' appears more than once" in error_line(run_stage(project))
    shutil.copy(FIX / "msrvtt_qa/train_ans2label.json", p)
    (project / "raw/annotations/didemo/train_list.txt").write_text(
        "26292851@N04_4253489686_265c3c8051.m4v\n26292851@N04_4253489686_265c3c8051.m4v\n"
        "47704451@N00_5409063464_ccb1be6a7c.mov\n"
    )
    assert error_line(run_stage(project)) == (
        "error: raw/annotations/didemo/train_list.txt: line 2: duplicate video id "
        "'26292851@N04_4253489686_265c3c8051.m4v' (first at line 1)"
    )


def test_params_errors_are_one_line(project: Path):
    write_params(project, [{"format": "mmn", "split": "train", "file": f"{A}/mmn/nope.json"}])
    assert (
        error_line(run_stage(project)) == "error: raw/annotations/mmn/nope.json: file not found (check "
        "ingest.root and this source's paths in params.yaml)"
    )
    write_params(project, on_error="ignore")
    assert error_line(run_stage(project)) == "error: params.yaml ingest.on_error: must be one of fail, skip; got 'ignore'"


# ---------------------------------------------------------------------------------------------- skip mode
def test_skip_lists_every_bad_entry_and_keeps_the_rest(project: Path):
    for breaker in (
        _break_anet_event,
        _missing_video,
        _missing_audio,
        _unknown_msrvtt_video,
        _bad_utf8,
        _empty_sentence,
        _past_duration,
        _undecodable_video,
    ):
        breaker(project)
    write_params(project, on_error="skip")
    res = run_stage(project)
    assert res.returncode == 0, res.stderr
    report = json.loads((project / "data/manifest/report.json").read_text())
    skipped = [(s["source"], s["entry"], s["field"], s["dropped"]) for s in report["skipped"]]
    assert skipped == [  # parser checks, then video files, then durations, then audio files
        ("activitynet_captions:train", "video 'v_ehGHCYKzyZ8' event 1", "timestamps[1]", 1),
        ("youcook2:youcookii_annotations_trainval", "video 'GLd3aX16zBg' annotation 1", "sentence", 1),
        ("mmn:train", "video '3MSZA' sentence 0", "sentences[0]", 1),
        ("tacos:train", "video 's30-d52.avi' sentence 2", "timestamps[2]", 1),
        ("msrvtt:train", "line 3 (video 'video1')", "video_id", 1),
        ("charades_sta:train", "video 'AO8RW'", "video", 2),  # both of its queries
        ("msrvtt_qa:train", "video 'video6513'", "video", 1),
        ("activitynet_speech:train", "video 'v_bXdq2zI1Ms0' sentence 1", "audios", 1),
    ]
    reasons = [s["reason"] for s in report["skipped"]]
    assert reasons[6].startswith("cannot read the duration of raw/videos/video6513.mp4 (")
    assert reasons[7] == "audio file not found: raw/audio/bXdq2zI1Ms0_train_2.wav"
    m = Manifest.read(project / "data/manifest")
    metrics = json.loads((project / "metrics/ingest.json").read_text())
    assert metrics["skipped"] == len(report["skipped"])
    # every input entry is in the manifest or in the report (the broken TACoS file has one sentence more)
    assert {s["name"]: s["kept"] + s["dropped"] for s in report["sources"]} == INPUT_ENTRIES | {
        "tacos:train": 3
    }
    assert sum(s["kept"] for s in report["sources"]) == sum(
        len(getattr(m, t)) for t in TABLES
    )
    assert "AO8RW" not in m.video_index() and "video1" not in m.video_index()
    assert [e.sentence for e in m.events if e.video_id == "v_ehGHCYKzyZ8"] == [
        "Two men are seen standing in a gym holding ropes."
    ]


def test_skip_lists_an_unreadable_file_whole_and_goes_on(project: Path):
    _malformed_json(project)
    write_params(project, on_error="skip")
    res = run_stage(project)
    assert res.returncode == 0, res.stderr
    report = json.loads((project / "data/manifest/report.json").read_text())
    (whole,) = [s for s in report["skipped"] if s["entry"] == "whole file"]
    assert whole["file"] == "raw/annotations/didemo/train_data.json" and whole["field"] == "file"
    assert whole["reason"].startswith("malformed JSON at line 1 column 16") and whole["source"] == "didemo:train"
    m = Manifest.read(project / "data/manifest")
    assert m.events and m.queries and not [c for c in m.captions if c.source.startswith("didemo")]


def test_a_video_in_two_splits_is_an_error_unless_intended(project: Path):
    leak = {"format": "activitynet_captions", "split": "val", "name": "leak",
            "files": [f"{A}/activitynet/train.json"]}
    write_params(project, SOURCES + [leak])
    assert error_line(run_stage(project)).startswith(
        f"error: raw/{A}/activitynet/train.json: video 'v_QOlSCBRmfWY': video 'v_QOlSCBRmfWY' is in split 'val' "
        f"here and in split 'train' in raw/{A}/activitynet/train.json; a video in two splits leaks between them "
        "(set ingest.allow_split_overlap: true if that is intended)")
    write_params(project, SOURCES + [leak], on_error="skip")
    assert run_stage(project).returncode == 0
    report = json.loads((project / "data/manifest/report.json").read_text())
    leaked = [s for s in report["skipped"] if s["field"] == "split"]
    assert {s["source"] for s in leaked} == {"leak"} and len(leaked) == 2  # both train videos, listed
    events = Manifest.read(project / "data/manifest").events
    assert {e.split for e in events if e.video_id == "v_QOlSCBRmfWY"} == {"train"}
    write_params(project, SOURCES + [leak], allow_split_overlap=True)
    assert run_stage(project).returncode == 0
    events = Manifest.read(project / "data/manifest").events
    assert {e.split for e in events if e.video_id == "v_QOlSCBRmfWY"} == {"train", "val"}


# ---------------------------------------------------------------------------------------------- in-process
def test_duration_conflicts_are_reported(project: Path, monkeypatch: pytest.MonkeyPatch):
    edit_json(
        project / "raw/annotations/mmn/train.json",
        lambda d: d.__setitem__(
            "AO8RW", {"duration": 40.0, "timestamps": [[1, 2]], "sentences": ["a person reads."]}
        ),
    )
    write_params(project, [s for s in SOURCES if s["format"] in ("charades_sta", "mmn")])
    monkeypatch.chdir(project)
    cfg = yaml.safe_load((project / "params.yaml").read_text())["ingest"]
    result = ingest(cfg, progress=False)
    assert result.report["duration_conflicts"] == [
        {"video_id": "AO8RW", "durations": {"charades_sta:train": 30.96, "mmn:train": 40.0}}
    ]
    assert result.manifest.video_index()["AO8RW"].duration == 30.96
