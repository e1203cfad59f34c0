"""Evaluators under failure: a METEOR JVM that hangs, dies or answers garbage is detected with a timeout and
reported (never a hang, no JVM left behind), also through the dense evaluator's command line; predictions
with an empty list for a video score 0 like an absent one; predictions for a video the references lack are
ignored, as densevid_eval ignores them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metrics.captions import Meteor, MeteorError
from metrics.dense import evaluate_dense, write_predictions
from tests.test_compress import _our_processes
from tests.test_metrics_dense import meteor, pred, ref  # noqa: F401  (meteor: pytest fixture)

REPO = Path(__file__).resolve().parents[1]
GUITAR = "a man plays a guitar on a stage"
DOG = "a dog runs across the park"

# fake `java` programs standing in for a METEOR JVM that misbehaves (argv[0] carries the test's marker)
FAKE_JVM = {
    "hangs": "exec -a {marker} sleep 600",
    "dies": "echo 'Error: Could not create the Java Virtual Machine.' >&2; exit 3",
    "garbage": "exec -a {marker} bash -c 'while read -r line; do echo \"not a number\"; done'",
    "silent_after_one": "exec -a {marker} bash -c 'read -r line; echo 1.0; sleep 600'",
}
WANT = {
    "hangs": "no answer within 1 s (JVM hung)",
    "dies": "exited with status 3",
    "garbage": "unexpected METEOR statistics line 'not a number'",
    "silent_after_one": "no answer within 1 s (JVM hung)",
}


def fake_java(tmp_path: Path, mode: str) -> tuple[Path, str]:
    marker = f"vidmem-fake-jvm-{mode}-{os.getpid()}-{tmp_path.name}"
    path = tmp_path / "java"
    path.write_text("#!/bin/bash\n" + FAKE_JVM[mode].format(marker=marker) + "\n")
    path.chmod(0o755)
    return path, marker


@pytest.mark.parametrize("mode", list(FAKE_JVM))
def test_broken_meteor_jvm_is_reported_within_its_timeouts(tmp_path, mode):
    java, marker = fake_java(tmp_path, mode)
    scorer = Meteor(java=str(java), timeout_s=1.0, start_timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(MeteorError) as err:
        scorer.score([("a cat sits", ["a cat sits"]), ("a dog", ["a dog runs"])])
    elapsed = time.monotonic() - t0
    assert "METEOR failed twice, giving up" in str(err.value) and WANT[mode] in str(err.value)
    assert scorer.starts == 2  # one restart, then the report
    assert elapsed < 10, f"took {elapsed:.1f} s with 1-s timeouts"
    assert scorer.pid is None and _our_processes(marker) == {}  # no JVM left running
    if mode == "dies":
        assert "Could not create the Java Virtual Machine" in str(err.value)  # the JVM's own last words


def _java_wrapper(tmp_path: Path, meteor_mode: str) -> Path:
    """A `java` on PATH that runs the real JVM for the PTB tokenizer and a broken one for METEOR."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake, _ = fake_java(tmp_path, meteor_mode)
    real = shutil.which("java")
    (bin_dir / "java").write_text(
        "#!/bin/bash\n"
        f'for a in "$@"; do case "$a" in *meteor-1.5.jar) exec {fake} "$@";; esac; done\n'
        f'exec {real} "$@"\n')
    (bin_dir / "java").chmod(0o755)
    return bin_dir


def _dense_cli(tmp_path: Path, bin_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    (tmp_path / "val_1.json").write_text(json.dumps({"v": ref((0, 10, GUITAR))}))
    write_predictions(tmp_path / "results.json", {"v": pred((0, 10, GUITAR))})
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "VIDMEM_LOG": "WARNING"}
    cmd = [sys.executable, "-m", "metrics.dense", "results.json", "val_1.json", "--tious", "0.5",
           "-o", "scores.json"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_dense_evaluator_reports_a_dead_meteor_jvm(tmp_path):
    proc = _dense_cli(tmp_path, _java_wrapper(tmp_path, "dies"), timeout=120)
    assert proc.returncode != 0 and not (tmp_path / "scores.json").exists()
    last = proc.stderr.strip().splitlines()[-1]
    assert "METEOR failed twice, giving up: the JVM exited with status 3" in last, proc.stderr[-2000:]


@pytest.mark.slow
def test_dense_evaluator_reports_a_hung_meteor_jvm(tmp_path):
    """With the default timeouts (start 180 s, then 60 s per answer): detected and reported, not a hang."""
    proc = _dense_cli(tmp_path, _java_wrapper(tmp_path, "hangs"), timeout=2 * 180 + 120)
    assert proc.returncode != 0 and not (tmp_path / "scores.json").exists()
    assert "no answer within 180 s (JVM hung)" in proc.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------ densevid conventions
REFS = [{"v1": ref((0, 10, GUITAR), (10, 20, DOG)), "v2": ref((0, 10, DOG))}]
PERFECT = {"v1": pred((0, 10, GUITAR), (10, 20, DOG)), "v2": pred((0, 10, DOG))}


def test_an_empty_prediction_list_scores_zero_for_that_video(meteor):
    """densevid_eval scores an absent reference video 0 for every caption metric and for precision and recall,
    counted in the means over reference videos; an empty list is scored the same (the official code itself
    stops on one: its precision divides by the index of the last prediction). SODA's official mean leaves an
    absent video out; an empty list counts there as 0 (the video was predicted, nothing matched)."""
    full = evaluate_dense(PERFECT, REFS, meteor=meteor)
    empty = evaluate_dense({"v1": PERFECT["v1"], "v2": []}, REFS, meteor=meteor)
    absent = evaluate_dense({"v1": PERFECT["v1"]}, REFS, meteor=meteor)
    assert full["METEOR"] == pytest.approx(1.0) and full["SODA_c"] == pytest.approx(1.0)
    for got in (empty, absent):
        for key in ("METEOR", "METEOR_2021", "Bleu_4", "ROUGE_L", "Recall", "Precision"):
            assert got[key] == pytest.approx(full[key] / 2), key
        assert got["CIDEr"] == pytest.approx(evaluate_dense({"v1": PERFECT["v1"]}, [{"v1": REFS[0]["v1"]}],
                                                            meteor=meteor)["CIDEr"] / 2)
        assert got["n_videos"] == 2 and got["n_predictions"] == 2
    assert absent["SODA_c"] == pytest.approx(1.0) and absent["soda"]["per_reference"][0]["n_videos"] == 1
    assert empty["SODA_c"] == pytest.approx(0.5) and empty["soda"]["per_reference"][0]["n_videos"] == 2
    assert (empty["n_videos_predicted"], absent["n_videos_predicted"]) == (2, 1)


def test_predictions_for_videos_not_in_the_references_are_ignored(meteor, caplog):
    """densevid_eval loops over the reference videos only: extra videos change no score and are reported."""
    base = evaluate_dense(PERFECT, REFS, meteor=meteor)
    extra = evaluate_dense({**PERFECT, "ghost": pred((0, 5, "a ghost video"), (3, 9, GUITAR))}, REFS,
                           meteor=meteor)
    assert {k: v for k, v in extra.items()} == base
    assert "1 predicted videos are not in the references and are ignored (e.g. ghost)" in caplog.text
    only_ghost = evaluate_dense({"ghost": pred((0, 10, GUITAR))}, REFS, meteor=meteor)
    assert only_ghost["METEOR"] == 0 and only_ghost["Recall"] == 0 and only_ghost["n_videos_predicted"] == 0
