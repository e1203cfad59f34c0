"""bench/gpu_check.sh on this machine in its fast mode: every step recorded, GPU steps skipped without CUDA,
CPU numbers positive; and the recorder's failure / timeout reporting."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from bench.gpu_check import GPU_STEPS, NO_GPU, STEPS, assemble, record

ROOT = Path(__file__).resolve().parents[1]


def positive_numbers(obj, keys):
    return all(isinstance(obj[k], (int, float)) and obj[k] > 0 for k in keys)


def test_fast_run_writes_every_step(tmp_path):
    out = tmp_path / "nested" / "check.json"
    env = {**os.environ, "GPU_CHECK_FAST": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["format"] == 1 and res["fast"] is True and res["wall_s"] > 0
    assert list(res["steps"]) == list(STEPS)
    steps = res["steps"]
    assert steps["install"] == {"status": "skipped", "reason": "fast mode (GPU_CHECK_FAST=1)"}
    if not torch.cuda.is_available():
        assert "no CUDA GPU: the GPU steps are skipped" in proc.stdout
        for name in GPU_STEPS:
            assert steps[name] == {"status": "skipped", "reason": NO_GPU}, name
        assert res["environment"]["gpu"] is None
        assert res["summary"] == {"gpu_steps_ok": False, "msda_goal_met": None, "topk_goal_met": None,
                                  "cm2_gpu_speedup": None}
    else:  # the fast GPU rows ran (pytest and faiss-gpu are left out of the fast mode)
        for name in ("msda_gpu", "topk_gpu", "cm2_train_gpu"):
            assert steps[name]["status"] == "ok", steps[name]
        assert res["summary"]["cm2_gpu_speedup"] > 0
    for name in ("msda_cpu", "topk_cpu", "cm2_train_cpu"):
        assert steps[name]["status"] == "ok", steps[name]
        assert 0 < steps[name]["seconds"] <= steps[name]["limit_s"]
    (m,) = steps["msda_cpu"]["rows"]
    assert m["shape"] == "1-D PDVC" and positive_numbers(m, ["ref_fwd_ms", "ref_fwd_bwd_ms"])
    (t,) = steps["topk_cpu"]["rows"]
    assert positive_numbers(t, ["ours_ms", "faiss_cpu_ms", "speedup"]) and t["overlap"] == 1.0
    c = steps["cm2_train_cpu"]
    assert positive_numbers(c, ["epoch_s", "step_s", "samples_per_s"])
    assert c["steps"] == -(-c["videos"] // c["batch_size"]) and c["threads"] == 1


@pytest.mark.parametrize("rc, log, want", [
    (1, "Traceback (most recent call last):\n  File x\nValueError: bad shape\n\n",
     "exit 1: ValueError: bad shape"),
    (124, "still going\n", "timed out after 30 s"),
    (2, "", "exit 2: no output"),
])
def test_record_reports_the_failure(tmp_path, rc, log, want):
    (tmp_path / "s.log").write_text(log)
    part = tmp_path / "s.json"
    part.write_text(json.dumps({"status": "ok", "rows": []}))  # a stale part from the step must not survive
    record("msda_gpu", part, rc, tmp_path / "s.log", 1.5, None, 30)
    assert json.loads(part.read_text()) == {"status": "failed", "error": want, "seconds": 1.5, "limit_s": 30}


def test_pytest_step_without_a_passed_test_fails(tmp_path):
    junit = tmp_path / "j.xml"
    junit.write_text('<testsuites><testsuite tests="3" failures="0" errors="0" skipped="3"/></testsuites>')
    (tmp_path / "p.log").write_text("sss\n3 skipped in 1.0s\n")
    record("pytest_gpu", tmp_path / "p.json", 0, tmp_path / "p.log", 2.0, junit, 90)
    got = json.loads((tmp_path / "p.json").read_text())
    assert got["status"] == "failed" and got["error"] == "no GPU test ran: 3 skipped in 1.0s"
    junit.write_text('<testsuites><testsuite tests="5" failures="1" errors="0" skipped="1"/></testsuites>')
    record("pytest_gpu", tmp_path / "p.json", 1, tmp_path / "p.log", 2.0, junit, 90)
    got = json.loads((tmp_path / "p.json").read_text())
    assert (got["status"], got["passed"], got["failed"], got["skipped"]) == ("failed", 3, 1, 1)


def test_assemble_marks_steps_that_never_ran(tmp_path):
    (tmp_path / "install.json").write_text(json.dumps({"status": "ok", "seconds": 3.0}))
    res = assemble(tmp_path, tmp_path / "out.json", fast=False, started=None)
    assert res["steps"]["install"]["status"] == "ok"
    assert res["steps"]["cm2_train_gpu"] == {"status": "failed",
                                             "error": "step did not run (the script stopped before it)"}
    assert json.loads((tmp_path / "out.json").read_text()) == res
