"""evaluate@<model>: predictions on the test split in the public result format, and metrics/<model>.json.

    python -m stages.evaluate pdvc|cm2|dense_trivial

`dense_trivial` is the floor every dense captioner must clear: one whole-video event per test video,
captioned with the most frequent train sentence.
"""
from __future__ import annotations

import sys

from vidmem.common import UserError, load_params, run_stage

MODELS = ("pdvc", "cm2", "dense_trivial")


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in MODELS:
        raise UserError(f"usage: python -m stages.evaluate {{{'|'.join(MODELS)}}}")
    name, params = sys.argv[1], load_params()
    from metrics.captions import CaptionEvalError
    from models.dense.pipeline import evaluate_stage

    try:
        evaluate_stage(name, params)
    except CaptionEvalError as e:  # Java evaluator died, hung or is missing: one line, not a trace
        raise UserError(f"caption evaluation failed: {e}") from None


if __name__ == "__main__":
    run_stage(main)
