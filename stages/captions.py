"""captions@<level>: the recursive caption extraction of Video ReCap, one level at a time.

    python -m stages.captions {clip|segment|video}

`params.captions.<level>` names the trained model (`train.<name>`) that writes the level; its family's
`generate_captions` captions every window of every video of every split (train included: the next level
trains on them) into data/captions/<level>/ in the Ego4D-HCap layout (clips_<split>.pkl, segments_<split>.pkl,
videos_<split>.json, as `ingest`'s ego4d_hcap parser reads them), resumable per video (parts/), with
read.json recording what was read. The level above reads these files: no manual step between stages.
"""
from __future__ import annotations

import logging
import sys

from stages.dispatch import family_module, task_for
from vidmem.common import UserError, load_params, run_stage, write_json
from vidmem.paths import Paths
from vidmem.training import default_device, load_checkpoint

log = logging.getLogger("stages.captions")
LEVELS = ("clip", "segment", "video")


def main() -> None:
    params = load_params()
    if len(sys.argv) != 2 or sys.argv[1] not in LEVELS:
        raise UserError(f"usage: python -m stages.captions {{{'|'.join(LEVELS)}}}")
    level, paths = sys.argv[1], Paths()
    name = (params.get("captions") or {}).get(level)
    if not isinstance(name, str) or name not in (params.get("train") or {}):
        raise UserError(f"params.yaml captions.{level}: expected the name of a trained model (a train.* entry)")
    task = task_for(name, params, paths)
    generate = getattr(family_module(task.family, f"train.{name}"), "generate_captions", None)
    if generate is None:
        raise UserError(f"params.yaml captions.{level}: family {task.family} has no generate_captions()")
    task.device = default_device()
    ckpt_path = paths.checkpoint(task.family, name)
    model = task.restore(load_checkpoint(ckpt_path, task.device, f"run `dvc repro train@{name}` first"))
    counts = generate(task, model, level, paths.captions / level, ckpt_path)
    write_json(paths.metric(f"captions_{level}"),
               {k: v for k, v in counts.items() if k not in ("generated", "resumed")})


if __name__ == "__main__":
    run_stage(main)
