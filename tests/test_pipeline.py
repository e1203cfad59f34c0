"""The whole pipeline through DVC on a tiny config: every stage runs once end to end, a second `dvc repro` is a
no-op, `dvc exp run -S` reruns what a param change touches and `dvc metrics diff` shows the change.

The repository (tracked and new files, not data/) is copied into a temporary git repo, params.yaml is shrunk to
a few seconds of SynthVid and models of a few thousand parameters, and the real stages run via `dvc repro`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY_DENSE = {"hidden": 32, "heads": 2, "ffn_dim": 64, "norm_groups": 8, "num_queries": 4, "max_eseq_length": 4,
              "max_words": 10, "word_dim": 32, "rnn_size": 32, "att_hid": 32, "duration_unit_s": 0.5,
              "lr": 1.0e-3, "batch_size": 2, "epochs": 1, "select_by": "meteor_soda"}


TINY_MEMBRIDGE = {"epochs": 1, "batch_size": 4, "width": 16, "heads": 2, "ffn": 32, "layers": 1, "memory_slots": 8,
                  "bridges": 2, "max_frames": 4, "max_words": 8, "beam_size": 2, "rerank_top": 1}
MEMBRIDGE_MODELS = ("membridge_pre", "membridge_pre_base", "membridge_ret", "membridge_ret_base", "membridge_cap",
                    "membridge_cap_base", "membridge_qa", "membridge_qa_base")
MEMBRIDGE_FLOORS = ("membridge_chance", "membridge_dual", "membridge_top_caption", "membridge_top_answer")


TINY_RECAP = {"epochs": 2, "batch_size": 8, "hidden": 32, "heads": 2, "video_queries": 4, "text_queries": 4,
              "segment_feats": 4, "video_feats": 8, "clip_words": 10, "segment_words": 16, "video_words": 20,
              "segment_sec": 12}


def tiny_params(params: dict) -> dict:
    s = params["synth"]
    s["short"].update(count={"train": 4, "val": 2, "test": 2}, duration=[10, 12], events=[2, 3])
    s["long"].update(count={"train": 2, "val": 1, "test": 1}, duration=[24, 24], segment_sec=12)  # 2: a video per
                                                                        # cross-fitting fold
    s["video"].update(size=[160, 120], fps=6)
    s["events"]["duration"] = [3, 5]
    s["text"].update(captions_per_video=2, qa_per_video=2)
    params["finetune_clip"].update(epochs=1, batch_size=16)
    params["finetune_window"].update(epochs=2, batch_size=16, width=32, heads=2, warmup_steps=2)
    params["extract"].update(batch_size=16, rows_per_chunk=64, chunks_per_shard=2)
    params["families"]["dense"].update(TINY_DENSE)
    params["train"]["cm2"].update(window=4, soft_k=3)
    params["families"]["retrieval"].update(epochs=2, batch_size=4, max_frames=4, em_bases=4, em_iters=2, heads=2)
    params["families"]["recap"].update(TINY_RECAP)
    params["families"]["membridge"].update(TINY_MEMBRIDGE)
    for name in MEMBRIDGE_MODELS:
        params["train"][name]["epochs"] = 1
    params["families"]["grounding"].update(epochs=1, batch_size=4, pre_clips=16, num_clips=8, pooling_counts=[7],
                                           hidden=16, heads=2, ffn_dim=32, conv_hidden=16, kernel=3,
                                           conv_layers=1)
    return params


def run(root: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "VIDMEM_LOG": "WARNING", "PYTHONPATH": ""}
    proc = subprocess.run(list(args), cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline") / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        src = REPO / f
        results = f.startswith(("data/", "dvclive/")) or (f.startswith("metrics/") and f.endswith(".json"))
        if src.is_file() and not results and f != "dvc.lock":
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / f)
    params = tiny_params(yaml.safe_load((root / "params.yaml").read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        subprocess.run(cmd, cwd=root, check=True)
    run(root, "dvc", "repro")
    return root


RECAP_STAGES = ("train@recap_clip", "train@recap_clip_f0", "train@recap_clip_f1", "captions@clip",
                "train@recap_segment", "train@recap_segment_f0", "train@recap_segment_f1", "captions@segment",
                "train@recap_video", "captions@video", "train@recap_flat", "train@recapu", "evaluate@recap")


def test_every_stage_ran(project):
    stages = run(project, "dvc", "stage", "list", "--name-only").stdout.split()
    assert {"synth", "ingest", "compress", "finetune_clip", "finetune_window", "extract@clip", "extract@lavila",
            "extract@text", "bank", "train@pdvc", "train@cm2", "evaluate@pdvc", "evaluate@cm2", "evaluate@dense_trivial",
            "train@meanp", "train@emcl", "evaluate@retrieval", *RECAP_STAGES,
            "extract@audio", "train@mmn", "train@mrnet", "train@mrnet_speech", "evaluate@grounding",
            *(f"train@{m}" for m in MEMBRIDGE_MODELS), "evaluate@membridge", "report"} <= set(stages)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(stages) <= set(lock)
    for name in ("synth", "ingest", "compress", "clip", "window", "features_clip", "bank", "pdvc", "cm2",
                 "dense_trivial", "features_audio", "grounding"):
        assert (project / "metrics" / f"{name}.json").is_file(), name
    for name, tools in (("synth", {"ffmpeg", "libx264", "espeak-ng", "cpu"}),
                        ("compress", {"ffmpeg", "libx264", "cpu"})):
        # x264's assembly differs by the CPU's vector units: AVX-512 wrote other SynthVid bytes than AVX2
        assert set(json.loads((project / "metrics" / f"{name}.json").read_text())["toolchain"]) == tools, name
    compress = json.loads((project / "metrics" / "compress.json").read_text())
    assert (compress["partial"], compress["partial_videos"]) == (0, {})  # SynthVid decodes whole
    cm2 = json.loads((project / "metrics" / "cm2.json").read_text())
    assert {"METEOR", "CIDEr", "Bleu_4", "SODA_c", "Precision", "Recall", "F1"} <= set(cm2)
    pred = json.loads((project / "data" / "predictions" / "cm2.json").read_text())
    assert set(pred) >= {"version", "results"} and pred["results"]
    retrieval = json.loads((project / "metrics" / "retrieval.json").read_text())
    assert {"torch", "cpu"} <= set(retrieval.pop("toolchain"))  # beside the rows: what made the numbers
    assert set(retrieval) == {"meanp", "emcl", "retrieval_chance"}
    assert all({"t2v", "v2t"} <= set(row) for row in retrieval.values())
    sims = project / "data" / "predictions" / "retrieval"
    assert all((sims / f"{m}.{ext}").is_file() for m in retrieval for ext in ("npy", "rows.json", "cols.json"))
    grounding = json.loads((project / "metrics" / "grounding.json").read_text())
    grounding.pop("toolchain")
    assert set(grounding) == {"mmn", "mrnet", "mrnet_speech", "grounding_prior"}
    row = json.loads((project / "data" / "predictions" / "grounding" / "mrnet.jsonl").read_text().splitlines()[0])
    assert set(row) == {"vid", "query_idx", "query", "pred_relevant_windows"}
    recap = json.loads((project / "metrics" / "recap.json").read_text())
    recap.pop("toolchain")
    assert set(recap) == {"recap_clip", "recap_segment", "recap_video", "recap_flat", "recapu", "recap_trivial"}
    assert {"clip/CIDEr", "segment/CIDEr", "video/CIDEr", "video/rougeLsum"} <= set(recap["recapu"])
    for level, name in (("clip", "clips_train.pkl"), ("segment", "segments_val.pkl"), ("video", "videos_test.json")):
        assert (project / "data" / "captions" / level / name).is_file()
    for level in ("clip", "segment"):   # the train videos' captions come from the fold models, one video each
        read = json.loads((project / "data" / "captions" / level / "read.json").read_text())
        assert [(r["fold"], r["videos"]) for r in read["cross_fit"]] == [(0, 1), (1, 1)], level
        assert read["cross_fit"][0]["checkpoint"].endswith(f"recap_{level}_f0/best.pt")
    synth, ingest = (json.loads((project / "metrics" / f"{n}.json").read_text()) for n in ("synth", "ingest"))
    pseudo = synth["train"]["segment_descriptions_pseudo"] + synth["train"]["summaries_pseudo"]
    assert pseudo and ingest["hierarchy_pseudo"] == {"train": pseudo, "val": 0, "test": 0, "total": pseudo}
    membridge = json.loads((project / "metrics" / "membridge.json").read_text())
    membridge.pop("toolchain")
    assert set(membridge) == {*MEMBRIDGE_MODELS, *MEMBRIDGE_FLOORS}
    assert {"vtm", "mlm", "plm"} <= set(membridge["membridge_pre"])
    assert {"t2v", "v2t", "chance_R1"} <= set(membridge["membridge_ret"]) and "t2v" in membridge["membridge_ret_base"]
    assert {"CIDEr", "METEOR", "Bleu_4", "ROUGE_L"} <= set(membridge["membridge_cap"]["beam"])
    assert "greedy" in membridge["membridge_cap_base"] and "accuracy" in membridge["membridge_qa"]
    preds = project / "data" / "predictions" / "membridge"
    caption = json.loads((preds / "membridge_cap.json").read_text())
    assert caption and set(caption[0]) == {"video_id", "caption"}
    answers = json.loads((preds / "membridge_qa.json").read_text())
    assert answers and set(answers[0]) == {"question_id", "answer"}
    assert all((preds / f"membridge_ret.{ext}").is_file() for ext in ("npy", "rows.json", "cols.json"))


def test_a_video_without_features_is_counted_by_every_family(project, tmp_path):
    """A short test video and a long val video fail compression after the pipeline ran: extract lists them,
    and every family's test metrics say what was left out — the dense family scores the video 0 (densevid's
    rule), grounding scores its queries as misses, retrieval and MemBridge count it and its captions and
    questions; ReCap leaves the long video out instead of stopping."""
    work = tmp_path / "repo"  # a copy taken before the tests below change the project's params
    shutil.copytree(project, work, symlinks=True)
    events = [json.loads(ln) for ln in (work / "data/manifest/events.jsonl").read_text().splitlines()]
    hier = [json.loads(ln) for ln in (work / "data/manifest/hierarchy.jsonl").read_text().splitlines()]
    short = sorted({e["video_id"] for e in events if e["split"] == "test"})[0]
    long = sorted({h["video_id"] for h in hier if h["split"] == "val"})[0]
    ledger = work / "data/compressed/ledger.jsonl"
    rows = [json.loads(ln) for ln in ledger.read_text().splitlines()]
    for r in rows:
        if r["key"] in (short, long):
            r.update(status="failed", reason="moov atom not found")
            (work / "data/compressed" / f"{r['key']}.mp4").unlink()
    ledger.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for kind in ("clip", "lavila"):
        run(work, str(BIN / "python"), "-m", "stages.extract", kind)
        listed = json.loads((work / f"metrics/features_{kind}.json").read_text())
        assert listed["failed"] == 2, listed  # both listed (with the reason) in its ledger, never stored
    # MemBridge model by model: pre-training's test losses need two test videos, which the tiny split has not
    # left (a one-line error, as for any split that small)
    for name in ("pdvc", "retrieval", "grounding", "membridge_ret", "membridge_cap", "membridge_qa", "recap"):
        run(work, str(BIN / "python"), "-m", "stages.evaluate", name)
    dense = json.loads((work / "metrics/pdvc.json").read_text())
    assert dense["n_videos_missing"] == 1 and dense["videos_missing"] == [short]
    for family, rows_ in (("retrieval", ("meanp", "emcl", "retrieval_chance")),
                          ("grounding", ("mmn", "mrnet", "mrnet_speech"))):
        metrics = json.loads((work / f"metrics/{family}.json").read_text())
        for row in rows_:
            assert metrics[row]["videos_missing"] == [short], (family, row, metrics[row])
    for name in ("membridge_ret", "membridge_cap", "membridge_qa"):
        metrics = json.loads((work / f"metrics/{name}.json").read_text())
        assert metrics["videos_missing"] == [short], (name, metrics)
    grounding = json.loads((work / "metrics/grounding.json").read_text())
    before = json.loads((project / "metrics/grounding.json").read_text())
    assert grounding["mmn"]["n_queries"] == before["mmn"]["n_queries"]  # its queries still count, as misses
    assert grounding["mmn"]["n_queries_missing"] > 0
    assert json.loads((work / "metrics/membridge_qa.json").read_text())["n_questions_missing"] > 0
    assert json.loads((work / "metrics/retrieval.json").read_text())["meanp"]["n_texts_missing"] > 0
    recap = json.loads((work / "metrics/recap.json").read_text())
    assert recap["recap_video"]["n_videos_missing"] == 0  # the missing long video is a val one


def test_recap_curriculum_reruns_only_downstream(project):
    """A clip-level param change marks only the stages reading it changed (train@recap_clip, and captions@clip,
    which captions with that model's config; the rest follow their outputs); retraining
    the clip model from scratch with the same params reproduces it byte for byte, so nothing downstream reruns."""
    path = project / "params.yaml"
    orig = path.read_text()
    params = yaml.safe_load(orig)
    params["train"]["recap_clip"]["lr"] = 2.0e-3
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        changed = set(json.loads(run(project, "dvc", "status", "--json").stdout))
    finally:
        path.write_text(orig)
    assert changed == {"train@recap_clip", "captions@clip"}   # the two stages that read train.recap_clip
    shutil.rmtree(project / "data" / "checkpoints" / "recap" / "recap_clip")
    run(project, "dvc", "repro", "train@recap_clip")
    assert json.loads(run(project, "dvc", "status", "--json").stdout) == {}


def test_second_repro_is_a_fast_no_op(project):
    t = time.perf_counter()
    out = run(project, "dvc", "repro").stdout
    elapsed = time.perf_counter() - t
    assert "Running stage" not in out
    assert "up to date" in out.lower() or "didn't change" in out.lower()
    t = time.perf_counter()
    run(project, "dvc", "repro", "compress")
    assert time.perf_counter() - t < 3.0, "a no-op `dvc repro compress` must take under 3 s"
    assert elapsed < 15.0


TRAINED = ("finetune_clip", "pdvc", "cm2", "meanp", "emcl", "recap_clip", "recap_segment", "recap_video",
           "recap_flat", "recapu", "mmn", "mrnet", "mrnet_speech")


def test_report_renders_in_headless_chromium(project, tmp_path):
    """reports/index.html loads in Debian's chromium without a console message, shows every section and the
    numbers of the metrics files, and its screenshot is not blank."""
    from vidmem.report import browser

    html = project / "reports" / "index.html"
    assert sorted(p.name for p in html.parent.iterdir()) == ["index.html"]
    page = browser.load(html, tmp_path / "report.png", 1280, 2400)
    assert page.body.get("data-report") == "loaded" and page.body.get("data-errors") == "0", page.body
    assert page.body.get("data-sections") == "6" and page.console == [], page.console
    dom = page.dom
    for section in ("metrics", "curves", "timelines", "grounding", "retrieval", "hierarchy"):
        assert f'<section id="{section}">' in dom
    m = {n: json.loads((project / "metrics" / f"{n}.json").read_text())
         for n in ("cm2", "pdvc", "retrieval", "grounding", "recap")}
    for value in (m["cm2"]["METEOR"] * 100, m["pdvc"]["CIDEr"] * 100, m["retrieval"]["emcl"]["t2v"]["R1"],
                  m["grounding"]["mrnet"]["R@1,IoU@0.5"] * 100,
                  m["recap"]["recap_video"]["video/CIDEr"] * 100):
        assert f">{value:.2f}<" in dom, value
    for model in TRAINED:                                                       # every DVCLive curve
        assert f'data-model="{model}"' in dom, model
    assert dom.count("data:image/jpeg;base64,") >= 8                    # thumbnails from data/compressed
    assert "not computed" not in dom.split('id="family-membridge"')[0]           # every built family is there
    std, colours = browser.pixel_spread(tmp_path / "report.png")
    assert std > 10 and colours > 100, (std, colours)


@pytest.mark.slow
def test_plots_and_exp_show_cover_every_family(project):
    """Slow (two DVC commands over every plot and metrics file); the declarations it relies on are the
    dvc.yaml entries test_every_stage_ran reads back from dvc.lock."""
    plots = json.loads(run(project, "dvc", "plots", "show", "--json").stdout)
    files = json.dumps(plots)
    for model in TRAINED:
        assert f"dvclive/{model}/plots/metrics" in files, model
    shown = run(project, "dvc", "exp", "show", "--json").stdout
    for name in ("cm2", "pdvc", "dense_trivial", "retrieval", "grounding", "recap", "clip"):
        assert f"metrics/{name}.json" in shown, name


def descendants(root: Path, stages: set[str]) -> set[str]:
    """Every stage downstream of `stages` (from `dvc dag --dot` edges)."""
    dot = run(root, "dvc", "dag", "--dot").stdout
    edges = re.findall(r'"([^"]+)"\s*->\s*"([^"]+)"', dot)
    out, todo = set(), set(stages)
    while todo:
        todo = {b for a, b in edges if a in todo} - out
        out |= todo
    return out - stages


def test_one_model_param_reruns_only_its_stages(project):
    """`dvc exp run -S train.cm2.soft_k=…` touches train@cm2 and evaluate@cm2 (the stages that read
    train.cm2) and, downstream, only the report."""
    path = project / "params.yaml"
    orig = path.read_text()
    params = yaml.safe_load(orig)
    params["train"]["cm2"]["soft_k"] = 2
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        changed = set(json.loads(run(project, "dvc", "status", "--json").stdout))
    finally:
        path.write_text(orig)
    assert changed == {"train@cm2", "evaluate@cm2"}
    assert descendants(project, changed) == {"report"}


# ---------------------------------------------------------------------------------------------------- vidmem
# The `vidmem` command on videos the project did not make, with the checkpoints this tiny pipeline trained.
# Before the experiment test below, which changes the workspace.
VIDMEM = [str(BIN / "vidmem")] if (BIN / "vidmem").exists() else [sys.executable, "-m", "vidmem"]


@pytest.fixture(scope="module")
def own(project, tmp_path_factory) -> Path:
    from tests.own_videos import own_folder

    return own_folder(tmp_path_factory.mktemp("own") / "videos")


def vidmem(capsys, project: Path, *argv: str) -> str:
    from cli.main import main

    rc = main([*argv, "--project", str(project)])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    return out.out


def test_vidmem_caption_own_videos(project, own, tmp_path, capsys):
    from metrics.dense import read_predictions

    out = tmp_path / "captions"
    printed = vidmem(capsys, project, "caption", str(own), "--out", str(out), "--hierarchy-from", "10")
    videos = json.loads((out / "videos.json").read_text())
    names = {Path(v["path"]).name: (vid, v) for vid, v in videos["videos"].items()}
    assert set(names) == {"testsrc.mp4", "bars.mkv", "fractal.webm"}
    assert list(videos["failed"]) == [str(own / "broken.mp4")] and videos["failed"][str(own / "broken.mp4")]
    assert "broken.mp4" in printed and "testsrc.mp4" in printed
    results = read_predictions(out / "captions.json")  # the ActivityNet result format, validated
    assert set(results) == {vid for vid, _ in names.values()}
    for vid, v in names.values():
        length = {"testsrc.mp4": 12, "bars.mkv": 8, "fractal.webm": 6}[Path(v["path"]).name]
        assert abs(v["duration"] - length) < 0.5
        assert results[vid], vid
        for e in results[vid]:
            assert 0 <= e["timestamp"][0] <= e["timestamp"][1] <= v["duration"] + 1e-3  # the tiny model may
            assert isinstance(e["sentence"], str)                                  # write an empty caption
    levels = json.loads((out / "hierarchy.json").read_text())  # only the 12-s video is >= 10 s
    long_vid = names["testsrc.mp4"][0]
    assert {e["vid"] for e in levels["videos"]} == {long_vid} and levels["videos"][0]["video_summary"]
    assert {e["vid"] for e in levels["segments"]} == {long_vid}
    assert [round(c[1]) for c in levels["clips"]] == [0, 4, 8]   # a clip caption every 4 s
    page = (out / "index.html").read_text()
    assert all(n in page for n in names) and "broken.mp4" in page


@pytest.fixture(scope="module")
def own_index(project, own, tmp_path_factory) -> Path:
    from cli.main import main

    index = tmp_path_factory.mktemp("own_index") / "index"
    assert main(["index", str(own), "--out", str(index), "--project", str(project)]) == 0
    return index


def test_vidmem_index_and_search(project, own, own_index, tmp_path, capsys):
    from tests.own_videos import spoken

    catalog = json.loads((own_index / "index.json").read_text())
    assert sorted(Path(v["input"]["path"]).name for v in catalog["videos"].values()) == \
        ["bars.mkv", "fractal.webm", "testsrc.mp4"]
    assert list(catalog["failed"]) == [str(own / "broken.mp4")]
    wav = spoken(tmp_path / "q.wav", "a red circle grows")
    for query in (["a red circle moves left"], ["--audio", str(wav)]):
        printed = vidmem(capsys, project, "search", str(own_index), *query, "--json", "--moments", "2")
        rows = json.loads(printed)["results"]
        assert [r["rank"] for r in rows] == [1, 2, 3]
        assert {r["video_id"] for r in rows} == set(catalog["videos"])
        assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
        for r in rows:
            assert 1 <= len(r["moments"]) <= 2
            assert all(0 <= m["start"] < m["end"] <= r["duration"] + 1e-3 for m in r["moments"])
    table = vidmem(capsys, project, "search", str(own_index), "a red circle", "--top", "1")
    assert "ranked by emcl" in table and len([line for line in table.splitlines() if " s   " in line]) == 3


def test_vidmem_index_update_processes_only_changes(project, own, own_index, capsys):
    from tests.own_videos import SOURCES, lavfi

    before = json.loads((own_index / "index.json").read_text())["videos"]
    by_name = {Path(e["input"]["path"]).name: v for v, e in before.items()}
    (own / "fractal.webm").unlink()                                     # removed
    source, _, codec = SOURCES["bars.mkv"]
    lavfi(own / "bars.mkv", source, 9, codec)                           # changed: 9 s now
    source, _, codec = SOURCES["testsrc.mp4"]
    lavfi(own / "new" / "late.mp4", source.replace("testsrc", "testsrc2"), 5, codec)   # new
    printed = vidmem(capsys, project, "index", str(own), "--out", str(own_index))
    assert "1 new, 1 changed, 1 unchanged, 1 removed, 1 failed" in printed
    after = json.loads((own_index / "index.json").read_text())["videos"]
    kept, bars = by_name["testsrc.mp4"], by_name["bars.mkv"]
    assert after[kept] == before[kept]                                  # untouched: same store, not redone
    assert abs(after[bars]["duration"] - 9) < 0.5 and after[bars]["stores"] != before[bars]["stores"]
    (new,) = set(after) - {kept, bars}
    assert after[new]["stores"] == after[bars]["stores"] != after[kept]["stores"]  # one new batch for both
    assert sorted(p.name for p in (own_index / "batches").iterdir()) == \
        sorted({e["stores"]["clip"] for e in after.values()})           # only batches still pointed at
    doc = json.loads(vidmem(capsys, project, "search", str(own_index), "a shape", "--json"))
    assert {r["video_id"] for r in doc["results"]} == set(after)


@pytest.mark.slow  # a second interpreter (~10 s); the fast variant: tests/test_cli.py (an interrupted update)
def test_vidmem_index_resumes_after_kill(project, own, own_index, tmp_path, capsys):
    """kill -9 mid-way (after the first compressed video), rerun: the same index as an uninterrupted run."""
    import signal

    import numpy as np

    from cli.index import Catalog, IndexedFeatures

    index = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*VIDMEM, "index", str(own), "--out", str(index), "--project", str(project)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t = time.monotonic()
    while not list((index / "compressed").glob("[!.]*.mp4")) and proc.poll() is None \
            and time.monotonic() - t < 120:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (index / "index.json").exists(), "the run finished before the kill"
    vidmem(capsys, project, "index", str(own), "--out", str(index))
    a, b = Catalog.read(own_index), Catalog.read(index)
    strip = lambda c: {v: {k: x for k, x in e.items() if k != "stores"} for v, e in c.videos.items()}  # noqa: E731
    assert strip(a) == strip(b) and a.failed == b.failed
    fa, fb = IndexedFeatures(own_index, a, "clip"), IndexedFeatures(index, b, "clip")
    for vid in a.videos:
        assert np.array_equal(fa.get(vid), fb.get(vid))
        assert np.array_equal(fa.get(vid, "times"), fb.get(vid, "times"))


def test_exp_run_reruns_and_metrics_diff_shows_the_change(project):
    run(project, "git", "add", "-A")
    run(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline results")
    out = run(project, "dvc", "exp", "run", "-S", "synth.short.count.train=5", "compress").stdout
    for stage in ("synth", "ingest", "compress"):
        assert f"Running stage '{stage}'" in out
    diff = json.loads(run(project, "dvc", "metrics", "diff", "--json").stdout)
    changed = {(path, key) for path, metrics in diff.items() for key in metrics}
    assert any(p.endswith("synth.json") for p, _ in changed) and any(p.endswith("ingest.json") for p, _ in changed)
    assert any(p.endswith("compress.json") for p, _ in changed)

