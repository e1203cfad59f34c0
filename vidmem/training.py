"""Training-side plumbing shared by every family: metric logging through DVCLive.

Each training stage logs per-epoch metrics to `dvclive/<name>/` (plots under `plots/metrics/*.tsv`, the latest
values in `metrics.json`); dvc.yaml declares those folders as plots, so `dvc plots show/diff` draws them. DVCLive
is told not to write its own dvc.yaml entries or experiments: the pipeline's dvc.yaml owns that.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class LiveLogger:
    def __init__(self, name: str, resume: bool = False):
        from dvclive import Live

        self.live = Live(dir=f"dvclive/{name}", resume=resume, dvcyaml=False, save_dvc_exp=False, report=None)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.live.step = step
        for key, value in metrics.items():
            self.live.log_metric(key, float(value))
        self.live.next_step()

    def close(self) -> None:
        self.live.end()


def live_logger(name: str, resume: bool = False) -> LiveLogger:
    return LiveLogger(name, resume)
