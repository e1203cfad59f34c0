"""Presets for the public datasets (presets/*.yaml, `python -m vidmem.preset NAME`): each applies to
params.yaml keeping its comments, its params pass the families' own readers, it lists every file a user must
bring, and `ingest` then stops with a one-line error naming a missing file."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vidmem import preset as presets
from vidmem.formats.registry import ingest_config

REPO = Path(__file__).resolve().parents[1]
NAMES = ("activitynet_cm2", "charades_mrnet", "msrvtt_emcl", "ego4d_recap")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "VIDMEM_LOG": "WARNING"}


def sh(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def test_every_public_dataset_has_a_preset():
    assert set(NAMES) <= set(presets.names())
    out = sh(REPO, sys.executable, "-m", "vidmem.preset", "--list").stdout
    assert all(n in out for n in NAMES)
    with pytest.raises(presets.UserError, match="no preset 'nope'"):
        presets.load("nope")


def check_readers(params: dict) -> None:
    """The merged params pass the readers the stages use (an unknown or mistyped key is an error)."""
    from models.encoders.clip import ClipConfig
    from models.encoders.extract import ExtractConfig
    from stages.dispatch import task_for
    from vidmem.params import read
    from vidmem.paths import Paths
    from vidmem.video import CompressConfig

    ingest_config(params["ingest"])
    read(ClipConfig, params["clip"], "clip")
    read(ExtractConfig, params["extract"], "extract")
    read(CompressConfig, params["compress"], "compress")
    for name in [*params["train"], *params.get("baselines", {})]:    # every family's own reader, by dispatch
        task_for(name, params, Paths())


@pytest.mark.parametrize("name", NAMES)
def test_preset_applies_and_ingest_names_the_missing_files(name, tmp_path, monkeypatch, capsys):
    original = (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(original)
    p = presets.load(name)
    monkeypatch.chdir(tmp_path)
    assert presets.main([name]) == 0
    out = capsys.readouterr().out
    for b in p.bring:                                      # every file to bring, by path, with what it is
        assert f"missing {b.path}" in out and b.what in out, b.path
    assert f"dvc repro {' '.join(p.targets)}" in out
    text = (tmp_path / "params.yaml").read_text()
    params = yaml.safe_load(text)
    assert params["ingest"]["root"] == p.params["ingest"]["root"]
    assert params["ingest"]["sources"] == p.params["ingest"]["sources"]
    assert params["synth"] == yaml.safe_load(original)["synth"]                   # untouched groups stay
    heads = [ln for ln in original.splitlines() if ln.startswith("# -----")]
    assert heads and all(h in text.splitlines() for h in heads)                  # comments kept
    check_readers(params)
    assert presets.main(["--check", name]) == 1
    assert capsys.readouterr().out.count("missing ") == len(p.bring)
    ingest = sh(tmp_path, sys.executable, "-m", "stages.ingest")
    assert ingest.returncode == 2
    line = ingest.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "file not found" in line
    assert any(b.path in line for b in p.bring), line                            # names a file of the list


@pytest.mark.slow
def test_dvc_repro_ingest_with_a_preset_names_the_missing_file(tmp_path):
    """Through DVC, as a user runs it (slow: a DVC project of its own; the test above runs the stage)."""
    root = tmp_path / "repo"
    for f in ("dvc.yaml", "params.yaml"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, root / f)
    for d in ("stages", "vidmem", "presets"):
        shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir = Path(sys.executable).parent
    env = {**ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": ""}
    for cmd in (["git", "init", "-q"], [str(bin_dir / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, env=env)
    assert sh(root, sys.executable, "-m", "vidmem.preset", "activitynet_cm2").returncode == 0
    proc = subprocess.run([str(bin_dir / "dvc"), "repro", "ingest"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert "error: data/raw/activitynet/annotations/train.json: file not found" in proc.stdout + proc.stderr
