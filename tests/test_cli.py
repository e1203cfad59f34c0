"""The `vidmem` command without a trained pipeline: argument errors, missing checkpoints and indexes (one
line naming the command that makes them, exit status 2), finding videos, and the page's layout helpers. The
end-to-end runs on a trained tiny project are in tests/test_pipeline.py."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from cli.html import caption_page, lanes
from cli.index import Catalog, find_videos, video_id
from cli.main import main, parser

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def untrained(tmp_path) -> Path:
    """A project with the repository's params.yaml and no data/ (nothing trained yet)."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line, no stack trace
    assert lines[0].startswith("error: ")
    return lines[0]


# ----------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["caption"],
        ["index"],
        ["search"],
        ["search", "idx", "x", "--top", "0"],
        ["search", "idx", "x", "--moments", "a"],
        ["caption", "v.mp4", "--hierarchy-from", "-1"],
    ],
)
def test_argument_errors_exit_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2
    assert "usage: vidmem" in capsys.readouterr().err


def test_search_needs_exactly_one_query(tmp_path, capsys):
    rc, _, err = run(capsys, "search", str(tmp_path))
    assert rc == 2 and "give a sentence or --audio" in error_line(err)
    rc, _, err = run(capsys, "search", str(tmp_path), "a sentence", "--audio", "q.wav")
    assert rc == 2 and "one of them" in error_line(err)


def test_missing_index_names_the_command_that_makes_it(tmp_path, capsys):
    rc, _, err = run(capsys, "search", str(tmp_path / "nowhere"), "a red circle")
    assert rc == 2
    assert f"`vidmem index FOLDER --out {tmp_path / 'nowhere'}`" in error_line(err)


def test_index_needs_a_folder(tmp_path, capsys):
    rc, _, err = run(capsys, "index", str(tmp_path / "missing"))
    assert rc == 2 and "not a folder" in error_line(err)


def test_project_without_params(tmp_path, capsys):
    rc, _, err = run(capsys, "caption", str(tmp_path), "--project", str(tmp_path))
    assert rc == 2 and "no params.yaml" in error_line(err)


# ----------------------------------------------------------------------------------------------- checkpoints
def test_missing_checkpoints_name_their_stage(untrained, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    rc, _, err = run(capsys, "caption", str(videos), "--project", str(untrained))
    assert rc == 2 and "run `dvc repro finetune_clip`" in error_line(err)

    clip = untrained / "data" / "checkpoints" / "encoders" / "clip" / "best.pt"
    clip.parent.mkdir(parents=True)
    clip.write_bytes(b"")  # present: the next missing one is named
    rc, _, err = run(capsys, "caption", str(videos), "--project", str(untrained))
    line = error_line(err)
    assert rc == 2 and "data/checkpoints/dense/cm2/best.pt: checkpoint not found" in line
    assert "`dvc repro train@cm2`" in line and "--cm2 PATH" in line

    cm2 = tmp_path / "my_cm2.pt"
    cm2.write_bytes(b"")
    rc, _, err = run(capsys, "caption", str(videos), "--project", str(untrained), "--cm2", str(cm2))
    assert rc == 2 and "run `dvc repro ingest`" in error_line(err)  # the vocabulary comes next

    (untrained / "data" / "manifest").mkdir(parents=True)
    (untrained / "data" / "manifest" / "vocab.json").write_text("{}")
    rc, _, err = run(capsys, "caption", str(videos), "--project", str(untrained), "--cm2", str(cm2))
    assert rc == 2 and "`dvc repro train@recap_clip`" in error_line(err)  # the hierarchy's first level
    rc, _, err = run(
        capsys, "caption", str(videos), "--project", str(untrained), "--cm2", str(cm2), "--no-hierarchy"
    )
    # every checkpoint is there: each is loaded before any work, and an empty file is refused in one line
    assert rc == 2 and "my_cm2.pt: not a checkpoint torch can read" in error_line(err)


def one_video_index(tmp_path: Path) -> Path:
    """An index catalog naming one video (its stores need not exist: the model checks come first)."""
    index = tmp_path / "idx"
    index.mkdir()
    Catalog(
        videos={"a-1": {"input": {"path": "/x/a.mp4", "size": 1, "mtime_ns": 1}, "duration": 3.0,
                        "stores": {"clip": "clip-0"}}}
    ).write(index)
    return index


def test_search_names_the_missing_model(untrained, tmp_path, capsys):
    index = one_video_index(tmp_path)
    rc, _, err = run(capsys, "search", str(index), "a red circle", "--project", str(untrained))
    assert rc == 2 and "`dvc repro train@emcl`" in error_line(err)
    rc, _, err = run(capsys, "search", str(index), "--audio", "q.wav", "--project", str(untrained))
    assert rc == 2 and "`dvc repro train@mrnet_speech`" in error_line(err)


def test_an_unreadable_checkpoint_is_one_line(untrained, tmp_path, capsys):
    index = one_video_index(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    rc, _, err = run(
        capsys,
        "search",
        str(index),
        "--audio",
        "q.wav",
        "--project",
        str(untrained),
        "--mrnet-speech",
        str(bad),
        "--clip-checkpoint",
        str(bad),
    )
    assert rc == 2 and "not a checkpoint torch can read" in error_line(err)


# --------------------------------------------------------------------------------------------------- inputs
def test_find_videos_walks_folders_by_extension(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.mp4", "B.MKV", "sub/c.webm", "notes.txt", ".hidden.mp4", "sub/d.mov"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "idx" / "compressed").mkdir(parents=True)
    (tmp_path / "idx" / "compressed" / "own.mp4").write_bytes(b"x")
    files, bad = find_videos(
        [tmp_path, tmp_path / "notes.txt", tmp_path / "gone.mp4"], exclude=[tmp_path / "idx"]
    )
    names = [f.relative_to(tmp_path).as_posix() for f in files]
    assert names == [
        "B.MKV",
        "a.mp4",
        "notes.txt",
        "sub/c.webm",
        "sub/d.mov",
    ]  # a named file is taken as given
    assert bad == {str(tmp_path / "gone.mp4"): "no such file or folder"}


def test_video_ids_are_stable_safe_and_distinct(tmp_path):
    a, b = tmp_path / "x" / "my clip (1).mp4", tmp_path / "y" / "my clip (1).mp4"
    assert video_id(a) == video_id(a)
    assert video_id(a) != video_id(b)
    assert all(ch.isalnum() or ch in "_.=+-" for ch in video_id(a))
    assert video_id(a).startswith("my_clip_1")


# --------------------------------------------------------------------------------------------------- page
def test_overlapping_events_get_their_own_lanes():
    events = [{"timestamp": [0, 5]}, {"timestamp": [1, 3]}, {"timestamp": [4, 6]}, {"timestamp": [5.5, 7]}]
    assert lanes(events) == [0, 1, 1, 0]


def test_caption_page_is_self_contained_and_escaped():
    videos = {"v-1": {"path": "/videos/<odd>.mp4", "duration": 10.0, "events": 1}}
    results = {"v-1": [{"timestamp": [1.0, 4.0], "sentence": "a <b>red</b> circle", "proposal_score": 0.5}]}
    levels = {
        "clips": [["v-1", 0.0, 4.0, "a red circle"]],
        "segments": [{"vid": "v-1", "start_sec": 0.0, "end_sec": 10.0, "segment_description": "it moves"}],
        "videos": [{"vid": "v-1", "start_sec": 0.0, "end_sec": 10.0, "video_summary": "a circle moves"}],
    }
    page = caption_page(videos, results, levels, {"/videos/bad.mp4": "moov atom not found"})
    assert "&lt;b&gt;red&lt;/b&gt;" in page and "&lt;odd&gt;.mp4" in page
    assert "a circle moves" in page and "it moves" in page and "moov atom not found" in page
    assert "http" not in page and "<script" not in page


# ----------------------------------------------------------------------------------------------- packaging
def test_console_script_and_packages():
    """`pip install -e .` (make install) must make `vidmem` and find every package the command imports."""
    from setuptools import find_packages

    conf = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert conf["project"]["scripts"]["vidmem"] == "cli.main:console"
    found = set(find_packages(str(REPO), include=conf["tool"]["setuptools"]["packages"]["find"]["include"]))
    assert {
        "cli",
        "vidmem",
        "vidmem.formats",
        "vidmem.synth",
        "models",
        "models.encoders",
        "models.dense",
        "models.retrieval",
        "models.grounding",
        "models.recap",
        "metrics",
        "kernels",
        "stages",
    } <= found
    assert not any(p.startswith(("tests", "bench")) for p in found)
    assert json.loads((REPO / "models" / "encoders" / "model_configs" / "vidmem-tiny.json").read_text())


# ----------------------------------------------------------------------------------------------- the index
def test_index_resumes_and_updates_without_a_pipeline(tmp_path, monkeypatch):
    """update_index on a random-init tiny CLIP (tests/project.py): an interrupted first run (stopped after
    compress, as a kill would) resumes to the same index as an uninterrupted one; an update redoes only the
    new file and drops the removed one. The trained end-to-end version is in tests/test_pipeline.py."""
    import numpy as np

    import models.encoders.extract as extract
    from cli.index import IndexedFeatures, update_index
    from cli.project import Project
    from tests.media import garbage, lavfi_video
    from tests.project import make_project

    project = Project.open(str(make_project(tmp_path / "project")))
    folder = tmp_path / "videos"
    lavfi_video(folder / "one.mp4", 160, 120, fps=10, duration=3.0)
    lavfi_video(folder / "two.mkv", 120, 160, fps=10, duration=2.0, source="testsrc")
    garbage(folder / "bad.mp4")

    ref = update_index(tmp_path / "ref", [folder], project)
    assert sorted(ref.catalog.videos) == sorted(ref.added) and len(ref.added) == 2
    assert list(ref.failed) == [str(folder / "bad.mp4")]

    real = extract.extract_store

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(extract, "extract_store", killed)
    with pytest.raises(KeyboardInterrupt):
        update_index(tmp_path / "idx", [folder], project)
    assert not (tmp_path / "idx" / "index.json").exists()
    monkeypatch.setattr(extract, "extract_store", real)
    again = update_index(tmp_path / "idx", [folder], project)
    assert again.catalog.videos == ref.catalog.videos and again.catalog.failed == ref.catalog.failed
    fa, fb = (
        IndexedFeatures(tmp_path / "ref", ref.catalog, "clip"),
        IndexedFeatures(tmp_path / "idx", again.catalog, "clip"),
    )
    assert all(np.array_equal(fa.get(v), fb.get(v)) for v in ref.catalog.videos)

    (folder / "two.mkv").unlink()
    lavfi_video(folder / "three.mp4", 160, 120, fps=10, duration=2.0, source="testsrc")
    upd = update_index(tmp_path / "idx", [folder], project)
    (one,) = [v for v in ref.catalog.videos if v.startswith("one")]
    assert [len(upd.added), len(upd.changed), len(upd.removed), upd.unchanged] == [1, 0, 1, [one]]
    assert upd.catalog.videos[one] == ref.catalog.videos[one]
    assert len({e["stores"]["clip"] for e in upd.catalog.videos.values()}) == 2
    assert len(list((tmp_path / "idx" / "batches").iterdir())) == 2
