"""evaluate@<name>: test-split predictions in the family's public result format, and metrics/<name>.json.

    python -m stages.evaluate <name>

<name> is a trained model (`train.<name>`, scored from data/checkpoints/<family>/<name>/best.pt), a baseline that needs
no training (`baselines.<name>`), or a family (`families.<name>`): then every trained
model and baseline of that family is scored and metrics/<family>.json holds one row per model. Predictions go
to data/predictions/<model>.<ext> (for a family: data/predictions/<family>/<model>.<ext>).
"""
from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stages.dispatch import task_for
from vidmem.common import UserError, load_params, run_stage, write_json
from vidmem.paths import Paths
from vidmem.toolchain import versions
from vidmem.training import default_device, load_checkpoint

log = logging.getLogger("stages.evaluate")


def score(name: str, params: Mapping[str, Any], paths: Paths, out: Path) -> dict[str, Any]:
    """Predict the test split with one model or baseline, write its predictions (`out` + the family's file
    extension), return its scores."""
    from metrics.captions import CaptionEvalError

    task = task_for(name, params, paths)
    task.device = default_device()
    model = None
    if name in (params.get("train") or {}):
        ckpt = load_checkpoint(paths.checkpoint(task.family, name), task.device,
                               f"run `dvc repro train@{name}` first")
        model = task.restore(ckpt)
    try:
        predictions = task.predict(model, "test")
        task.write_predictions(predictions, out)
        scores = task.evaluate(predictions, "test")
        # what the scores leave out: test videos without features (failed compression or extraction), each
        # family's own count (the event-captioning family's summary already names them and scores them 0)
        coverage = getattr(task, "coverage", None)
        if coverage is not None:
            scores.update(coverage("test"))
    except CaptionEvalError as e:  # Java evaluator died, hung or is missing: one line, not a trace
        raise UserError(f"caption evaluation failed: {e}") from None
    log.info("%s test: %s", name, {k: round(v, 4) for k, v in scores.items() if isinstance(v, float)})
    return scores


def family_rows(family: str, params: Mapping[str, Any]) -> list[str]:
    """Every trained model, then every baseline, of `family`, in params order. Cross-fitting fold models
    (`fold` ≥ 0: each trained on part of the train split to caption the rest) are inputs, not results."""
    rows = [n for n, g in (params.get("train") or {}).items()
            if (g or {}).get("family") == family and int((g or {}).get("fold", -1)) < 0]
    return rows + [n for n, g in (params.get("baselines") or {}).items() if (g or {}).get("family") == family]


def main() -> None:
    if len(sys.argv) != 2:
        raise UserError("usage: python -m stages.evaluate <model, baseline or family name>")
    name, params, paths = sys.argv[1], load_params(), Paths()
    single = name in (params.get("train") or {}) or name in (params.get("baselines") or {})
    toolchain = {"toolchain": versions("torch", "numpy", "cpu")}  # float summation order moves numbers
    if single:
        write_json(paths.metric(name), {**score(name, params, paths, paths.predictions / name), **toolchain})
    elif name in (params.get("families") or {}):
        rows = family_rows(name, params)
        if not rows:
            raise UserError(f"params.yaml: no train or baselines entry has family: {name}")
        out = paths.predictions / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        write_json(paths.metric(name), {**{row: score(row, params, paths, out / row) for row in rows}, **toolchain})
    else:
        raise UserError(f"params.yaml: '{name}' is not a model (train.{name}), a baseline (baselines.{name}) "
                        f"or a family (families.{name})")


if __name__ == "__main__":
    run_stage(main)
