"""kill -9 at a seeded random point of every long stage not covered elsewhere, then a rerun: the outputs
equal the uninterrupted run's, byte for byte (stores, checkpoints, caption files, metrics, DVCLive curves).

One tiny project is built by the real stages (`python -m stages.<x>`, SynthVid at the pipeline test's tiny
size, two epochs per family so a kill can land after a saved epoch): that run is the uninterrupted reference.
Each case copies the project without the stage's outputs, runs the stage with a SIGKILL at the N-th module
forward (tests/kill.py; N drawn from a seed inside the reference run's count), checks the kill left partial
work behind, reruns the stage, and compares. The trainers: one per family and every kind of run the recipe
drives — from scratch (pdvc, meanp, mrnet, recap_clip, membridge_pre), with the memory bank (cm2), speech
queries (mrnet_speech), EM pooling (emcl), alternate batching over three levels (recapu) and initialised from
another stage's checkpoint (membridge_cap). Covered elsewhere: compress (test_compress.py), extract@clip
(test_extract.py), extract@audio (test_extract_audio.py), the recipe through stages.train (test_recipe.py),
report (test_report.py). `VIDMEM_KILL_SEED=<n>` moves every kill point.
"""
from __future__ import annotations

import os
import shutil
import zlib
from pathlib import Path

import pytest
import yaml

from tests.kill import kill_point, killed, stage
from tests.project import digest
from tests.test_pipeline import tiny_params

REPO = Path(__file__).resolve().parents[1]

CHAIN = [("stages.synth",), ("stages.ingest",), ("stages.compress",), ("stages.finetune_clip",),
         ("stages.extract", "clip"), ("stages.extract", "lavila"), ("stages.extract", "text"),
         ("stages.extract", "audio"), ("stages.finetune_window",), ("stages.bank",),
         ("stages.train", "pdvc"), ("stages.train", "cm2"), ("stages.train", "meanp"), ("stages.train", "emcl"),
         ("stages.train", "mrnet"),
         ("stages.train", "mrnet_speech"), ("stages.train", "recap_clip"),
         ("stages.train", "recap_clip_f0"), ("stages.train", "recap_clip_f1"), ("stages.captions", "clip"),
         ("stages.train", "recap_segment"), ("stages.train", "recap_segment_f0"),
         ("stages.train", "recap_segment_f1"), ("stages.captions", "segment"), ("stages.train", "recap_video"),
         ("stages.captions", "video"), ("stages.train", "recapu"), ("stages.train", "membridge_pre"),
         ("stages.train", "membridge_cap")]

# stage → (its outputs, what must exist after the kill for the rerun to resume from, where the kill lands)
CASES = {
    "finetune_clip": (("data/checkpoints/encoders/clip", "metrics/clip.json", "dvclive/finetune_clip"),
                      "data/checkpoints/encoders/clip/last.pt", (0.6, 0.9)),
    "finetune_window": (("data/checkpoints/encoders/window", "data/features/window.zarr", "metrics/window.json",
                         "dvclive/finetune_window"), "data/checkpoints/encoders/window/last.pt", (0.6, 0.9)),
    "extract lavila": (("data/features/lavila.zarr", "metrics/features_lavila.json"),
                       "data/features/lavila.zarr/plan.json", (0.3, 0.9)),
    "extract text": (("data/features/text.zarr", "metrics/features_text.json"),
                     "data/features/text.zarr/plan.json", (0.3, 0.9)),
    **{f"train {model}": ((f"data/checkpoints/{family}/{model}", f"dvclive/{model}"),
                          f"data/checkpoints/{family}/{model}/last.pt", (0.6, 0.9))
       for family, model in (("dense", "pdvc"), ("dense", "cm2"), ("retrieval", "meanp"), ("retrieval", "emcl"),
                             ("grounding", "mrnet"), ("grounding", "mrnet_speech"), ("recap", "recap_clip"),
                             ("recap", "recapu"), ("membridge", "membridge_pre"),
                             ("membridge", "membridge_cap"))},
    **{f"captions {level}": ((f"data/captions/{level}", f"metrics/captions_{level}.json"),
                             f"data/captions/{level}/parts", (0.3, 0.9))
       for level in ("clip", "segment", "video")},
}


def chain_params() -> dict:
    params = tiny_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["finetune_clip"]["epochs"] = 2
    params["families"]["dense"]["epochs"] = 2
    params["families"]["grounding"]["epochs"] = 2
    for name in ("membridge_pre", "membridge_cap"):
        params["train"][name]["epochs"] = 2
    return params


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """The uninterrupted reference run and each stage's forward count."""
    root = tmp_path_factory.mktemp("killchain") / "ref"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(chain_params(), sort_keys=False))
    counts = {}
    for args in CHAIN:
        proc, n = stage(root, *args, count=True)
        assert proc.returncode == 0, f"{args}: {proc.stderr[-3000:]}"
        counts[" ".join(args).removeprefix("stages.")] = n
    return root, counts


def _digest(root: Path, rel: str) -> dict[str, str]:
    path = root / rel
    if path.is_file():
        return {rel: digest(path.parent)[path.name]}
    return {f"{rel}/{k}": v for k, v in digest(path).items()}


@pytest.mark.parametrize("name", list(CASES))
def test_kill_at_a_random_point_then_rerun_equals_the_uninterrupted_run(chain, tmp_path, name):
    ref, counts = chain
    outs, partial, (lo, hi) = CASES[name]
    work = tmp_path / "work"
    shutil.copytree(ref, work, symlinks=True)
    for rel in outs:
        path = work / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    module, *args = f"stages.{name}".split()

    seed = int(os.environ.get("VIDMEM_KILL_SEED", "0")) * 1000 + zlib.crc32(name.encode()) % 1000
    at = kill_point(counts[name], seed, lo, hi)
    proc, _ = stage(work, module, *args, kill_at=at)
    where = f"forward {at} of {counts[name]}"
    assert killed(proc), f"not killed at {where}: exit {proc.returncode}, {proc.stderr[-2000:]}"
    assert (work / partial).exists(), f"killed at forward {at} of {counts[name]}, nothing left to resume from"

    proc, _ = stage(work, module, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    differ = []
    for rel in outs:
        a, b = _digest(ref, rel), _digest(work, rel)
        assert a.keys() == b.keys(), f"{rel}: other files after a kill at forward {at}"
        differ += [key for key in a if a[key] != b[key]]
    assert differ == [], f"differ from the uninterrupted run after a kill at forward {at} of {counts[name]}"


def test_two_clean_runs_write_identical_outputs(chain, tmp_path):
    """Determinism: a second run of every stage from scratch, same params, writes the same bytes everywhere
    (DVC's hashes of every output and every metrics file would be equal)."""
    ref, counts = chain
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(ref / "params.yaml", again / "params.yaml")
    for args in CHAIN:
        proc, n = stage(again, *args, count=True)
        assert proc.returncode == 0, f"{args}: {proc.stderr[-3000:]}"
        assert n == counts[" ".join(args).removeprefix("stages.")], args  # the same computation
    differ = []
    for rel in ("data", "metrics", "dvclive"):
        a, b = _digest(ref, rel), _digest(again, rel)
        assert a.keys() == b.keys(), rel
        differ += [k for k in a if a[k] != b[k]]
    assert differ == []
