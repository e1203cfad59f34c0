"""Each parser against hand-written fixtures in the exact public formats (tests/fixtures/<format>/), the
shared validation (messages name file, entry and field), the restricted unpickler, params sources, the vocab.

Pickle fixtures (MSVD raw-captions.pkl, Ego4D-HCap clips/segments) are written by the tests from the literal
Python values below, since a pickle cannot be hand-written. No video files are needed here: parsers only read
annotations (video lookup and probing are tested in test_ingest.py).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from vidmem.common import UserError
from vidmem.formats import FORMATS, Parsed, make_sources
from vidmem.formats.readers import load_pickle
from vidmem.formats.vocab import UNK, build_vocab, decode, encode, tokenize
from vidmem.manifest import QA, Caption, Event, HierarchyText, PseudoText, Query

FIX = Path(__file__).parent / "fixtures"


def parse(root: Path, fmt: str, tolerance: float = 1.0, **keys) -> Parsed:
    cfg = {
        "root": str(root),
        "time_tolerance": tolerance,
        "sources": [{"format": fmt, "videos": ".", **keys}],
    }
    src = make_sources(cfg)[0]
    return FORMATS[src.format].parse(src)


def rows(parsed: Parsed) -> list:
    return [item.row for item in parsed.items]


def messages(parsed: Parsed) -> list[str]:
    return [p.message() for p in parsed.problems]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A writable copy of the fixtures, for tests that break one entry."""
    shutil.copytree(FIX, tmp_path / "fx")
    return tmp_path / "fx"


# ---------------------------------------------------------------------------------------------- parsers
def test_activitynet_captions_rows_and_clamp():
    p = parse(FIX, "activitynet_captions", split="train", files=["activitynet/train.json"])
    f = str(FIX / "activitynet/train.json")
    assert rows(p) == [
        Event(
            "v_QOlSCBRmfWY",
            "train",
            0.83,
            19.86,
            "A young woman is seen standing in a room and leads into her dancing.",
            0,
            f,
        ),
        Event(
            "v_QOlSCBRmfWY",
            "train",
            17.37,
            60.81,
            "The girl dances around the room while the camera captures her movements.",
            0,
            f,
        ),
        # 83.2 is past the 82.73 s duration by less than time_tolerance: clamped
        Event(
            "v_QOlSCBRmfWY",
            "train",
            56.26,
            82.73,
            "She continues dancing around the room and ends by laying on the floor.",
            0,
            f,
        ),
        Event(
            "v_ehGHCYKzyZ8", "train", 0.0, 21.52, "Two men are seen standing in a gym holding ropes.", 0, f
        ),
        Event(
            "v_ehGHCYKzyZ8",
            "train",
            21.52,
            61.72,
            "They swing the ropes up and down, and the man on the left stops to talk.",
            0,
            f,
        ),
    ]
    assert p.durations == {"v_QOlSCBRmfWY": 82.73, "v_ehGHCYKzyZ8": 61.72}
    assert p.problems == []


def test_activitynet_two_annotators():
    p = parse(
        FIX, "activitynet_captions", split="test", files=["activitynet/val_1.json", "activitynet/val_2.json"]
    )
    got = [(r.video_id, r.split, r.start, r.end, r.annotator, Path(r.source).name) for r in rows(p)]
    assert got == [
        ("v_uqiMw7tQ1Cc", "test", 0.0, 4.14, 0, "val_1.json"),
        ("v_uqiMw7tQ1Cc", "test", 4.14, 33.36, 0, "val_1.json"),
        ("v_uqiMw7tQ1Cc", "test", 33.36, 55.15, 0, "val_1.json"),
        ("v_uqiMw7tQ1Cc", "test", 0.0, 11.8, 1, "val_2.json"),
        ("v_uqiMw7tQ1Cc", "test", 11.8, 55.15, 1, "val_2.json"),
    ]


def test_youcook2_subsets_map_to_splits():
    p = parse(FIX, "youcook2", file="youcook2/youcookii_annotations_trainval.json")
    f = str(FIX / "youcook2/youcookii_annotations_trainval.json")
    assert rows(p) == [
        Event("GLd3aX16zBg", "train", 90.0, 102.0, "spread margarine on two slices of white bread", 0, f),
        Event("GLd3aX16zBg", "train", 114.0, 127.0, "place a slice of cheese on the bread", 0, f),
        Event("9GX8f5EwwE4", "val", 25.0, 37.0, "cut the onion in half and dice", 0, f),
    ]
    only_train = parse(
        FIX, "youcook2", file="youcook2/youcookii_annotations_trainval.json", split={"training": "train"}
    )
    assert len(only_train.items) == 2 and only_train.not_selected == 1


def test_charades_sta_lines_with_csv_lengths():
    p = parse(
        FIX,
        "charades_sta",
        split="train",
        file="charades_sta/charades_sta_train.txt",
        csv="charades_sta/Charades_v1_train.csv",
    )
    f = str(FIX / "charades_sta/charades_sta_train.txt")
    assert rows(p) == [
        Query(
            "charades_sta:train/AO8RW/0",
            "AO8RW",
            "train",
            0.0,
            6.9,
            "a person is putting a book on a shelf.",
            None,
            None,
            f,
        ),
        Query(
            "charades_sta:train/AO8RW/1",
            "AO8RW",
            "train",
            8.2,
            14.5,
            "person begins to read the book.",
            None,
            None,
            f,
        ),
        # 20.9 is past the csv length 20.50 by less than time_tolerance: clamped
        Query(
            "charades_sta:train/Y6R7T/0",
            "Y6R7T",
            "train",
            11.9,
            20.5,
            "a person is sitting on a chair.",
            None,
            None,
            f,
        ),
    ]
    assert p.durations == {"AO8RW": 30.96, "Y6R7T": 20.5}


def test_mmn_grounding_json():
    p = parse(FIX, "mmn", split="train", file="mmn/train.json")
    f = str(FIX / "mmn/train.json")
    assert rows(p) == [
        Query("mmn:train/3MSZA/0", "3MSZA", "train", 24.3, 30.4, "person turn a light on.", None, None, f),
        Query(
            "mmn:train/3MSZA/1",
            "3MSZA",
            "train",
            24.3,
            30.4,
            "person flipped the light switch near the door.",
            None,
            None,
            f,
        ),
        Query(
            "mmn:train/AKO6M/0",
            "AKO6M",
            "train",
            0.0,
            8.8,
            "a person stands in the bathroom holding a glass.",
            None,
            None,
            f,
        ),
        Query(
            "mmn:train/AKO6M/1",
            "AKO6M",
            "train",
            12.7,
            18.58,
            "the person takes a bag from the bottom cabinet.",
            None,
            None,
            f,
        ),
    ]


def test_activitynet_speech_audios():
    p = parse(
        FIX,
        "activitynet_speech",
        split="train",
        file="activitynet_speech/train.json",
        audio="activitynet_speech",
        name="anet_speech",
    )
    f = str(FIX / "activitynet_speech/train.json")
    wav = str(FIX / "activitynet_speech")
    assert rows(p) == [
        Query(
            "anet_speech/v_bXdq2zI1Ms0/0",
            "v_bXdq2zI1Ms0",
            "train",
            6.94,
            69.08,
            "Three men are standing on a mat.",
            f"{wav}/bXdq2zI1Ms0_train_1.wav",
            None,
            f,
        ),
        Query(
            "anet_speech/v_bXdq2zI1Ms0/1",
            "v_bXdq2zI1Ms0",
            "train",
            37.28,
            43.49,
            "The man in front begins to do karate on the mat.",
            f"{wav}/bXdq2zI1Ms0_train_2.wav",
            None,
            f,
        ),
    ]


def test_tacos_frames_to_seconds():
    p = parse(FIX, "tacos", split="train", file="tacos/train.json")
    f = str(FIX / "tacos/train.json")
    speaker = "cmu_us_ksp_arctic-wav-arctic_b0030"
    assert rows(p) == [
        Query(
            "tacos:train/s30-d52.avi/0",
            "s30-d52.avi",
            "train",
            141 / 29.4,
            354 / 29.4,
            "She took out kiwi",
            None,
            speaker,
            f,
        ),
        Query(
            "tacos:train/s30-d52.avi/1",
            "s30-d52.avi",
            "train",
            619 / 29.4,
            1153 / 29.4,
            "She gets a plate, a cutting boards, and a knife.",
            None,
            speaker,
            f,
        ),
    ]
    assert p.durations == {"s30-d52.avi": 7346 / 29.4}


def test_msrvtt_train_csv_json_split_and_jsfusion():
    data = str(FIX / "msrvtt/MSRVTT_data.json")
    train = parse(
        FIX, "msrvtt", split="train", file="msrvtt/MSRVTT_data.json", csv="msrvtt/MSRVTT_train.9k.csv"
    )
    assert rows(train) == [
        Caption("msrvtt:train/0", "video0", "train", "a car is shown", data),
        Caption("msrvtt:train/1", "video0", "train", "a man drives a red car down the road", data),
        Caption("msrvtt:train/2", "video1", "train", "a group of people are dancing", data),
    ]
    assert train.not_selected == 3  # the other splits' sentences
    test = parse(
        FIX, "msrvtt", split="test", file="msrvtt/MSRVTT_data.json", csv="msrvtt/MSRVTT_JSFUSION_test.csv"
    )
    assert rows(test) == [
        Caption(
            "msrvtt:test/ret0",
            "video9770",
            "test",
            "a person is mixing ingredients in a bowl",
            str(FIX / "msrvtt/MSRVTT_JSFUSION_test.csv"),
        )
    ]
    by_json = parse(FIX, "msrvtt", file="msrvtt/MSRVTT_data.json")  # split from the file, validate → val
    assert [(r.caption_id, r.video_id, r.split) for r in rows(by_json)] == [
        ("msrvtt:MSRVTT_data/0", "video0", "train"),
        ("msrvtt:MSRVTT_data/1", "video0", "train"),
        ("msrvtt:MSRVTT_data/2", "video1", "train"),
        ("msrvtt:MSRVTT_data/3", "video6513", "val"),
        ("msrvtt:MSRVTT_data/4", "video9770", "test"),
        ("msrvtt:MSRVTT_data/5", "video9770", "test"),
    ]


def test_msvd_lists_and_captions_pickle(work: Path):
    captions = {
        "-4wsuPCjDBc_5_15": [["a", "squirrel", "is", "eating", "a", "peanut"], ["an", "animal", "eats"]],
        "-7KMZQEsJW4_205_208": [["a", "woman", "is", "slicing", "a", "tomato"]],
        "zv2RIbUsnSw_335_341": [["a", "man", "plays", "a", "guitar"]],
    }
    (work / "msvd/raw-captions.pkl").write_bytes(pickle.dumps(captions))
    p = parse(work, "msvd", split="train", list="msvd/train_list.txt", captions="msvd/raw-captions.pkl")
    f = str(work / "msvd/raw-captions.pkl")
    assert rows(p) == [
        Caption(
            "msvd:train/-4wsuPCjDBc_5_15/0", "-4wsuPCjDBc_5_15", "train", "a squirrel is eating a peanut", f
        ),
        Caption("msvd:train/-4wsuPCjDBc_5_15/1", "-4wsuPCjDBc_5_15", "train", "an animal eats", f),
        Caption(
            "msvd:train/-7KMZQEsJW4_205_208/0",
            "-7KMZQEsJW4_205_208",
            "train",
            "a woman is slicing a tomato",
            f,
        ),
    ]


def test_didemo_chunks_and_consensus():
    p = parse(FIX, "didemo", split="train", file="didemo/train_data.json", list="didemo/train_list.txt")
    f = str(FIX / "didemo/train_data.json")
    v1, v2 = "26292851@N04_4253489686_265c3c8051.m4v", "47704451@N00_5409063464_ccb1be6a7c.mov"
    assert rows(p) == [
        Caption("didemo:train/1", v1, "train", "someone kicks the bug towards some rocks.", f),
        Query(
            "didemo:train/1",
            v1,
            "train",
            20.0,
            25.0,
            "someone kicks the bug towards some rocks.",
            None,
            None,
            f,
        ),
        Caption("didemo:train/2", v1, "train", "the bug climbs onto the leaf", f),
        Query("didemo:train/2", v1, "train", 25.0, 30.0, "the bug climbs onto the leaf", None, None, f),
        Caption("didemo:train/7", v2, "train", "a dog runs into the frame", f),
        # (0,1) and (1,1) tie 2:2 — the first given wins
        Query("didemo:train/7", v2, "train", 0.0, 10.0, "a dog runs into the frame", None, None, f),
    ]
    assert [i.end_slack for i in p.items if i.row.table == "queries"] == [5.0, 5.0, 5.0]


def test_ego4d_hcap_three_levels(work: Path):
    vid = "a3f1e2c4-0b9d-4f6e-8a7b-1c2d3e4f5a6b"
    clips = [(vid, 0.0, 0.8, "#C C opens the fridge"), (vid, 0.8, 1.6, "#C C takes out the bread")]
    segments = [
        {
            "vid": vid,
            "sid": "seg-0001",
            "start_sec": 0.0,
            "end_sec": 1.6,
            "segment_description": "C takes bread out of the fridge.",
            "captions_gt": [[vid, 0.0, 0.8, "#C C opens the fridge"]],
            "captions_pred": [],
        }
    ]
    (work / "ego4d_hcap/clips_train.pkl").write_bytes(pickle.dumps(clips))
    (work / "ego4d_hcap/segments_train.pkl").write_bytes(pickle.dumps(segments))
    p = parse(
        work,
        "ego4d_hcap",
        split="train",
        clips="ego4d_hcap/clips_train.pkl",
        segments="ego4d_hcap/segments_train.pkl",
        summaries="ego4d_hcap/videos_train.json",
    )
    c, s, v = (
        str(work / f"ego4d_hcap/{n}") for n in ("clips_train.pkl", "segments_train.pkl", "videos_train.json")
    )
    assert rows(p) == [
        HierarchyText("ego4d_hcap:train/clip/0", vid, "train", "clip", 0.0, 0.8, "#C C opens the fridge", c),
        HierarchyText(
            "ego4d_hcap:train/clip/1", vid, "train", "clip", 0.8, 1.6, "#C C takes out the bread", c
        ),
        HierarchyText(
            "ego4d_hcap:train/segment/seg-0001",
            vid,
            "train",
            "segment",
            0.0,
            1.6,
            "C takes bread out of the fridge.",
            s,
        ),
        HierarchyText(
            "ego4d_hcap:train/video/0",
            vid,
            "train",
            "video",
            0.0,
            1.6,
            "C was in a kitchen. C made a sandwich and washed the dishes.",
            v,
        ),
    ]
    assert p.durations == {vid: None}  # probed by ingest


def test_ego4d_hcap_pseudo_labels_are_their_own_table(work: Path):
    """segments_train_pseudo.pkl / videos_train_pseudo.json (the released layouts) → hierarchy_pseudo rows:
    training text, kept apart from the references that are scored; refused on a non-train source."""
    vid = "a3f1e2c4-0b9d-4f6e-8a7b-1c2d3e4f5a6b"
    pseudo = [{"vid": vid, "sid": "pseudo-7", "start_sec": 0.4, "end_sec": 1.6,
               "segment_description": "C gets the bread out.", "captions_gt": [],
               "captions_pred": [[vid, 0.8, 1.6, "#C C takes out the bread"]]}]
    summaries = [{"vid": vid, "start_sec": 0.0, "end_sec": 1.6, "video_summary": "C made a sandwich.",
                  "segment_descriptions": ["C gets the bread out."], "segment_descriptions_pred": []}]
    (work / "ego4d_hcap/segments_train_pseudo.pkl").write_bytes(pickle.dumps(pseudo))
    (work / "ego4d_hcap/videos_train_pseudo.json").write_text(json.dumps(summaries))
    keys = {"segments_pseudo": "ego4d_hcap/segments_train_pseudo.pkl",
            "summaries_pseudo": "ego4d_hcap/videos_train_pseudo.json"}
    p = parse(work, "ego4d_hcap", split="train", **keys)
    s, v = (str(work / "ego4d_hcap" / n) for n in ("segments_train_pseudo.pkl", "videos_train_pseudo.json"))
    assert rows(p) == [
        PseudoText("ego4d_hcap:train/segment_pseudo/pseudo-7", vid, "train", "segment", 0.4, 1.6,
                   "C gets the bread out.", s),
        PseudoText("ego4d_hcap:train/video_pseudo/0", vid, "train", "video", 0.0, 1.6, "C made a sandwich.", v),
    ]
    assert {i.row.table for i in p.items} == {"hierarchy_pseudo"}
    with pytest.raises(UserError, match="`segments_pseudo` is training text; give it on the train source"):
        parse(work, "ego4d_hcap", split="val", **keys)


def test_msrvtt_qa_and_answer_set():
    train = parse(
        FIX,
        "msrvtt_qa",
        split="train",
        file="msrvtt_qa/train.jsonl",
        answers="msrvtt_qa/train_ans2label.json",
    )
    f = str(FIX / "msrvtt_qa/train.jsonl")
    assert rows(train) == [
        QA("msrvtt_qa:train/0", "video6513", "train", "what are three people sitting on?", "couch", f),
        QA("msrvtt_qa:train/1", "video0", "train", "what is shown?", "car", f),
    ]
    assert train.answers == {"couch": 0, "car": 1, "dance": 2}
    # a test answer outside the closed set is kept: it is scored as wrong, as in ClipBERT
    test = parse(
        FIX, "msrvtt_qa", split="test", file="msrvtt_qa/test.jsonl", answers="msrvtt_qa/train_ans2label.json"
    )
    assert [r.answer for r in rows(test)] == ["bowl"] and test.problems == []


# ---------------------------------------------------------------------------------------------- validation
def _anet(work: Path, data: dict | str, tolerance: float = 1.0) -> tuple[Parsed, str]:
    path = work / "activitynet/train.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return parse(
        work, "activitynet_captions", tolerance, split="train", files=["activitynet/train.json"]
    ), str(path)


def test_malformed_json_is_a_whole_file_error(work: Path):
    with pytest.raises(
        UserError,
        match=r"activitynet/train\.json: malformed JSON at line 1 column 13: Expecting ':' delimiter",
    ):
        _anet(work, '{"v_a": {"d"')


def test_missing_file_is_an_error(work: Path):
    with pytest.raises(UserError, match=r"activitynet/nope\.json: file not found"):
        p = parse(work, "activitynet_captions", split="train", files=["activitynet/nope.json"])
        del p


def test_entry_problems_name_file_entry_and_field(work: Path):
    bad = {
        "v_ok": {
            "duration": 10,
            "timestamps": [[0, 4], [12.0, 4.0], [-1, 2], [2, 30], [1, 2]],
            "sentences": ["fine", "backwards", "negative", "too long", "   "],
        },
        "v_nodur": {"timestamps": [[0, 1]], "sentences": ["x"]},
        "v_count": {"duration": 5, "timestamps": [[0, 1], [1, 2]], "sentences": ["only one"]},
        "v_type": {"duration": "long", "timestamps": [], "sentences": []},
    }
    p, f = _anet(work, bad)
    assert messages(p) == [
        f"{f}: video 'v_ok' event 1: start 12 > end 4",
        f"{f}: video 'v_ok' event 2: negative time in timestamps[2]: start -1, end 2",
        f"{f}: video 'v_ok' event 3: end 30 is past the video duration 10 (by 20 s; time_tolerance 1 s)",
        f"{f}: video 'v_ok' event 4: sentences[4] is empty",
        f"{f}: video 'v_nodur': missing key 'duration'",
        f"{f}: video 'v_count': 1 sentences for 2 timestamps",
        f"{f}: video 'v_type': duration must be a number, got 'long'",
    ]
    assert [pr.field for pr in p.problems] == [
        "timestamps[1]",
        "timestamps[2]",
        "timestamps[3]",
        "sentences[4]",
        "duration",
        "sentences",
        "duration",
    ]
    assert [pr.dropped for pr in p.problems] == [1, 1, 1, 1, 1, 2, 1]
    assert [(r.video_id, r.start, r.end) for r in rows(p)] == [("v_ok", 0.0, 4.0)]
    # every input entry is a row or counted in a problem: v_ok 5 events, v_nodur 1, v_count 2 (its two
    # timestamps, though one sentence), v_type 1
    assert p.entries == 9


def test_time_tolerance_decides_clamp_or_error(work: Path):
    data = {"v_a": {"duration": 10.0, "timestamps": [[1, 10.4]], "sentences": ["a"]}}
    p, _ = _anet(work, data, tolerance=0.5)
    assert [(r.start, r.end) for r in rows(p)] == [(1.0, 10.0)]
    p, f = _anet(work, data, tolerance=0.2)
    assert messages(p) == [
        f"{f}: video 'v_a' event 0: end 10.4 is past the video duration 10 (by 0.4 s; time_tolerance 0.2 s)"
    ]


def test_duplicate_video_id_in_json(work: Path):
    text = (
        '{"v_a": {"duration": 5, "timestamps": [[0, 1]], "sentences": ["first"]},\n'
        ' "v_a": {"duration": 5, "timestamps": [[0, 1], [1, 2]], "sentences": ["second", "copy"]}}'
    )
    p, f = _anet(work, text)
    assert messages(p) == [
        f"{f}: video 'v_a': duplicate video id 'v_a': the file holds it more than once (the first is kept)"
    ]
    assert p.problems[0].dropped == 2 and [r.sentence for r in rows(p)] == ["first"]


def test_duplicate_key_inside_an_entry(work: Path):
    text = '{"v_a": {"duration": 5, "duration": 6, "timestamps": [[0, 1]], "sentences": ["x"]}}'
    p, f = _anet(work, text)
    assert messages(p) == [f"{f}: video 'v_a': duplicate key 'duration'"]


def test_bad_utf8_names_the_field(work: Path):
    path = work / "activitynet/train.json"
    path.write_bytes(
        b'{"v_a": {"duration": 5, "timestamps": [[0, 1], [1, 2]], "sentences": ["ok", "caf\xe9 bad"]}}'
    )
    p = parse(work, "activitynet_captions", split="train", files=["activitynet/train.json"])
    assert messages(p) == [f"{path}: video 'v_a' event 1: sentences[1] is not valid UTF-8 (byte 0xe9)"]
    lines = work / "charades_sta/charades_sta_train.txt"
    lines.write_bytes(b"AO8RW 0.0 6.9##a person \xff\xfe reads.\nAO8RW 1.0 2.0##fine.\n")
    p = parse(
        work,
        "charades_sta",
        split="train",
        file="charades_sta/charades_sta_train.txt",
        csv="charades_sta/Charades_v1_train.csv",
    )
    assert messages(p) == [f"{lines}: line 1 (video 'AO8RW'): sentence is not valid UTF-8 (byte 0xff)"]
    assert len(p.items) == 1


def test_charades_unknown_and_duplicate_ids(work: Path):
    txt, csv_ = work / "charades_sta/charades_sta_train.txt", work / "charades_sta/Charades_v1_train.csv"
    txt.write_text(
        "ZZZZZ 0.0 3.0##a person opens a door.\nAO8RW 0.0 6.9##fine.\nKU4ZE 1.0 2.0\nY6R7T 5 1##reversed.\n",
        encoding="utf-8",
    )
    with csv_.open("a", encoding="utf-8") as f:
        f.write("Y6R7T,HR43,Kitchen,7,7,Yes,again,cup,again,c001 0 1,20.5\n")
    p = parse(
        work,
        "charades_sta",
        split="train",
        file="charades_sta/charades_sta_train.txt",
        csv="charades_sta/Charades_v1_train.csv",
    )
    assert messages(p) == [
        f"{csv_}: line 5 (video 'Y6R7T'): duplicate video id 'Y6R7T' (first at line 3)",
        f"{txt}: line 1 (video 'ZZZZZ'): unknown video id 'ZZZZZ': no row in {csv_}",
        f"{txt}: line 3: expected '<video> <start> <end>##<sentence>' (no '##')",
        f"{txt}: line 4 (video 'Y6R7T'): video 'Y6R7T': its row in {csv_} is unusable "
        "(duplicate video id 'Y6R7T' (first at line 3))",
    ]
    assert [pr.dropped for pr in p.problems] == [0, 1, 1, 1]  # a csv row is metadata, not a manifest row
    assert [r.video_id for r in rows(p)] == ["AO8RW"]


def test_charades_csv_without_length_column(work: Path):
    (work / "charades_sta/Charades_v1_train.csv").write_text("id,subject\nAO8RW,HR43\n", encoding="utf-8")
    with pytest.raises(UserError, match="CSV header lacks column"):
        parse(
            work,
            "charades_sta",
            split="train",
            file="charades_sta/charades_sta_train.txt",
            csv="charades_sta/Charades_v1_train.csv",
        )


def test_msrvtt_unknown_and_duplicate_ids(work: Path):
    path = work / "msrvtt/MSRVTT_data.json"
    data = json.loads(path.read_text())
    data["sentences"].append({"caption": "a ghost video", "video_id": "video77", "sen_id": 6})
    data["videos"].append(dict(data["videos"][0]))  # video0 twice
    path.write_text(json.dumps(data))
    (work / "msrvtt/MSRVTT_train.9k.csv").write_text("video_id\nvideo1\nvideo1\nvideo5\n")
    f = str(path)
    train = parse(
        work, "msrvtt", split="train", file="msrvtt/MSRVTT_data.json", csv="msrvtt/MSRVTT_train.9k.csv"
    )
    csv_ = str(work / "msrvtt/MSRVTT_train.9k.csv")
    assert messages(train) == [
        f"{f}: videos[4] (video 'video0'): duplicate video id 'video0' (first at videos[0])",
        f"{csv_}: line 3 (video 'video1'): duplicate video id 'video1' (first at line 2)",
        f"{csv_}: line 4 (video 'video5'): unknown video id 'video5': not in the videos list of {f}",
    ]
    by_json = parse(work, "msrvtt", file="msrvtt/MSRVTT_data.json")
    assert f"{f}: sentences[6]: unknown video id 'video77': not in the videos list of {f}" in messages(
        by_json
    )
    assert (
        f"{f}: sentences[0]: video 'video0': its entry in the videos list is unusable "
        "(duplicate video id 'video0' (first at videos[0]))" in messages(by_json)
    )


def test_didemo_msvd_unknown_ids(work: Path):
    (work / "didemo/train_list.txt").write_text("26292851@N04_4253489686_265c3c8051.m4v\n")
    p = parse(work, "didemo", split="train", file="didemo/train_data.json", list="didemo/train_list.txt")
    f = str(work / "didemo/train_data.json")
    assert messages(p) == [
        f"{f}: entry 2 (annotation 7): unknown video id '47704451@N00_5409063464_ccb1be6a7c.mov'"
        f": not in {work / 'didemo/train_list.txt'}"
    ]
    assert p.problems[0].dropped == 2  # its caption and its query
    (work / "msvd/raw-captions.pkl").write_bytes(pickle.dumps({"-4wsuPCjDBc_5_15": [["a", "cat"]]}))
    p = parse(work, "msvd", split="train", list="msvd/train_list.txt", captions="msvd/raw-captions.pkl")
    assert messages(p) == [
        f"{work / 'msvd/train_list.txt'}: line 2 (video '-7KMZQEsJW4_205_208'): unknown video id "
        f"'-7KMZQEsJW4_205_208': no captions in {work / 'msvd/raw-captions.pkl'}"
    ]


def test_qa_answer_outside_closed_set_in_train(work: Path):
    path = work / "msrvtt_qa/train.jsonl"
    path.write_text(
        '{"answer": "spoon", "question": "what is used?", "video_id": "video0", "answer_type": "what"}\n'
        '{"answer": "car", "question": "", "video_id": "video0", "answer_type": "what"}\n'
        '{"answer": "car", "question": "what?" \n',
        encoding="utf-8",
    )
    p = parse(
        work,
        "msrvtt_qa",
        split="train",
        file="msrvtt_qa/train.jsonl",
        answers="msrvtt_qa/train_ans2label.json",
    )
    assert messages(p) == [
        f"{path}: line 1 (video 'video0'): answer 'spoon' is not in the closed answer set "
        f"{work / 'msrvtt_qa/train_ans2label.json'}",
        f"{path}: line 2 (video 'video0'): question is empty",
        f"{path}: line 3: not valid JSON: Expecting ',' delimiter at column 39",
    ]


def test_ego4d_span_checks(work: Path):
    vid = "v1"
    (work / "ego4d_hcap/clips_train.pkl").write_bytes(
        pickle.dumps([(vid, 4.0, 2.0, "#C C waits"), (vid, 0.0, 4.0), (vid, 0.0, 4.0, "")])
    )
    p = parse(work, "ego4d_hcap", split="train", clips="ego4d_hcap/clips_train.pkl")
    f = str(work / "ego4d_hcap/clips_train.pkl")
    assert messages(p) == [
        f"{f}: entry 0 (video 'v1'): start 4 > end 2",
        f"{f}: entry 1: expected a (vid, start_sec, end_sec, clip_caption) tuple",
        f"{f}: entry 2: clip_caption is empty",
    ]


# ---------------------------------------------------------------------------------------------- pickles
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code(tmp_path: Path):
    path = tmp_path / "raw-captions.pkl"
    path.write_bytes(pickle.dumps({"v": _Evil()}))
    with pytest.raises(UserError, match=r"refusing to load '(posix|os|nt)\.system'"):
        load_pickle(path)
    path.write_bytes(pickle.dumps({"v": [["a", "b"]], "s": {1, 2}, "t": (1.5, "x")}, protocol=2))
    assert load_pickle(path) == {"v": [["a", "b"]], "s": {1, 2}, "t": (1.5, "x")}


# ---------------------------------------------------------------------------------------------- params
def test_params_sources_are_validated():
    base = {"root": str(FIX)}
    with pytest.raises(UserError, match=r"sources\[0\]\.format: unknown format 'anet'"):
        make_sources(base | {"sources": [{"format": "anet", "split": "train", "videos": "."}]})
    with pytest.raises(UserError, match=r"unknown key\(s\) csv for format 'mmn'"):
        make_sources(
            base
            | {
                "sources": [
                    {
                        "format": "mmn",
                        "split": "train",
                        "videos": ".",
                        "file": "mmn/train.json",
                        "csv": "x.csv",
                    }
                ]
            }
        )
    with pytest.raises(UserError, match=r"sources\[0\]\.split: unknown split 'training'"):
        make_sources(base | {"sources": [{"format": "mmn", "split": "training", "videos": ".", "file": "x"}]})
    twice = {"format": "mmn", "split": "train", "videos": ".", "file": "mmn/train.json"}
    with pytest.raises(UserError, match=r"name 'mmn:train' is also the name of sources\[0\]"):
        make_sources(base | {"sources": [twice, twice]})
    with pytest.raises(UserError, match="ingest.root: folder"):
        make_sources({"root": str(FIX / "nope"), "sources": [twice]})


# ---------------------------------------------------------------------------------------------- vocab
def test_vocab_pdvc_convention_with_own_unknown_index():
    assert tokenize("A man's hat, on-the-go!  Yes.") == ["a", "man", "s", "hat", "on", "the", "go", "yes"]
    assert tokenize("one two three", max_words=2) == ["one", "two"]
    vocab = build_vocab(["The dog runs.", "the cat runs", "A dog sleeps", "zebra"], max_words=30, min_count=2)
    assert vocab["word_to_ix"] == {"dog": 1, "runs": 2, "the": 3, UNK: 4}
    assert vocab["ix_to_word"] == {"1": "dog", "2": "runs", "3": "the", "4": UNK}
    # an unknown word has its own index, distinct from the last real word ("the")
    assert encode("the zebra runs", vocab) == [3, 4, 2]
    assert decode([3, 1, 2, 0, 1], vocab) == "the dog runs"
    truncated = build_vocab(["a b c d"], max_words=2)
    assert list(truncated["word_to_ix"]) == ["a", "b", UNK]
