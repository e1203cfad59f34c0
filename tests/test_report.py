"""The report: family tables (absent families read "not computed"), the headline table, the SVG drawings, the
stage on a small hand-made project (thumbnails cut by ffmpeg), and the page in headless Chromium.

The full pipeline's report (every family, real predictions) is checked in tests/test_pipeline.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.media import lavfi_video
from vidmem.manifest import Event, HierarchyText, Manifest, Query, Video
from vidmem.report import browser
from vidmem.report.families import FAMILIES, NOT_COMPUTED, Family, headlines, load_tables
from vidmem.report.headline import table as headline_table
from vidmem.report.page import ReportData, render
from vidmem.report.svg import Series, Span, Track, line_chart, timeline

REPO = Path(__file__).resolve().parents[1]
DENSE = {
    "METEOR": 0.0470,
    "METEOR_2021": 0.0526,
    "CIDEr": 0.1387,
    "Bleu_4": 1e-6,
    "ROUGE_L": 0.122,
    "SODA_c": 0.0583,
    "Precision": 0.44,
    "Recall": 0.371,
    "F1": 0.4026,
    "n_videos": 2,
    "toolchain": {},
}


def write_metrics(root: Path, **files: dict) -> Path:
    d = root / "metrics"
    d.mkdir(parents=True, exist_ok=True)
    for stem, obj in files.items():
        (d / f"{stem}.json").write_text(json.dumps(obj))
    return d


def dense_only(root: Path) -> Path:
    return write_metrics(
        root, cm2=DENSE, pdvc={**DENSE, "METEOR": 0.0463}, dense_trivial={**DENSE, "METEOR": 0.0102}
    )


def test_absent_families_read_not_computed(tmp_path):
    tables = {t.family.key: t for t in load_tables(dense_only(tmp_path))}
    dense = tables["dense"]
    assert dense.computed and not dense.missing
    assert dense.row("cm2").values["METEOR"] == pytest.approx(4.70)  # ×100, as the papers print it
    assert [r.role for r in dense.rows] == ["method", "baseline", "floor"]
    for key in ("retrieval", "grounding", "recap", "clip", "membridge_ret"):
        assert not tables[key].computed and tables[key].missing, key
    html = render(ReportData("t", list(tables.values())))
    section = html[html.index('id="family-grounding"') : html.index('id="family-recap"')]
    assert NOT_COMPUTED in section and "grounding.json" in section
    assert "4.70" in html and "4.63" in html and "8.55" in html  # CM2, PDVC, the CM2 paper row
    assert html.count(NOT_COMPUTED) >= 5
    for sid in ("metrics", "curves", "timelines", "grounding", "retrieval", "hierarchy"):
        assert f'<section id="{sid}">' in html


def test_headline_table_marks_missing_families(tmp_path):
    metrics = dense_only(tmp_path)
    rows = {h.family: h for h in headlines(load_tables(metrics))}
    assert rows["dense"].method_value == pytest.approx(4.70) and rows[
        "dense"
    ].baseline_value == pytest.approx(4.63)
    assert rows["retrieval"].status == NOT_COMPUTED and rows["membridge_qa"].status == NOT_COMPUTED
    assert "bank" not in rows  # no baseline: not a headline row
    text = headline_table(metrics)
    assert re.search(r"dense\s+METEOR\s+CM2.*4\.70\s+PDVC\s+4\.63\s+\+0\.07", text), text
    assert re.search(r"retrieval\s+.*not computed", text)
    out = subprocess.run(
        [sys.executable, "-m", "vidmem.report.headline", str(metrics)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout
    assert "not computed" in out and "4.70" in out


def test_rows_read_their_own_keys(tmp_path):
    """CLIP tuning: the chance row reads chance_r1 as its R@1 and has no R@5."""
    val = {"r1": 0.08, "r5": 0.16, "chance_r1": 0.015}
    metrics = write_metrics(tmp_path, clip={"val_tuned": val, "val_untuned": {**val, "r1": 0.0}})
    t = next(t for t in load_tables(metrics) if t.family.key == "clip")
    assert t.row("tuned").values == {"r1": pytest.approx(8.0), "r5": pytest.approx(16.0)}
    assert t.row("chance").values == {"r1": pytest.approx(1.5), "r5": None}


def test_a_family_file_with_unlisted_rows_is_shown_whole(tmp_path):
    """A new family's hook: its file's rows and numbers appear before its table is declared."""
    metrics = write_metrics(
        tmp_path,
        newfam={
            "newfam_a": {"t2v": {"R1": 12.5}, "acc": 0.25},
            "newfam_b": {"t2v": {"R1": 10.0}},
            "toolchain": {},
        },
    )
    undeclared = Family("newfam", "a family being written", ("newfam",))
    t = next(t for t in load_tables(metrics, (undeclared,)) if t.family.key == "newfam")
    assert t.computed and [r.name for r in t.rows] == ["newfam_a", "newfam_b"]
    assert t.row("newfam_a").values == {"t2v/R1": 12.5, "acc": 0.25}
    assert t.row("newfam_b").values["acc"] is None
    assert "12.500" in render(ReportData("t", [t]))


def test_membridge_tables_read_one_file_per_task(tmp_path):
    metrics = write_metrics(
        tmp_path,
        membridge={
            "membridge_ret": {"t2v": {"R1": 12.5}}, "membridge_ret_base": {"t2v": {"R1": 10.0}},
            "membridge_cap": {"beam": {"CIDEr": 0.5}, "greedy": {"CIDEr": 0.4}},
            "membridge_cap_base": {"beam": {"CIDEr": 0.7}},
            "membridge_qa": {"accuracy": 20.0}, "membridge_qa_base": {"accuracy": 19.0},
            "toolchain": {},
        },
    )
    t = {t.family.key: t for t in load_tables(metrics)}
    assert t["membridge_ret"].row("membridge_ret").values["t2v/R1"] == pytest.approx(12.5)
    assert t["membridge_cap"].row("membridge_cap").values["CIDEr"] == pytest.approx(50.0)  # beam, ×100
    assert t["membridge_qa"].row("membridge_qa_base").values["accuracy"] == pytest.approx(19.0)


def test_bad_metrics_json_names_the_file(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "cm2.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cm2\.json: not valid JSON"):
        load_tables(tmp_path / "metrics")


def test_svg_drawings():
    svg = line_chart(
        "loss", [Series("train", [1, 2, 3], [3.0, 2.0, float("nan")]), Series("val", [2], [2.5])]
    )
    assert svg.count("<polyline") == 1 and "<circle" in svg and "nan" not in svg.lower()
    assert "no points" in line_chart("empty", [Series("x", [], [])])
    spans = [Span(0, 5, "a"), Span(2, 6, "b"), Span(6, 8, "c")]  # a and b overlap: two lanes
    svg = timeline(10, [Track("truth", spans, "truth"), Track("pred", [Span(1, 3, "<x> & y", 0.5)])])
    assert svg.count('class="ev truth"') == 3 and "&lt;x&gt; &amp; y" in svg
    ys = set(
        re.findall(r'<rect x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="14" rx="3" class="ev truth"', svg)
    )
    assert len(ys) == 2  # stacked, not drawn over each other


# -------------------------------------------------------------------------------------------------- the stage
def small_project(root: Path) -> Path:
    """A manifest, two compressed test videos and one long one, predictions of every kind, a DVCLive curve."""
    comp = root / "data" / "compressed"
    lavfi_video(comp / "v1.mp4", 160, 120, fps=3, duration=6)
    lavfi_video(comp / "v2.mp4", 120, 160, fps=3, duration=5, source="testsrc2")
    lavfi_video(comp / "long.mp4", 160, 120, fps=3, duration=16)
    videos = [
        Video("v1", "raw/v1.mp4", 6.0),
        Video("v2", "raw/v2.mp4", 5.0),
        Video("long", "raw/long.mp4", 16.0),
    ]
    events = [
        Event("v1", "test", 0.5, 3.0, "a red circle moves left"),
        Event("v2", "test", 1, 4, "a square grows"),
        Event("v1", "test", 0.4, 2.8, "the red disc goes left", annotator=1),
    ]
    queries = [Query("charades_sta:test/v1/0", "v1", "test", 1.0, 3.0, "the circle moves left")]
    hierarchy = [
        HierarchyText(f"h{i}", "long", "test", "clip", 4.0 * i, 4.0 * i + 4, f"clip {i}") for i in range(4)
    ]
    hierarchy += [
        HierarchyText("s0", "long", "test", "segment", 0, 8, "first half"),
        HierarchyText("s1", "long", "test", "segment", 8, 16, "second half"),
        HierarchyText("v", "long", "test", "video", 0, 16, "a long video"),
    ]
    Manifest(videos=videos, events=events, queries=queries, hierarchy=hierarchy).write(
        root / "data" / "manifest"
    )
    pred = root / "data" / "predictions"
    (pred / "grounding").mkdir(parents=True)
    (pred / "retrieval").mkdir()
    (pred / "recap").mkdir()
    (pred / "cm2.json").write_text(
        json.dumps(
            {
                "version": "VERSION 1.0",
                "results": {
                    "v1": [{"timestamp": [0.2, 2.9], "sentence": "a red circle moves", "proposal_score": 0.9}]
                },
            }
        )
    )
    (pred / "grounding" / "mrnet.jsonl").write_text(
        json.dumps(
            {
                "vid": "v1",
                "query_idx": 0,
                "query": "the circle moves left",
                "pred_relevant_windows": [[0.5, 2.5, 0.7]],
            }
        )
    )
    rows = [{"text_id": "t0", "video_id": "v2", "sentence": "a square grows"}]
    (pred / "retrieval" / "emcl.rows.json").write_text(json.dumps(rows))
    (pred / "retrieval" / "emcl.cols.json").write_text(json.dumps(["v1", "v2"]))
    np.save(pred / "retrieval" / "emcl.npy", np.array([[0.9, 0.4]], dtype=np.float32))
    (pred / "recap" / "recap_clip.json").write_text(
        json.dumps({"clip": {f"long@{4 * i}-{4 * i + 4}": f"pred {i}" for i in range(4)}})
    )
    (pred / "recap" / "recap_segment.json").write_text(json.dumps({"segment": {"long@0-8": "pred half"}}))
    (pred / "recap" / "recap_video.json").write_text(
        json.dumps({"video": {"long@0-16": "predicted summary"}})
    )
    curve = root / "dvclive" / "cm2" / "plots" / "metrics"
    (curve / "train").mkdir(parents=True)
    (curve / "train" / "loss.tsv").write_text("step\tloss\n1\t3.0\n2\t2.0\n")
    dense_only(root)
    (root / "params.yaml").write_text("report:\n  videos: 2\n  thumbs: 3\n")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The stage's main() run in the small project (in this process: the test suite has torch loaded)."""
    from stages import report

    root = small_project(tmp_path_factory.mktemp("report"))
    here = Path.cwd()
    os.chdir(root)
    try:
        report.main()
    finally:
        os.chdir(here)
    return root / "reports" / "index.html"


def test_stage_writes_one_self_contained_page(built):
    html = built.read_text()
    assert sorted(p.name for p in built.parent.iterdir()) == ["index.html"]
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing from the network
    thumbs = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(thumbs) >= 2 * 3 + 1 + 2  # timelines, grounding, retrieval, tree
    assert all(t.startswith("/9j/") for t in thumbs)  # JPEG (FF D8 FF)
    assert 'data-video="v1"' in html and "a red circle moves" in html  # the timeline and its prediction
    assert "“the circle moves left”" in html and "0.5–2.5 s" in html  # grounding: predicted moment
    assert (
        '<div class="cand true" data-video="v2">' in html and "emcl: rank 2" in html
    )  # retrieval: true marked
    assert "predicted summary" in html and "second half" in html and "pred half" in html  # the hierarchy
    assert 'data-model="cm2"' in html and "<polyline" in html  # the DVCLive curve


def test_page_renders_in_headless_chromium(built, tmp_path):
    page = browser.load(built, tmp_path / "shot.png", 1000, 900)
    assert page.body.get("data-report") == "loaded" and page.body.get("data-errors") == "0", page.body
    assert page.body.get("data-sections") == "6" and page.console == []
    assert "4.70" in page.dom and NOT_COMPUTED in page.dom
    std, colours = browser.pixel_spread(tmp_path / "shot.png")
    assert std > 10 and colours > 50, (std, colours)


def test_chromium_reports_script_errors(tmp_path):
    """The check above can fail: a page with a script error and a network fetch is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        render(ReportData("t", load_tables(tmp_path / "none"))).replace(
            "</main>", '</main><img src="https://example.invalid/x.png"><script>undefined_function()</script>'
        )
    )
    page = browser.load(bad)
    assert int(page.body.get("data-errors", 0)) >= 1  # the script error (and the blocked image)
    assert any("undefined_function" in m for m in page.console)
    assert any("Content Security Policy" in m for m in page.console), page.console
    from PIL import Image

    Image.new("RGB", (400, 300), "white").save(tmp_path / "blank.png")
    assert browser.pixel_spread(tmp_path / "blank.png") == (0.0, 1)  # what a blank page measures


def test_every_family_has_a_distinct_key():
    keys = [f.key for f in FAMILIES]
    assert len(keys) == len(set(keys))
    for f in FAMILIES:
        assert all(r.file in f.files for r in f.rows), f.key
        if f.headline:
            assert f.headline.column in {c.key for c in f.columns}
            assert {f.headline.method, f.headline.baseline} <= {r.name for r in f.rows}


def test_killed_report_reruns_to_the_same_page(built, tmp_path):
    """kill -9 of `python -m stages.report` at every ffmpeg thumbnail cut it launches (the stage's points of
    work: there are few), then a rerun: the same page, byte for byte, and nothing of the killed run left
    beside it (a half-built `.reports.*.tmp`)."""
    from tests.kill import killed, stage

    root = small_project(tmp_path / "p")
    proc, n = stage(root, "stages.report", count=True, points="tools")
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (root / "reports" / "index.html").read_bytes()
    assert page == built.read_bytes()  # the stage's page does not depend on the process that wrote it
    assert n >= 2, f"only {n} tool launches"

    for at in range(1, n + 1):
        (root / f".reports.killed{at}.tmp").mkdir()  # what a kill inside the final write leaves behind
        proc, _ = stage(root, "stages.report", kill_at=at, points="tools")
        assert killed(proc), f"not killed at tool launch {at} of {n}: {proc.returncode} {proc.stderr[-2000:]}"
        proc, _ = stage(root, "stages.report")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (root / "reports" / "index.html").read_bytes() == page, f"killed at tool launch {at} of {n}"
        assert [p.name for p in root.iterdir() if p.name.startswith(".reports")] == []
