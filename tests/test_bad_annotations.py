"""Bad annotations in every supported format, table-driven: each defect a user's files can have (malformed
file, missing key, wrong type, NaN / negative / reversed times, times past the duration, empty or non-UTF-8
text, unknown or duplicate ids, missing videos or WAVs) through the real `ingest` on the hand-written
fixtures.

`on_error: fail`: a UserError whose one line names the file, the entry and the field; `on_error: skip`: the
entry is listed in the report with that file, entry and field, its rows are not in the manifest, the source's
other rows are, and every input entry is either kept or counted as dropped.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from tests.test_ingest import A, EGO_VID, build_project, clips  # noqa: F401  (clips: a pytest fixture)
from vidmem.common import UserError
from vidmem.formats import FORMATS
from vidmem.formats.assemble import ingest
from vidmem.manifest import Manifest

AN = f"raw/{A}"

# one source per format, on the fixture files (paths under the project's raw/)
SRC = {
    "activitynet_captions": {"format": "activitynet_captions", "split": "train",
                             "files": [f"{A}/activitynet/train.json"]},
    "youcook2": {"format": "youcook2", "file": f"{A}/youcook2/youcookii_annotations_trainval.json"},
    "charades_sta": {"format": "charades_sta", "split": "train",
                     "file": f"{A}/charades_sta/charades_sta_train.txt",
                     "csv": f"{A}/charades_sta/Charades_v1_train.csv"},
    "mmn": {"format": "mmn", "split": "train", "file": f"{A}/mmn/train.json"},
    "activitynet_speech": {"format": "activitynet_speech", "split": "train",
                           "file": f"{A}/activitynet_speech/train.json", "audio": "audio"},
    "tacos": {"format": "tacos", "split": "train", "file": f"{A}/tacos/train.json"},
    "msrvtt": {"format": "msrvtt", "split": "train", "file": f"{A}/msrvtt/MSRVTT_data.json",
               "csv": f"{A}/msrvtt/MSRVTT_train.9k.csv"},
    "msvd": {"format": "msvd", "split": "train", "list": f"{A}/msvd/train_list.txt",
             "captions": f"{A}/msvd/raw-captions.pkl"},
    "didemo": {"format": "didemo", "split": "train", "file": f"{A}/didemo/train_data.json",
               "list": f"{A}/didemo/train_list.txt"},
    "ego4d_hcap": {"format": "ego4d_hcap", "split": "train", "clips": f"{A}/ego4d_hcap/clips_train.pkl",
                   "summaries": f"{A}/ego4d_hcap/videos_train.json"},
    "msrvtt_qa": {"format": "msrvtt_qa", "split": "train", "file": f"{A}/msrvtt_qa/train.jsonl",
                  "answers": f"{A}/msrvtt_qa/train_ans2label.json"},
}


def test_every_registered_format_is_in_the_table():
    assert set(SRC) == set(FORMATS)
    assert {fmt for fmt, *_ in CASES} == set(FORMATS)


# ---------------------------------------------------------------------------------------------- breakers
def _replace(path: Path, data: bytes) -> None:
    """A new file under the old name: the test's tree shares its files with the pristine one (hard links)."""
    path.unlink()
    path.write_bytes(data)


def _json(rel: str, change):
    def breaker(root: Path) -> None:
        path = root / "raw" / A / rel
        data = json.loads(path.read_text(encoding="utf-8"))
        change(data)
        _replace(path, json.dumps(data, allow_nan=True).encode())
    return breaker


def _text(rel: str, old: bytes | str, new: bytes | str):
    def breaker(root: Path) -> None:
        path = root / "raw" / A / rel
        old_b = old.encode() if isinstance(old, str) else old
        new_b = new.encode() if isinstance(new, str) else new
        data = path.read_bytes()
        assert old_b in data, f"{rel} lacks {old_b!r}: the fixture changed"
        _replace(path, data.replace(old_b, new_b, 1))
    return breaker


def _write(rel: str, data: bytes | str):
    def breaker(root: Path) -> None:
        _replace(root / "raw" / A / rel, data.encode() if isinstance(data, str) else data)
    return breaker


def _pickle(rel: str, obj):
    return _write(rel, pickle.dumps(obj))


def _remove(rel: str):
    def breaker(root: Path) -> None:
        (root / "raw" / rel).unlink()
    return breaker


def _set(*path_and_value):
    *keys, value = path_and_value

    def change(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return change


def _delete(*keys):
    def change(d):
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return change


NAN = float("nan")
ANET, YC2, MMN = "activitynet/train.json", "youcook2/youcookii_annotations_trainval.json", "mmn/train.json"
SPEECH, TACOS = "activitynet_speech/train.json", "tacos/train.json"
CH_TXT, CH_CSV = "charades_sta/charades_sta_train.txt", "charades_sta/Charades_v1_train.csv"
MSR, MSR_CSV = "msrvtt/MSRVTT_data.json", "msrvtt/MSRVTT_train.9k.csv"
MSVD_LIST, MSVD_PKL = "msvd/train_list.txt", "msvd/raw-captions.pkl"
DIDEMO, DIDEMO_LIST = "didemo/train_data.json", "didemo/train_list.txt"
EGO_CLIPS, EGO_SUM = "ego4d_hcap/clips_train.pkl", "ego4d_hcap/videos_train.json"
QA, QA_ANS = "msrvtt_qa/train.jsonl", "msrvtt_qa/train_ans2label.json"
V1 = "v_QOlSCBRmfWY"
YV = "GLd3aX16zBg"
DV = "26292851@N04_4253489686_265c3c8051.m4v"
EGO_OK = [(EGO_VID, 0.0, 0.8, "#C C opens the fridge"), (EGO_VID, 0.8, 2.3, "#C C takes out the bread")]

# (format, case, breaker, (file under raw/annotations, entry, field, words of the reason)); file None: the
# video / audio folders' file named in the reason; entry "whole file": the file cannot be read at all
CASES = [
    # ActivityNet Captions
    ("activitynet_captions", "malformed", _write(ANET, '{"v_a": {"duration": 5,'),
     (ANET, "whole file", "file", "malformed JSON")),
    ("activitynet_captions", "missing_key", _json(ANET, _delete(V1, "timestamps")),
     (ANET, f"video '{V1}'", "timestamps", "missing key 'timestamps'")),
    ("activitynet_captions", "wrong_type", _json(ANET, _set(V1, "duration", "long")),
     (ANET, f"video '{V1}'", "duration", "must be a number")),
    ("activitynet_captions", "nan", _json(ANET, lambda d: d[V1]["timestamps"].__setitem__(1, [NAN, 60.0])),
     (ANET, f"video '{V1}' event 1", "timestamps[1] start", "must be a finite number, got nan")),
    ("activitynet_captions", "negative",
     _json(ANET, lambda d: d[V1]["timestamps"].__setitem__(1, [-3, 60.0])),
     (ANET, f"video '{V1}' event 1", "timestamps[1]", "negative")),
    ("activitynet_captions", "reversed", _json(ANET, lambda d: d[V1]["timestamps"].__setitem__(1, [60, 20])),
     (ANET, f"video '{V1}' event 1", "timestamps[1]", "start 60 > end 20")),
    ("activitynet_captions", "past_duration",
     _json(ANET, lambda d: d[V1]["timestamps"].__setitem__(1, [20, 120])),
     (ANET, f"video '{V1}' event 1", "timestamps[1]", "past the video duration")),
    ("activitynet_captions", "empty_text", _json(ANET, lambda d: d[V1]["sentences"].__setitem__(1, " ")),
     (ANET, f"video '{V1}' event 1", "sentences[1]", "empty")),
    ("activitynet_captions", "non_utf8", _text(ANET, "leads into her", b"leads \xff into her"),
     (ANET, f"video '{V1}' event 0", "sentences[0]", "not valid UTF-8")),
    ("activitynet_captions", "duplicate_id", _text(ANET, f'"{V1}"', f'"{V1}": {{"duration": 5, '
                                                   f'"timestamps": [[0, 1]], "sentences": ["x"]}}, "{V1}"'),
     (ANET, f"video '{V1}'", "video id", "duplicate video id")),
    ("activitynet_captions", "missing_video", _remove(f"videos/{V1}.mp4"),
     (ANET, f"video '{V1}'", "video", "video file not found")),
    # YouCook2
    ("youcook2", "malformed", _write(YC2, '{"database": {"x": '),
     (YC2, "whole file", "file", "malformed JSON")),
    ("youcook2", "missing_key", _json(YC2, _delete("database", YV, "annotations", 0, "segment")),
     (YC2, f"video '{YV}' annotation 0", "segment", "missing key 'segment'")),
    ("youcook2", "wrong_type", _json(YC2, _set("database", YV, "annotations", 0, "segment", "90-102")),
     (YC2, f"video '{YV}' annotation 0", "segment", "must be a [start, end] pair, got '90-102'")),
    ("youcook2", "nan", _json(YC2, _set("database", YV, "annotations", 0, "segment", [90, NAN])),
     (YC2, f"video '{YV}' annotation 0", "segment end", "must be a finite number, got nan")),
    ("youcook2", "negative", _json(YC2, _set("database", YV, "annotations", 0, "segment", [-5, 10])),
     (YC2, f"video '{YV}' annotation 0", "segment", "negative")),
    ("youcook2", "reversed", _json(YC2, _set("database", YV, "annotations", 0, "segment", [102, 90])),
     (YC2, f"video '{YV}' annotation 0", "segment", "start 102 > end 90")),
    ("youcook2", "past_duration", _json(YC2, _set("database", YV, "annotations", 0, "segment", [90, 400])),
     (YC2, f"video '{YV}' annotation 0", "segment", "past the video duration")),
    ("youcook2", "empty_text", _json(YC2, _set("database", YV, "annotations", 0, "sentence", "")),
     (YC2, f"video '{YV}' annotation 0", "sentence", "empty")),
    ("youcook2", "non_utf8", _text(YC2, "spread margarine", b"spread \xe9 margarine"),
     (YC2, f"video '{YV}' annotation 0", "sentence", "not valid UTF-8")),
    ("youcook2", "missing_video", _remove(f"videos/{YV}.webm"),
     (YC2, f"video '{YV}'", "video", "video file not found")),
    # Charades-STA
    ("charades_sta", "malformed_line", _text(CH_TXT, "AO8RW 8.2 14.5##", "AO8RW 8.2 14.5 "),
     (CH_TXT, "line 2", "line", "no '##'")),
    ("charades_sta", "missing_column", _text(CH_CSV, ",length\n", ",len\n"),
     (CH_CSV, "whole file", "file", "length")),
    ("charades_sta", "wrong_type", _text(CH_TXT, "AO8RW 8.2 14.5", "AO8RW eight 14.5"),
     (CH_TXT, "line 2", "times start", "must be a number, got 'eight'")),
    ("charades_sta", "nan", _text(CH_TXT, "AO8RW 8.2 14.5", "AO8RW nan 14.5"),
     (CH_TXT, "line 2", "times start", "must be a finite number, got nan")),
    ("charades_sta", "negative", _text(CH_TXT, "AO8RW 8.2 14.5", "AO8RW -8.2 14.5"),
     (CH_TXT, "line 2", "times", "negative time in times")),
    ("charades_sta", "reversed", _text(CH_TXT, "AO8RW 8.2 14.5", "AO8RW 14.5 8.2"),
     (CH_TXT, "line 2", "times", "start 14.5 > end 8.2")),
    ("charades_sta", "past_duration", _text(CH_TXT, "AO8RW 8.2 14.5", "AO8RW 8.2 44.5"),
     (CH_TXT, "line 2", "times", "past the video duration 30.96")),
    ("charades_sta", "bad_length", _text(CH_CSV, ",30.96\n", ",long\n"),
     (CH_CSV, "line 2", "length", "length must be a number, got 'long'")),
    ("charades_sta", "empty_text", _text(CH_TXT, "##person begins to read the book.", "##  "),
     (CH_TXT, "line 2", "sentence", "empty")),
    ("charades_sta", "non_utf8", _text(CH_TXT, "begins to read", b"begins \xff to read"),
     (CH_TXT, "line 2", "sentence", "not valid UTF-8")),
    ("charades_sta", "unknown_id", _text(CH_TXT, "AO8RW 8.2 14.5", "ZZZZZ 8.2 14.5"),
     (CH_TXT, "line 2", "video id", "unknown video id 'ZZZZZ'")),
    ("charades_sta", "duplicate_id", _text(CH_CSV, "\nY6R7T,", "\nAO8RW,"),
     (CH_CSV, "line 3", "id", "duplicate video id 'AO8RW'")),
    ("charades_sta", "missing_video", _remove("videos/Y6R7T.mp4"),
     (CH_TXT, "video 'Y6R7T'", "video", "video file not found")),
    # MMN (Charades-STA / ActivityNet grounding JSON)
    ("mmn", "malformed", _write(MMN, "{\"3MSZA\": [}"), (MMN, "whole file", "file", "malformed JSON")),
    ("mmn", "missing_key", _json(MMN, _delete("AKO6M", "sentences")),
     (MMN, "video 'AKO6M'", "sentences", "missing key 'sentences'")),
    ("mmn", "wrong_type", _json(MMN, _set("AKO6M", "timestamps", {"a": 1})),
     (MMN, "video 'AKO6M'", "timestamps", "must be a list, got an object")),
    ("mmn", "nan", _json(MMN, lambda d: d["AKO6M"]["timestamps"].__setitem__(0, [0.0, NAN])),
     (MMN, "video 'AKO6M' sentence 0", "timestamps[0] end (s)", "must be a finite number, got nan")),
    ("mmn", "negative", _json(MMN, lambda d: d["AKO6M"]["timestamps"].__setitem__(0, [-1.0, 8.8])),
     (MMN, "video 'AKO6M' sentence 0", "timestamps[0]", "negative")),
    ("mmn", "reversed", _json(MMN, lambda d: d["AKO6M"]["timestamps"].__setitem__(0, [8.8, 0.0])),
     (MMN, "video 'AKO6M' sentence 0", "timestamps[0]", "start 8.8 > end 0")),
    ("mmn", "past_duration", _json(MMN, lambda d: d["AKO6M"]["timestamps"].__setitem__(1, [12.7, 28.0])),
     (MMN, "video 'AKO6M' sentence 1", "timestamps[1]", "past the video duration")),
    ("mmn", "empty_text", _json(MMN, lambda d: d["AKO6M"]["sentences"].__setitem__(1, "")),
     (MMN, "video 'AKO6M' sentence 1", "sentences[1]", "empty")),
    ("mmn", "non_utf8", _text(MMN, "turn a light", b"turn a \xff light"),
     (MMN, "video '3MSZA' sentence 0", "sentences[0]", "not valid UTF-8")),
    ("mmn", "duplicate_id", _text(MMN, '"AKO6M"', '"3MSZA"'),
     (MMN, "video '3MSZA'", "video id", "duplicate video id")),
    ("mmn", "missing_video", _remove("videos/AKO6M.mp4"),
     (MMN, "video 'AKO6M'", "video", "video file not found")),
    # ActivityNet Speech (MMN layout + WAVs)
    ("activitynet_speech", "missing_key", _json(SPEECH, _delete("v_bXdq2zI1Ms0", "audios")),
     (SPEECH, "video 'v_bXdq2zI1Ms0'", "audios", "missing key 'audios'")),
    ("activitynet_speech", "wrong_type", _json(SPEECH, _set("v_bXdq2zI1Ms0", "audios", [1, 2])),
     (SPEECH, "video 'v_bXdq2zI1Ms0' sentence 0", "audios", "audio file not found: raw/audio/1")),
    ("activitynet_speech", "count",
     _json(SPEECH, _set("v_bXdq2zI1Ms0", "audios", ["bXdq2zI1Ms0_train_1.wav"])),
     (SPEECH, "video 'v_bXdq2zI1Ms0'", "audios", "1 audios for 2 sentences")),
    ("activitynet_speech", "reversed",
     _json(SPEECH, lambda d: d["v_bXdq2zI1Ms0"]["timestamps"].__setitem__(1, [43.49, 37.28])),
     (SPEECH, "video 'v_bXdq2zI1Ms0' sentence 1", "timestamps[1]", "start 43.49 > end 37.28")),
    ("activitynet_speech", "missing_wav", _remove("audio/bXdq2zI1Ms0_train_1.wav"),
     (SPEECH, "video 'v_bXdq2zI1Ms0' sentence 0", "audios", "audio file not found")),
    ("activitynet_speech", "missing_video", _remove("videos/v_bXdq2zI1Ms0.mp4"),
     (SPEECH, "video 'v_bXdq2zI1Ms0'", "video", "video file not found")),
    # TACoS (frame indices)
    ("tacos", "malformed", _write(TACOS, "{"), (TACOS, "whole file", "file", "malformed JSON")),
    ("tacos", "missing_key", _json(TACOS, _delete("s30-d52.avi", "fps")),
     (TACOS, "video 's30-d52.avi'", "fps", "missing key 'fps'")),
    ("tacos", "wrong_type", _json(TACOS, _set("s30-d52.avi", "num_frames", "many")),
     (TACOS, "video 's30-d52.avi'", "num_frames", "must be a number, got 'many'")),
    ("tacos", "zero_fps", _json(TACOS, _set("s30-d52.avi", "fps", 0)),
     (TACOS, "video 's30-d52.avi'", "fps", "fps must be > 0, got 0")),
    ("tacos", "nan", _json(TACOS, lambda d: d["s30-d52.avi"]["timestamps"].__setitem__(0, [NAN, 354])),
     (TACOS, "video 's30-d52.avi' sentence 0", "timestamps[0] start (frame)", "must be a finite number")),
    ("tacos", "negative", _json(TACOS, lambda d: d["s30-d52.avi"]["timestamps"].__setitem__(0, [-141, 354])),
     (TACOS, "video 's30-d52.avi' sentence 0", "timestamps[0]", "negative")),
    ("tacos", "reversed", _json(TACOS, lambda d: d["s30-d52.avi"]["timestamps"].__setitem__(0, [354, 141])),
     (TACOS, "video 's30-d52.avi' sentence 0", "timestamps[0]", ">")),
    ("tacos", "past_duration",
     _json(TACOS, lambda d: d["s30-d52.avi"]["timestamps"].__setitem__(1, [619, 9000])),
     (TACOS, "video 's30-d52.avi' sentence 1", "timestamps[1]", "past the video duration")),
    ("tacos", "empty_text", _json(TACOS, lambda d: d["s30-d52.avi"]["sentences"].__setitem__(1, "")),
     (TACOS, "video 's30-d52.avi' sentence 1", "sentences[1]", "empty")),
    ("tacos", "missing_video", _remove("videos/s30-d52.avi"),
     (TACOS, "video 's30-d52.avi'", "video", "video file not found")),
    # MSR-VTT
    ("msrvtt", "malformed", _write(MSR, '{"videos": [,]}'), (MSR, "whole file", "file", "malformed JSON")),
    ("msrvtt", "missing_key", _json(MSR, _delete("sentences", 0, "video_id")),
     (MSR, "sentences[0]", "video_id", "missing key 'video_id'")),
    ("msrvtt", "wrong_type", _json(MSR, _set("sentences", 0, "caption", 42)),
     (MSR, "sentences[0]", "caption", "must be a string, got the number 42")),
    ("msrvtt", "empty_text", _json(MSR, _set("sentences", 0, "caption", "  ")),
     (MSR, "sentences[0]", "caption", "empty")),
    ("msrvtt", "unknown_id", _text(MSR_CSV, "video1", "video404"),
     (MSR_CSV, "line 3", "video_id", "unknown video id 'video404'")),
    ("msrvtt", "duplicate_id", _text(MSR_CSV, "video1", "video0"),
     (MSR_CSV, "line 3", "video_id", "duplicate video id 'video0'")),
    ("msrvtt", "missing_video", _remove("videos/video1.mp4"),
     (MSR, "video 'video1'", "video", "video file not found")),
    # MSVD
    ("msvd", "malformed", _write(MSVD_PKL, b"not a pickle"),
     (MSVD_PKL, "whole file", "file", "only plain Python values")),
    ("msvd", "wrong_type", _pickle(MSVD_PKL, {"-4wsuPCjDBc_5_15": "a squirrel",
                                              "-7KMZQEsJW4_205_208": [["a", "woman"]]}),
     (MSVD_PKL, "video '-4wsuPCjDBc_5_15'", "captions of '-4wsuPCjDBc_5_15'",
      "must be a list, got the string")),
    ("msvd", "empty_text",
     _pickle(MSVD_PKL, {"-4wsuPCjDBc_5_15": [[]], "-7KMZQEsJW4_205_208": [["a", "woman"]]}),
     (MSVD_PKL, "video '-4wsuPCjDBc_5_15' caption 0", "caption 0", "is empty")),
    ("msvd", "unknown_id", _text(MSVD_LIST, "-7KMZQEsJW4_205_208", "nosuchvideo"),
     (MSVD_LIST, "line 2", "video id", "unknown video id 'nosuchvideo'")),
    ("msvd", "duplicate_id", _text(MSVD_LIST, "-7KMZQEsJW4_205_208", "-4wsuPCjDBc_5_15"),
     (MSVD_LIST, "line 2", "video id", "duplicate video id")),
    ("msvd", "missing_video", _remove("videos/-7KMZQEsJW4_205_208.avi"),
     (MSVD_PKL, "video '-7KMZQEsJW4_205_208'", "video", "video file not found")),
    # DiDeMo
    ("didemo", "malformed", _write(DIDEMO, '[{"video": "x",'),
     (DIDEMO, "whole file", "file", "malformed JSON")),
    ("didemo", "missing_key", _json(DIDEMO, _delete(1, "times")),
     (DIDEMO, "entry 1", "times", "missing key")),
    ("didemo", "wrong_type", _json(DIDEMO, _set(1, "times", "5-5")),
     (DIDEMO, "entry 1", "times", "must be a list")),
    ("didemo", "negative", _json(DIDEMO, _set(1, "times", [[-1, 0], [-1, 0]])),
     (DIDEMO, "entry 1", "times", "is not a chunk range")),
    ("didemo", "reversed", _json(DIDEMO, _set(1, "times", [[5, 3], [5, 3]])),
     (DIDEMO, "entry 1", "times", "[5, 3] is not a chunk range")),
    ("didemo", "past_duration", _json(DIDEMO, _set(1, "times", [[9, 9], [9, 9]])),
     (DIDEMO, "entry 1", "times", "ends past num_segments 6")),
    ("didemo", "empty_text", _json(DIDEMO, _set(1, "description", "")),
     (DIDEMO, "entry 1", "description", "empty")),
    ("didemo", "non_utf8", _text(DIDEMO, "climbs onto", b"climbs \xff onto"),
     (DIDEMO, "entry 1", "description", "not valid UTF-8")),
    ("didemo", "unknown_id", _text(DIDEMO_LIST, DV, "nosuch.m4v"),
     (DIDEMO, "entry 0", "video", "unknown video id")),
    ("didemo", "duplicate_id", _text(DIDEMO_LIST, "47704451", f"{DV}\n47704451"),
     (DIDEMO_LIST, "line 2", "video", "duplicate video id")),
    ("didemo", "missing_video", _remove(f"videos/{DV}"),
     (DIDEMO, f"video '{DV}'", "video", "video file not found")),
    # Ego4D-HCap
    ("ego4d_hcap", "malformed", _write(EGO_SUM, "[{"), (EGO_SUM, "whole file", "file", "malformed JSON")),
    ("ego4d_hcap", "malformed_pickle", _write(EGO_CLIPS, b"\x80\x04junk"),
     (EGO_CLIPS, "whole file", "file", "pickle data was truncated")),
    ("ego4d_hcap", "missing_key", _json(EGO_SUM, _delete(0, "video_summary")),
     (EGO_SUM, "entry 0", "video_summary", "missing key")),
    ("ego4d_hcap", "wrong_type", _json(EGO_SUM, _set(0, "end_sec", "1.6s")),
     (EGO_SUM, "entry 0", "end_sec", "must be a number, got '1.6s'")),
    ("ego4d_hcap", "nan", _pickle(EGO_CLIPS, [(EGO_VID, NAN, 0.8, "#C C opens the fridge"), EGO_OK[1]]),
     (EGO_CLIPS, "entry 0", "start_sec", "must be a finite number, got nan")),
    ("ego4d_hcap", "negative", _pickle(EGO_CLIPS, [(EGO_VID, -1.0, 0.8, "#C C opens the fridge"), EGO_OK[1]]),
     (EGO_CLIPS, "entry 0", "start_sec/end_sec", "negative time")),
    ("ego4d_hcap", "reversed", _pickle(EGO_CLIPS, [(EGO_VID, 0.8, 0.0, "#C C opens the fridge"), EGO_OK[1]]),
     (EGO_CLIPS, "entry 0", "start_sec/end_sec", "start 0.8 > end 0")),
    ("ego4d_hcap", "past_duration", _pickle(EGO_CLIPS, [EGO_OK[0], (EGO_VID, 0.8, 9.0, "#C C takes bread")]),
     (EGO_CLIPS, "entry 1", "times", "past the video duration 2")),
    ("ego4d_hcap", "empty_text", _json(EGO_SUM, _set(0, "video_summary", "")),
     (EGO_SUM, "entry 0", "video_summary", "empty")),
    ("ego4d_hcap", "non_utf8", _text(EGO_SUM, "made a sandwich", b"made a \xff sandwich"),
     (EGO_SUM, "entry 0", "video_summary", "not valid UTF-8")),
    ("ego4d_hcap", "missing_video", _remove(f"videos/{EGO_VID}.mp4"),
     (EGO_CLIPS, f"video '{EGO_VID}'", "video", "video file not found")),
    # MSRVTT-QA
    ("msrvtt_qa", "malformed", _text(QA, '"answer_type": "what"}\n{', '"answer_type": "what"\n{'),
     (QA, "line 1", "line", "not valid JSON")),
    ("msrvtt_qa", "missing_key", _text(QA, '"question": "what is shown?", ', ""),
     (QA, "line 2", "question", "missing key")),
    ("msrvtt_qa", "wrong_type", _text(QA, '"answer": "car"', '"answer": 1'),
     (QA, "line 2", "answer", "not in the closed answer set")),
    ("msrvtt_qa", "empty_text", _text(QA, "what is shown?", ""), (QA, "line 2", "question", "empty")),
    ("msrvtt_qa", "non_utf8", _text(QA, "what is shown", b"what \xff is shown"),
     (QA, "line 2", "question", "not valid UTF-8")),
    ("msrvtt_qa", "answer_set", _write(QA_ANS, '{"couch": 0, "car": 1, "couch": 2}'),
     (QA_ANS, "whole file", "file", "more than once")),
    ("msrvtt_qa", "missing_video", _remove("videos/video0.mp4"),
     (QA, "video 'video0'", "video", "video file not found")),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, clips) -> Path:  # noqa: F811
    return build_project(tmp_path_factory.mktemp("annotations"), clips)


@pytest.fixture(scope="module")
def clean_sources(pristine) -> dict[str, dict]:
    """Each format's source report on the unbroken fixtures (which must have no problem)."""
    cwd = Path.cwd()
    os.chdir(pristine)
    try:
        reports = {fmt: _run(pristine, fmt, "skip").report for fmt in SRC}
    finally:
        os.chdir(cwd)
    assert all(r["skipped"] == [] for r in reports.values()), "the fixtures themselves have problems"
    return {fmt: r["sources"][0] for fmt, r in reports.items()}


@pytest.fixture
def project(pristine, tmp_path) -> Path:
    """A copy of the pristine project whose files are hard links (cheap); breakers write new files."""
    shutil.copytree(pristine / "raw", tmp_path / "raw", copy_function=os.link)
    return tmp_path


def _run(project: Path, fmt: str, on_error: str):
    cfg = {"root": "raw", "on_error": on_error, "time_tolerance": 1.0, "probe_workers": 2,
           "sources": [dict(SRC[fmt], videos="videos")]}
    return ingest(cfg, progress=False)


@pytest.mark.parametrize("fmt, case, breaker, expected", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_annotation_is_named_or_listed(project, clean_sources, monkeypatch, fmt, case, breaker, expected):
    monkeypatch.chdir(project)
    breaker(project)
    file, entry, field, words = expected
    file = f"{AN}/{file}"

    with pytest.raises(UserError) as err:
        _run(project, fmt, "fail")
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"{file}: ")
    if entry != "whole file":
        assert f": {entry}" in line
    assert words in line

    res = _run(project, fmt, "skip")
    report = res.report
    listed = [s for s in report["skipped"] if s["file"] == file and entry in s["entry"]]
    assert listed, report["skipped"]
    assert field in {s["field"] for s in listed}
    assert all(s["reason"] and s["source"] for s in report["skipped"])
    (src,) = report["sources"]
    before = clean_sources[fmt]
    rows = sum(len(getattr(res.manifest, t)) for t in ("events", "queries", "captions", "hierarchy", "qa"))
    assert rows == src["kept"] and src["dropped"] == sum(s["dropped"] for s in report["skipped"])
    if entry == "whole file":
        assert src["kept"] == 0 and len(listed) == 1 and listed[0]["field"] == "file"
    elif case not in KEEPS_EVERY_ROW:
        assert src["kept"] < before["kept"]  # the broken entry's rows are left out, the rest kept


# a second copy of a list line: nothing is lost, the copy is listed
KEEPS_EVERY_ROW = {"duplicate_id"}


@pytest.mark.parametrize("fmt, breaker, lost", [
    ("activitynet_captions", _json(ANET, _delete(V1, "sentences")), 3),
    ("mmn", _json(MMN, _delete("AKO6M", "sentences")), 2),
    ("mmn", _json(MMN, _set("AKO6M", "sentences", ["only one"])), 2),
    ("tacos", _json(TACOS, _delete("s30-d52.avi", "fps")), 2),
])
def test_a_dropped_video_entry_counts_all_its_events(project, clean_sources, monkeypatch, fmt, breaker, lost):
    """Every input entry is in the manifest or counted: a video entry dropped whole counts each of its
    events, also when the list it lacks or has short is the sentences (its timestamps still tell)."""
    monkeypatch.chdir(project)
    before = clean_sources[fmt]
    breaker(project)
    (after,) = _run(project, fmt, "skip").report["sources"]
    assert after["kept"] == before["kept"] - lost and after["dropped"] == lost
    assert after["entries"] == before["entries"]
