"""finetune_clip: contrastive tuning of the CLIP towers on train (frame, caption) pairs.

Reads `params.clip` (which model and starting weights) and `params.finetune_clip`; writes
`data/checkpoints/clip.pt` (`{"state_dict", "params", "epoch"}`, loadable as `clip.pretrained`) and
`metrics/clip.json` with frame→sentence retrieval on val before and after tuning. The weights kept are those
of the epoch with the best val retrieval (R@1 + R@5): on a small train split the towers overfit, and later
epochs retrieve worse. `epochs: 0` keeps the given weights. A killed run resumes from the last finished epoch
(kept under data/.work/ until the stage succeeds).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from models.encoders.clip import ClipConfig, build_clip
from models.encoders.tuning import TuningConfig, collect_spans, frame_to_text_retrieval, tune
from vidmem.common import inputs_key, load_params, run_stage, save_torch, section, seed_everything, write_json
from vidmem.manifest import Manifest
from vidmem.training import write_history

log = logging.getLogger("stages.finetune_clip")

OUT = Path("data/checkpoints/clip.pt")
METRICS = Path("metrics/clip.json")


def clone(state: dict) -> dict:
    """A detached copy of a state dict (the best epoch's weights, kept while training goes on)."""
    return {k: v.detach().clone() for k, v in state.items()}


def main() -> None:
    params = load_params()
    clip_p, tune_p = section(params, "clip"), section(params, "finetune_clip")
    cfg = TuningConfig.from_params(tune_p)
    seed_everything(cfg.seed)
    manifest = Manifest.read("data/manifest")
    compressed = Path("data/compressed")
    encoder = build_clip(ClipConfig.from_params(clip_p))
    train = collect_spans(manifest, "train", compressed, cfg.tables)
    val = collect_spans(manifest, "val", compressed, ("events",))
    before = frame_to_text_retrieval(encoder, val, manifest, "val")
    log.info("untuned: val frame→sentence R@1 %.3f R@5 %.3f (chance %.3f, %d queries)",
             before["r1"], before["r5"], before["chance_r1"], before["queries"])

    # resumable state, keyed to everything the run depends on (params, code, manifest, compressed videos)
    code = inputs_key(["stages/finetune_clip.py", "models/encoders", "vidmem/decode.py"], root=Path(__file__).resolve().parents[1])
    key = inputs_key([Path("data/manifest"), compressed / "ledger.jsonl"], extra=[clip_p, tune_p, code])
    work = Path("data/.work") / f"finetune_clip-{key[:16]}"
    last = work / "last.pt"
    state = None
    best = {"epoch": 0, "score": before["r1"] + before["r5"], "state_dict": clone(encoder.model.state_dict())}
    history: list[dict] = []
    if last.is_file():
        saved = torch.load(last, map_location="cpu", weights_only=False)
        encoder.model.load_state_dict(saved["state_dict"])
        state, best, history = saved["state"], saved["best"], saved["history"]
        log.info("resuming from %s (epoch %d of %d)", last, state["epoch"], cfg.epochs)

    def on_epoch(epoch: int, loss: float, st: dict) -> None:
        r = frame_to_text_retrieval(encoder, val, manifest, "val")
        log.info("epoch %d/%d: loss %.4f, val R@1 %.3f R@5 %.3f", epoch, cfg.epochs, loss, r["r1"], r["r5"])
        history.append({"epoch": epoch, "loss": loss, "val_r1": r["r1"], "val_r5": r["r5"]})
        if r["r1"] + r["r5"] > best["score"]:
            best.update(epoch=epoch, score=r["r1"] + r["r5"], state_dict=clone(encoder.model.state_dict()))
        work.mkdir(parents=True, exist_ok=True)
        save_torch({"state_dict": encoder.model.state_dict(), "state": st, "best": best, "history": history}, last)

    if cfg.epochs > 0 and train:
        tune(encoder, train, cfg, state, on_epoch)
        encoder.model.load_state_dict(best["state_dict"])
        log.info("keeping epoch %d (best val R@1 + R@5)", best["epoch"])
    after = frame_to_text_retrieval(encoder, val, manifest, "val")
    log.info("tuned:   val frame→sentence R@1 %.3f R@5 %.3f (chance %.3f)", after["r1"], after["r5"], after["chance_r1"])
    print(f"val frame→sentence R@1: untuned {before['r1']:.3f}  tuned {after['r1']:.3f}  "
          f"(R@5 {before['r5']:.3f} → {after['r5']:.3f}, chance {after['chance_r1']:.3f})")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_torch({"state_dict": encoder.model.state_dict(), "params": {"clip": clip_p, "finetune_clip": tune_p},
                "epoch": best["epoch"]}, OUT)
    write_json(METRICS, {"val_untuned": before, "val_tuned": after, "best_epoch": best["epoch"],
                         "train_videos": len(train), "train_spans": sum(len(v.spans) for v in train)})
    write_history("finetune_clip", history)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_stage(main)
