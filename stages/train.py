"""train@<name>: fit one model of a method family (or its baseline: the same code with the contribution off).

    python -m stages.train <name>          # torchrun --nproc_per_node=N -m stages.train <name> also works

`params.train.<name>.family` names the family; its task says what to train and the shared recipe
(`vidmem.training.fit`) trains it: checkpoints in data/checkpoints/<family>/<name>/ (`last.pt` every epoch — a killed
run resumes from it — and `best.pt`), curves in dvclive/<name>/.
"""
from __future__ import annotations

import logging
import sys

from stages.dispatch import models, task_for
from vidmem.common import UserError, load_params, run_stage
from vidmem.paths import Paths
from vidmem.training import fit

log = logging.getLogger("stages.train")


def main() -> None:
    params = load_params()
    if len(sys.argv) != 2 or sys.argv[1] not in models(params):
        raise UserError(f"usage: python -m stages.train {{{'|'.join(models(params))}}}")
    name, paths = sys.argv[1], Paths()
    task = task_for(name, params, paths)
    result = fit(task, paths.model_dir(task.family, name), curves=paths.curves(name))
    log.info("%s: best epoch %d (score %.4f)", name, result.best_epoch, result.best_score)


if __name__ == "__main__":
    run_stage(main)
