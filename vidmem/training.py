"""Training-side plumbing shared by every family: resuming only what the same inputs made, DVCLive curves.

A training stage keeps `last.pt` in a persistent output so a killed run resumes. DVC also reruns a stage when
its code or input data changed; `vidmem.common.inputs_key` fingerprints those inputs, and a run only resumes a
checkpoint made from the same ones — otherwise it starts over, so the outputs always follow the inputs.

Curves go to `dvclive/<name>/` (plots under `plots/metrics/*.tsv`, the latest values in `metrics.json`);
dvc.yaml declares those folders as plots, so `dvc plots show/diff` draws them. They are written from the run's
whole history when training ends, so a resumed run still shows every epoch. DVCLive is told not to write its
own dvc.yaml entries or experiments: the pipeline's dvc.yaml owns that.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_history(name: str, history: Iterable[Mapping[str, Any]], step_key: str = "epoch") -> None:
    """Write a run's per-epoch metrics as DVCLive curves in dvclive/<name>/ (replacing what was there)."""
    from dvclive import Live

    live = Live(dir=f"dvclive/{name}", resume=False, dvcyaml=False, save_dvc_exp=False, report=None)
    for row in history:
        live.step = int(row[step_key])
        for key, value in row.items():
            if key != step_key and isinstance(value, (int, float)):
                live.log_metric(key, float(value))
        live.next_step()
    live.end()
    (Path(live.dir) / "plots" / "metrics").mkdir(parents=True, exist_ok=True)  # the declared output, even if empty
