"""Moment retrieval as a task of the shared recipe: train@{mmn,mrnet,mrnet_speech}, evaluate@grounding.

Inputs: the manifest's queries (text: every query once; speech: those with a WAV), clip.zarr (L2-normalised,
avgfeats to `pre_clips`) and text.zarr (sentence + tokens) or audio.zarr (log-mel frames). A batch is a set of
videos with all their queries, shuffled per epoch. Predictions are JSON lines (metrics/grounding.py); best.pt is
the epoch with the best val R@1,IoU@0.5 + mIoU. `grounding_prior` is the floor: for every query, the map cells
ranked by how often they are the train split's best cell for a GT moment.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metrics.grounding import evaluate_grounding, write_predictions
from models.grounding.config import GroundingConfig
from models.grounding.data import (QueryFeatures, VideoItem, check_split, manifest_queries, prepare_clips)
from models.grounding.losses import iou2d, mutual_matching, scaled_bce
from models.grounding.model import MRNet
from models.grounding.postprocess import score_map_windows
from models.grounding.proposal import sparse_cells
from vidmem.common import UserError
from vidmem.manifest import Manifest
from vidmem.params import Layer
from vidmem.paths import Paths
from vidmem.store import FeatureStore
from vidmem.training import EpochContext, Task, read_task_params

log = logging.getLogger(__name__)


class GroundingTask(Task):
    family = "grounding"
    code = ("models/grounding", "metrics/grounding.py")

    def __init__(self, name: str, recipe, config: GroundingConfig, paths: Paths, params=None,
                 splits: Mapping[str, list[VideoItem]] | None = None, queries: QueryFeatures | None = None):
        """splits / queries: in-memory data instead of the manifest and stores (tests)."""
        super().__init__(name, recipe, config, paths, params)
        self._in_memory = splits is not None
        self._splits: dict[str, list[VideoItem]] = dict(splits or {})
        self._queries = queries
        self._epoch = 0
        self._missing: dict[str, tuple[list[str], dict]] = {}  # split → (videos without features, all queries)

    # ------------------------------------------------------------------------------------------ data
    @property
    def query_store(self) -> Path:
        return self.paths.store("text" if self.config.query == "text" else "audio")

    def dataset(self, split: str) -> list[VideoItem]:
        if split not in self._splits:
            manifest = Manifest.read(self.paths.manifest, tables=("videos", "queries"))
            durations = {v.video_id: v.duration for v in manifest.videos}
            clips = FeatureStore(self.paths.store("clip"))
            qs = manifest_queries(manifest, split, self.config.query == "speech")
            keys = self.query_features(manifest)
            videos, dropped, missing = [], 0, []
            for vid in qs:
                if vid not in clips or not durations.get(vid):
                    dropped += len(qs[vid])
                    missing.append(vid)
                    continue
                items = [q for q in qs[vid] if q.key in keys]
                dropped += len(qs[vid]) - len(items)
                if items:
                    videos.append(VideoItem(vid, float(durations[vid]),
                                            prepare_clips(clips.get(vid), self.config.pre_clips), items))
            if dropped:
                log.warning("%s %s: %d queries without features skipped", self.name, split, dropped)
            self._missing[split] = (sorted(missing), qs)
            if split != "val":  # no val queries: no selection score; fit keeps the lowest-train-loss epoch
                check_split(videos, split)
            self._splits[split] = videos
        return self._splits[split]

    def query_features(self, manifest: Manifest | None = None) -> QueryFeatures:
        if self._queries is None:
            store = FeatureStore(self.query_store)
            rows: dict[str, tuple[np.ndarray, ...]] = {}
            if self.config.query == "text":
                for s in {q.sentence for q in manifest.queries}:
                    if s in store:
                        rows[s] = (store.get(s, "sentence")[0].astype(np.float32),
                                   store.get(s, "tokens")[0].astype(np.float32), store.get(s, "n_tokens")[0])
            else:
                for q in manifest.queries:
                    if q.audio and q.query_id in store:
                        rows[q.query_id] = (store.get(q.query_id, "mel").astype(np.float32),)
            self._queries = QueryFeatures(rows)
        return self._queries

    def inputs(self) -> list[Path]:
        if self._in_memory:
            return []
        m, c, q = self.paths.manifest, self.paths.store("clip"), self.query_store
        return [m / "queries.jsonl", m / "videos.jsonl", c / "zarr.json", c / "plan.json", q / "zarr.json",
                q / "plan.json"]

    # ------------------------------------------------------------------------------------------ training
    def build(self) -> nn.Module:
        self.dataset("train")
        model = MRNet(self.config)
        if self.config.query == "speech" and self.config.speech_checkpoint != "none":
            path = Path(self.config.speech_checkpoint)
            if not path.exists():
                raise UserError(f"params.yaml train.{self.name}.speech_checkpoint: no file {path}")
            model.query.load_state_dict(torch.load(path, map_location="cpu"))
        return model

    def batches(self, ctx: EpochContext):
        self._epoch = ctx.epoch
        rng = ctx.rng()
        train = self.dataset("train")
        for b in ctx.shuffled_batches(len(train), self.recipe.batch_size):  # queries in a fresh order per epoch
            yield [(i, tuple(rng.permutation(len(train[i].queries)).tolist())) for i in b]

    def steps_per_epoch(self) -> int:
        return -(-len(self.dataset("train")) // self.recipe.batch_size)

    def collate(self, samples: Sequence[tuple[int, Sequence[int]]]) -> dict[str, Any]:
        return make_batch([self.dataset("train")[i] for i, _ in samples], self.query_features(),
                          [order for _, order in samples], self.device)

    def describe(self, samples) -> str:
        return "videos " + ", ".join(self.dataset("train")[i].vid for i, _ in samples)

    def step(self, model, batch):
        return grounding_loss(model, batch, self.config, self._epoch)

    def validate(self, model, epoch: int) -> dict[str, float] | None:
        if not self.dataset("val"):
            return None
        s = self.evaluate(self.predict(model, "val"), "val")
        return {"R1_05": s["R@1,IoU@0.5"], "mIoU": s["mIoU"], "score": s["R@1,IoU@0.5"] + s["mIoU"]}

    # ------------------------------------------------------------------------------------------ evaluation
    def restore(self, ckpt: Mapping[str, Any]) -> nn.Module:
        model = MRNet(self.config)
        model.load_state_dict(ckpt["state_dict"])
        return model.to(self.device).eval()

    def predict(self, model, split: str) -> list[dict[str, Any]]:
        return predict(model, self.dataset(split), self.query_features(), self.config, self.recipe.batch_size,
                       self.device)

    def write_predictions(self, predictions, path: Path) -> Path:
        path = path.with_suffix(".jsonl")
        write_predictions(path, predictions)
        return path

    def evaluate(self, predictions, split: str) -> dict[str, Any]:
        refs = {(q.vid, q.query_idx): (q.start, q.end) for v in self.dataset(split) for q in v.queries}
        if split in self._missing:  # every query of the split: one whose video or query has no features
            refs = {(q.vid, q.query_idx): (q.start, q.end)  # is a miss (IoU 0), as a query without a prediction
                    for items in self._missing[split][1].values() for q in items}
        return evaluate_grounding(predictions, refs, (1, 5), self.config.thresholds)

    def coverage(self, split: str) -> dict[str, Any]:
        """The split's videos without clip features (failed compression or extraction) and the queries
        without features (theirs, or a missing WAV): scored as misses, counted beside the scores."""
        videos = self.dataset(split)
        if split not in self._missing:
            return {}
        missing, qs = self._missing[split]
        kept = sum(len(v.queries) for v in videos)
        return {"n_videos_missing": len(missing), "videos_missing": missing,
                "n_queries_missing": sum(len(items) for items in qs.values()) - kept}


def make_batch(videos: Sequence[VideoItem], queries: QueryFeatures, orders: Sequence[Sequence[int]] | None,
               device) -> dict[str, Any]:
    orders = orders or [range(len(v.queries)) for v in videos]
    keys = [[v.queries[j].key for j in o] for v, o in zip(videos, orders)]
    inputs, valid = queries.collate(keys)
    moments = torch.zeros(valid.shape + (2,))
    for i, (v, o) in enumerate(zip(videos, orders)):
        moments[i, : len(o)] = torch.from_numpy(v.relative()[list(o)])
    return {"clips": torch.from_numpy(np.stack([v.clips for v in videos])).to(device),
            "inputs": tuple(t.to(device) for t in inputs), "valid": valid.to(device),
            "moments": moments.to(device)}


def grounding_loss(model: MRNet, batch: Mapping[str, Any], cfg: GroundingConfig, epoch: int
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """Scaled BCE + contrastive_weight · (video + sentence mutual matching) + sparse_weight · sparsity; after
    epoch `only_iou` the contrastive and sparsity terms are scaled by 0.01 (MRNet's ONLY_IOU schedule)."""
    out = model(batch["clips"], batch["inputs"], batch["valid"])
    valid = batch["valid"]
    n = cfg.num_clips
    video_of = torch.arange(valid.shape[0], device=valid.device)[:, None].expand_as(valid)[valid]
    moments = batch["moments"][valid]                                   # [M, 2]
    gt = iou2d(moments, n)                                              # [M, N, N]
    bce = scaled_bce(out.iou_scores()[valid], gt, out.mask2d, cfg.min_iou, cfg.max_iou)
    lv, ls = mutual_matching(out.con_map, out.sent_con[valid], video_of, gt, moments, out.mask2d, cfg.tau,
                             cfg.margin, cfg.top_k, cfg.neg_iou)
    late = 0.01 if epoch >= cfg.only_iou else 1.0
    loss = bce + late * (cfg.contrastive_weight * (lv + ls) + cfg.sparse_weight * out.sparsity)
    return loss, {"loss": loss.item(), "bce": bce.item(), "con_vid": lv.item(), "con_sent": ls.item(),
                  "sparsity": float(out.sparsity.detach())}


@torch.no_grad()
def predict(model: MRNet, videos: Sequence[VideoItem], queries: QueryFeatures, cfg: GroundingConfig,
            batch_size: int, device) -> list[dict[str, Any]]:
    """Per query (annotation order) its top windows after NMS, in seconds."""
    was = model.training
    model.eval()
    rows = []
    for a in range(0, len(videos), batch_size):
        chunk = videos[a : a + batch_size]
        batch = make_batch(chunk, queries, None, device)
        scores = model(batch["clips"], batch["inputs"], batch["valid"]).final_scores(cfg.score_pow)
        for i, v in enumerate(chunk):
            for j, q in enumerate(v.queries):
                rows.append({"vid": v.vid, "query_idx": q.query_idx, "query": q.query,
                             "pred_relevant_windows": score_map_windows(scores[i, j], model.map.mask2d, v.duration,
                                                                        cfg.nms_thresh, cfg.top_windows)})
    model.train(was)
    return rows


class GroundingPrior(GroundingTask):
    """The floor: every query gets the map cells ranked by how often each is the best cell of a train GT."""

    def predict(self, model, split: str) -> list[dict[str, Any]]:
        n = self.config.num_clips
        mask2d, _ = sparse_cells(n, tuple(self.config.pooling_counts))
        counts: Counter = Counter()
        for v in self.dataset("train"):
            gt = iou2d(torch.from_numpy(v.relative()), n)
            gt = gt.masked_fill(~mask2d, -1)
            counts.update(int(c) for c in gt.flatten(1).argmax(1))
        freq = torch.zeros(n * n, dtype=torch.float64)
        for c, k in counts.items():
            freq[c] = k / max(sum(counts.values()), 1)
        score = (freq.view(n, n) + 1e-9 * mask2d.double()) * mask2d
        rows = []
        for v in self.dataset(split):
            w = score_map_windows(score, mask2d, v.duration, self.config.nms_thresh, self.config.top_windows)
            rows += [{"vid": v.vid, "query_idx": q.query_idx, "query": q.query, "pred_relevant_windows": w}
                     for q in v.queries]
        return rows


def make_task(name: str, layers: Sequence[Layer], paths: Paths, params: Mapping[str, Any] | None = None,
              baseline: str | None = None) -> GroundingTask:
    recipe, cfg = read_task_params(GroundingConfig, layers)
    if baseline is None:
        return GroundingTask(name, recipe, cfg, paths, params)
    if baseline == "prior":
        return GroundingPrior(name, recipe, cfg, paths, params)
    raise UserError(f"params.yaml baselines.{name}.kind: the grounding family has the baseline 'prior', "
                    f"not {baseline!r}")
