"""captions@<level>: the recursive caption extraction of Video ReCap, one level at a time.

    python -m stages.captions {clip|segment|video}

`params.captions.<level>` names the trained model (`train.<name>`) that writes the level; its family's
`generate_captions` captions every window of every video of every split (train included: the next level
trains on them) into data/captions/<level>/ in the Ego4D-HCap layout (clips_<split>.pkl, segments_<split>.pkl,
videos_<split>.json, as `ingest`'s ego4d_hcap parser reads them), resumable per video (parts/), with
read.json recording what was read. The level above reads these files: no manual step between stages.

`params.captions.cross_fit.<level>` lists the level's fold models (`train.<name>` with `fold: 0, 1, ...`): a
train video of fold i is captioned by the model trained without fold i, so the level above trains on captions
of the quality it reads at test time; [] captions the train split with the level's own model.
metrics/captions_<level>.json: captions per split and their CIDEr-D against the level's references at the
same spans (train against val/test shows whether the level above trains on captions as good as it will read).
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
    folds = fold_writers(params, level, task, paths)
    counts = generate(task, model, level, paths.captions / level, ckpt_path, fold_models=folds, score=True)
    write_json(paths.metric(f"captions_{level}"),
               {k: v for k, v in counts.items() if k not in ("generated", "resumed")})


def fold_writers(params, level: str, task, paths: Paths) -> list:
    """The level's cross-fitting models, in fold order, each checked to be the fold model it is listed as."""
    where = f"params.yaml captions.cross_fit.{level}"
    names = ((params.get("captions") or {}).get("cross_fit") or {}).get(level) or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{where}: expected a list of trained model names (train.* entries), one per fold")
    out = []
    for i, fold_name in enumerate(names):
        if fold_name not in (params.get("train") or {}):
            raise UserError(f"{where}: '{fold_name}' is not a train.* entry")
        fold_task = task_for(fold_name, params, paths)
        cfg = fold_task.config
        if fold_task.family != task.family or cfg.level != task.config.level or cfg.fold != i \
                or cfg.folds != len(names):
            raise UserError(f"{where}[{i}]: train.{fold_name} must be a {task.config.level}-level model of "
                            f"family {task.family} with fold: {i} and folds: {len(names)} (it has level "
                            f"{cfg.level}, fold {cfg.fold}, folds {cfg.folds})")
        fold_task.device = task.device
        fold_task.share_data(task)
        path = paths.checkpoint(fold_task.family, fold_name)
        ckpt = load_checkpoint(path, task.device, f"run `dvc repro train@{fold_name}` first")
        out.append((fold_task, fold_task.restore(ckpt), path))
    return out


if __name__ == "__main__":
    run_stage(main)
