"""finetune_clip: contrastive tuning of the CLIP towers on train (frame, caption) pairs, on the shared recipe.

Reads `params.clip` (which model and starting weights) and `params.finetune_clip` (the recipe's optimisation
keys and the pairs); writes `data/checkpoints/encoders/clip/` (`best.pt` = `{"state_dict", "params", "epoch"}`,
loadable as `clip.pretrained`, and `last.pt`, from which a killed run resumes) and `metrics/clip.json` with val
frame→sentence retrieval before and after tuning. The weights kept are those of the epoch with the best val
R@1 + R@5, the untuned weights included: on a small train split the towers overfit, and later epochs retrieve
worse. `epochs: 0` keeps the given weights.
"""
from __future__ import annotations

import logging

from models.encoders.tuning import make_tuning_task
from vidmem.common import load_params, run_stage, write_json
from vidmem.paths import Paths
from vidmem.toolchain import versions
from vidmem.training import fit

log = logging.getLogger("stages.finetune_clip")

RETRIEVAL_KEYS = ("r1", "r5", "chance_r1", "queries")


def main() -> None:
    params, paths = load_params(), Paths()
    task = make_tuning_task(params, paths)
    result = fit(task, paths.model_dir(task.family, task.name), curves=paths.curves("finetune_clip"))
    rows = {row["epoch"]: row for row in result.history}

    def retrieval(epoch: int) -> dict:
        return {k: rows[epoch][f"val/{k}"] for k in RETRIEVAL_KEYS}

    before, after = retrieval(0), retrieval(result.best_epoch)
    print(f"val frame→sentence R@1: untuned {before['r1']:.3f}  tuned {after['r1']:.3f}  "
          f"(R@5 {before['r5']:.3f} → {after['r5']:.3f}, chance {after['chance_r1']:.3f}; "
          f"best epoch {result.best_epoch})")
    write_json(paths.metric("clip"), {"val_untuned": before, "val_tuned": after, "best_epoch": result.best_epoch,
                                      "train_videos": len(task.train_videos),
                                      "train_spans": sum(len(v.spans) for v in task.train_videos),
                                      "toolchain": versions("torch", "numpy", "cpu")})


if __name__ == "__main__":
    run_stage(main)
