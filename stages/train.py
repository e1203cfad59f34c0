"""train@<model>: fit one model of a method family (or its baseline: the same code with the contribution off).

    python -m stages.train pdvc|cm2

Each model's hyper-parameters are `params.train.<model>`; checkpoints go to data/checkpoints/<model>/
(`last.pt` every epoch — a killed run resumes from it — and `best.pt`), curves to dvclive/<model>/.
"""
from __future__ import annotations

import sys

from vidmem.common import UserError, load_params, run_stage

MODELS = ("pdvc", "cm2")


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in MODELS:
        raise UserError(f"usage: python -m stages.train {{{'|'.join(MODELS)}}}")
    name, params = sys.argv[1], load_params()
    from models.dense.pipeline import train_stage

    train_stage(name, params)


if __name__ == "__main__":
    run_stage(main)
