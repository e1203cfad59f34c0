"""finetune_window: window-level video-text tuning on the shared recipe (models/window).

Reads the tuned CLIP's frame vectors (`clip.zarr`) and sentence vectors (`text.zarr`) and `params.finetune_window`;
writes `data/checkpoints/encoders/window/` (`best.pt`, `last.pt` to resume), `data/features/window.zarr` (the
window vector centred on every stored frame, row-aligned with `clip.zarr`; CM2 retrieves with it when
`retrieval_query: window`) and `metrics/window.json`: val window→sentence and middle-frame→sentence R@1/R@5,
the frame mean (= the untrained encoder) before and the encoder after, chance and the colour+shape oracle;
and `probes`: how well a linear classifier reads each val event's colour, shape and action from its window's
frame mean, its window vector and its sentence vector (trained on train events) — what the vectors hold.
"""
from __future__ import annotations

import logging

from models.window.task import make_window_task, probes, window_retrieval, write_window_store
from vidmem.common import file_hash, load_params, run_stage, write_json
from vidmem.paths import Paths
from vidmem.toolchain import versions
from vidmem.training import fit, load_checkpoint

log = logging.getLogger("stages.finetune_window")


def main() -> None:
    params, paths = load_params(), Paths()
    task = make_window_task(params, paths)
    result = fit(task, paths.model_dir(task.family, task.name), curves=paths.curves("finetune_window"))
    best = paths.checkpoint(task.family, task.name)
    model = task.restore(load_checkpoint(best, task.device, "run `dvc repro finetune_window`"))
    cfg = task.config
    val = window_retrieval(model, task.videos("val"), task.manifest, "val", task.text, cfg.window, cfg.frames)
    known = probes(model, {s: task.videos(s) for s in ("train", "val")}, task.manifest, task.text, cfg.window,
                   cfg.frames)
    rows = write_window_store(paths.store("window"), model, task.store, cfg, file_hash(best))
    w, m, f = val["window"], val["frame_mean"], val["frame"]
    print(f"val window→sentence R@1: frame mean {m['r1']:.3f}  tuned {w['r1']:.3f}  (R@5 {m['r5']:.3f} → "
          f"{w['r5']:.3f}; middle frame {f['r1']:.3f}; chance {val['chance']['r1']:.3f}; colour+shape oracle "
          f"{val['oracle_colour_shape']['r1']:.3f}; best epoch {result.best_epoch})")
    write_json(paths.metric("window"), {
        "val": val, "probes": known, "best_epoch": result.best_epoch, "window_store_rows": rows,
        "train_videos": len(task.videos("train")),
        "train_spans": sum(len(v.texts.spans) for v in task.videos("train")),
        "toolchain": versions("torch", "numpy", "cpu")})


if __name__ == "__main__":
    run_stage(main)
