"""extract@{clip,lavila,text}: features of every compressed video / manifest sentence into a zarr store.

    python -m stages.extract clip|lavila|text
    torchrun --nproc_per_node=2 -m stages.extract clip     # same store, each rank writing whole shards

Reads the manifest, the compressed videos and the tuned CLIP checkpoint; writes `data/features/<kind>.zarr`
(see vidmem/store.py for the layout; `ledger.jsonl` inside lists every video as done or failed with the
reason) and `metrics/features_<kind>.json`. Resumable: a killed run, rerun, finishes the missing shards and the
store is byte-identical to an uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from models.encoders.clip import ClipConfig, build_clip, checkpoint_hash
from models.encoders.timesformer import VideoEncoder
from vidmem.common import UserError, file_hash, load_params, run_stage, section, write_json, write_jsonl
from vidmem.decode import DecodeError
from vidmem.dist import init_from_env
from vidmem.extract import ClipFrameExtractor, TextExtractor, WindowExtractor, manifest_texts, plan_videos
from vidmem.ledger import Ledger
from vidmem.manifest import Manifest
from vidmem.store import ShardedWriter

log = logging.getLogger("stages.extract")

KINDS = ("clip", "lavila", "text")
MANIFEST = Path("data/manifest")
COMPRESSED = Path("data/compressed")
CLIP_CHECKPOINT = Path("data/checkpoints/clip.pt")
FEATURES = Path("data/features")


def build_extractor(kind: str, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    p = section(params, "extract")
    if not CLIP_CHECKPOINT.is_file():
        raise UserError(f"{CLIP_CHECKPOINT}: not found; run `dvc repro finetune_clip` first")
    clip = build_clip(ClipConfig.from_params({**section(params, "clip"), "pretrained": str(CLIP_CHECKPOINT)}))
    attrs: dict[str, Any] = {"kind": kind, "encoder": clip.cfg.model, "checkpoint": str(CLIP_CHECKPOINT),
                             "checkpoint_sha256": checkpoint_hash(CLIP_CHECKPOINT)}
    if kind == "clip":
        return ClipFrameExtractor(clip, p["batch_size"]), attrs
    if kind == "text":
        return TextExtractor(clip, p["batch_size"], p["text"]["max_tokens"]), attrs
    lp = p["lavila"]
    ckpt = str(lp.get("checkpoint") or "none")
    if ckpt.lower() != "none":
        if not Path(ckpt).is_file():
            raise UserError(f"extract.lavila.checkpoint: '{ckpt}' not found")
        encoder = VideoEncoder.from_lavila(ckpt, num_frames=lp["frames"])
        attrs.update(encoder="lavila-timesformer", checkpoint=ckpt, checkpoint_sha256=file_hash(ckpt))
    else:
        encoder = VideoEncoder.from_clip(clip, num_frames=lp["frames"])
        attrs.update(encoder=f"timesformer-inflated:{clip.cfg.model}")
    encoder.eval()
    attrs.update(window=lp["window"], frames=lp["frames"])
    return WindowExtractor(encoder, p["batch_size"], lp["window"], lp["frames"], lp["dense_tokens"]), attrs


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in KINDS:
        raise UserError(f"usage: python -m stages.extract {{{'|'.join(KINDS)}}}")
    kind = sys.argv[1]
    params = load_params()
    p = section(params, "extract")
    d = init_from_env()
    if p.get("threads"):
        torch.set_num_threads(int(p["threads"]))
    torch.manual_seed(0)
    manifest = Manifest.read(MANIFEST)
    extractor, attrs = build_extractor(kind, params)
    out = FEATURES / f"{kind}.zarr"

    if kind == "text":
        texts = manifest_texts(manifest)
        ids, lengths, failed = texts, [1] * len(texts), {}

        def compute_items(idx: list[int]) -> list[dict]:
            return extractor.compute_many([texts[i] for i in idx])
    else:
        compress_ledger = Ledger(COMPRESSED / "ledger.jsonl").rows() if (COMPRESSED / "ledger.jsonl").exists() else {}
        plan = plan_videos(manifest, COMPRESSED, compress_ledger, extractor.rows_of)
        ids, lengths, failed = plan.ids, plan.lengths, plan.failed
        attrs["fps"] = float(section(params, "compress")["fps"])

        def compute_items(idx: list[int]) -> list[dict]:
            outs = []
            for i in idx:
                try:
                    outs.append(extractor.compute(plan.paths[i]))
                except DecodeError as e:
                    raise UserError(f"{plan.paths[i]}: opened but failed to decode ({e}); "
                                    "re-run `dvc repro compress` for this video") from None
            return outs

    writer = ShardedWriter(out, ids, lengths, extractor.arrays(), attrs,
                           rows_per_chunk=p["rows_per_chunk"], chunks_per_shard=p["chunks_per_shard"])
    if d.main:
        writer.prepare()
        log.info("%s: %d items, %d rows, %d shards, %d rank(s)", out, len(ids), writer.n_rows, writer.n_shards,
                 d.world)
    d.barrier()
    writer.fill(writer.shards_for_rank(d.rank, d.world), compute_items, rank=d.rank)
    d.barrier()
    if d.main:
        writer.finish()
        if kind != "text":
            rows = [{"key": vid, "status": "done", "rows": n} for vid, n in zip(ids, lengths)]
            rows += [{"key": vid, "status": "failed", "reason": why} for vid, why in failed.items()]
            write_jsonl(out / "ledger.jsonl", rows)
        for vid, why in failed.items():
            log.warning("%s: not extracted: %s", vid, why)
        spec = {k: [list(v.trailing), v.dtype] for k, v in extractor.arrays().items()}
        write_json(Path("metrics") / f"features_{kind}.json",
                   {"items": len(ids), "rows": writer.n_rows, "failed": len(failed), "arrays": json.loads(json.dumps(spec))})
    d.close()


if __name__ == "__main__":
    run_stage(main)
