"""Text-video retrieval as a task of the shared recipe: train@{meanp,emcl}, evaluate@retrieval.

Training pairs: each epoch every train video with captions appears once, with one of its captions drawn from
the epoch's seed (CLIP4Clip's MSR-VTT loader), so a batch holds distinct videos and text i matches video i.
best.pt: the epoch with the best raw val text→video R@1 (EMCL's rule), ties broken by the lower mean rank.
Predictions: the test similarity matrix (texts × videos, .npy) with the ids of its rows and columns (JSON), as
`python -m metrics.retrieval sim.npy rows.json cols.json` re-scores it. `chance` is the floor.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metrics.retrieval import KS, retrieval_metrics
from models.retrieval.config import RetrievalConfig
from models.retrieval.data import DecodedFrames, Split, StoredFrames, StoredTexts, TokenizedTexts
from models.retrieval.model import RetrievalModel, clamp_logit_scale
from vidmem.common import UserError, write_json
from vidmem.manifest import Manifest
from vidmem.params import Layer
from vidmem.paths import Paths
from vidmem.store import FeatureStore
from vidmem.training import EpochContext, Task, read_task_params

log = logging.getLogger(__name__)


class RetrievalTask(Task):
    family = "retrieval"
    code = ("metrics/retrieval.py", "models/encoders", "vidmem/decode.py")

    def __init__(self, name: str, recipe, config: RetrievalConfig, paths: Paths, params=None,
                 manifest: Manifest | None = None, loaded: Mapping[str, tuple[Any, Any]] | None = None):
        """manifest / loaded: the captions and, per split, in-memory (texts, frames) instead of the stores."""
        super().__init__(name, recipe, config, paths, params)
        if recipe.select_by not in ("loss", "t2v_r1"):
            raise UserError(f"params.yaml train.{name}.select_by: must be t2v_r1 or loss, got {recipe.select_by!r}")
        self._manifest = manifest
        self._splits: dict[str, Split] = {}
        self._loaded: dict[str, tuple[Any, Any]] = dict(loaded or {})   # split → (texts, frames)
        self._in_memory = loaded is not None
        self._encoder = None

    # ------------------------------------------------------------------------------------------ data
    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = Manifest.read(self.paths.manifest, tables=("videos", "captions"))
        return self._manifest

    def _available(self) -> set[str] | None:
        if self._in_memory:
            return None
        if self.config.towers == "features":
            return set(FeatureStore(self.paths.store("clip")).ids)
        return {v.video_id for v in self.manifest.videos if self.paths.compressed_video(v.video_id).is_file()}

    def split(self, name: str) -> Split:
        if name not in self._splits:
            s = Split.from_manifest(self.manifest, name, self._available())
            if name == "train" and len(s.videos) < 2:
                raise UserError("manifest captions: the train split needs captions of at least 2 videos")
            self._splits[name] = s
        return self._splits[name]

    def _load(self, splits: tuple[str, ...] = ("train", "val")) -> None:
        """Frames and texts of `splits`, once each (from the stores, or decoded frames; small)."""
        todo = [s for s in splits if s not in self._loaded]
        if not todo:
            return
        parts = [self.split(s) for s in todo]
        videos = [v for s in parts for v in s.videos]
        sentences = [t for s in parts for t in s.sentences]
        c = self.config
        if c.towers == "features":
            texts = StoredTexts(FeatureStore(self.paths.store("text")), sentences, c.max_words)
            frames = StoredFrames(FeatureStore(self.paths.store("clip")), videos, c.max_frames)
        else:
            enc = self.encoder()
            texts = TokenizedTexts(enc, c.max_words)
            frames = DecodedFrames({v: self.paths.compressed_video(v) for v in dict.fromkeys(videos)},
                                   c.max_frames, enc.preprocess)
        for s in todo:
            self._loaded[s] = (texts, frames)

    def _inputs(self, split: str):
        self._load((split,))
        return self._loaded[split]

    def encoder(self):
        """The CLIP towers of the end-to-end setting (a fresh build each call of build())."""
        from models.encoders.clip import ClipConfig, build_clip

        if self._encoder is None:
            c = self.config
            self._encoder = build_clip(ClipConfig(model=c.clip_model, pretrained=c.clip_weights,
                                                  resize_mode=c.clip_resize_mode, seed=self.recipe.seed))
        return self._encoder

    def inputs(self) -> list[Path]:
        if self._in_memory:
            return []
        m = self.paths.manifest
        if self.config.towers == "features":
            stores = [self.paths.store("clip"), self.paths.store("text")]
            return [m / "captions.jsonl"] + [p / f for p in stores for f in ("zarr.json", "plan.json")]
        weights = [Path(self.config.clip_weights)] if self.config.clip_weights.lower() != "none" else []
        return [m / "captions.jsonl", m / "videos.jsonl", self.paths.compress_ledger] + weights

    # ------------------------------------------------------------------------------------------ training
    def build(self) -> nn.Module:
        if self.config.towers == "features":
            return RetrievalModel(self.config, *self._feature_widths())
        enc = self.encoder()
        self._encoder = None  # restore() builds its own copy
        return RetrievalModel(self.config, enc.text_width, enc.embed_dim, towers=enc)

    def _feature_widths(self) -> tuple[int, int]:
        """(word-token width, joint-space width) of the stores, from one item each."""
        if self._in_memory:
            texts, frames = next(iter(self._loaded.values()))
            return (next(iter(texts.tokens.values())).shape[-1], next(iter(frames.feats.values())).shape[-1])
        text, clip = FeatureStore(self.paths.store("text")), FeatureStore(self.paths.store("clip"))
        return int(text.array("tokens").shape[-1]), int(clip.array("feats").shape[-1])

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """New layers at lr, the CLIP towers at lr × coef_lr (EMCL / CLIP4Clip); no decay on 1-d tensors."""
        wd, lr = self.recipe.weight_decay, self.recipe.lr
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for n, p in model.named_parameters():
            if p.requires_grad:
                groups.setdefault((n.startswith("towers."), p.ndim >= 2), []).append(p)
        return [{"params": ps, "weight_decay": wd if decay else 0.0,
                 "lr": lr * (self.config.coef_lr if tower else 1.0), "lr_scale": self.config.coef_lr if tower else 1.0}
                for (tower, decay), ps in sorted(groups.items())]

    def batches(self, ctx: EpochContext):
        train = self.split("train")
        rng = ctx.rng()
        pick = [int(rows[rng.integers(len(rows))]) for rows in train.by_video]
        for b in ctx.shuffled_batches(len(pick), self.recipe.batch_size):
            if len(b) >= 2:
                yield [pick[i] for i in b]

    def steps_per_epoch(self) -> int:
        n = len(self.split("train").videos)
        return n // self.recipe.batch_size + (1 if n % self.recipe.batch_size >= 2 else 0)

    def collate(self, samples: Sequence[int]):
        train = self.split("train")
        texts, frames = self._inputs("train")
        t = texts.batch([train.sentences[i] for i in samples]).to(self.device)
        v = frames.batch([train.videos[train.text_video[i]] for i in samples]).to(self.device)
        return t, v

    def describe(self, samples: Sequence[int]) -> str:
        return "captions " + ", ".join(self.split("train").caption_ids[i] for i in samples)

    def step(self, model, batch):
        return model.loss(*batch)

    def after_step(self, model: nn.Module) -> None:
        clamp_logit_scale(model)

    def validate(self, model, epoch: int) -> dict[str, float] | None:
        if len(self.split("val")) == 0:
            return None
        m = retrieval_metrics(self.similarity(model, "val"), self.split("val").text_video, dsl_temp=None)
        t2v = m["t2v"]
        return {"t2v_R1": t2v["R1"], "t2v_R5": t2v["R5"], "t2v_MeanR": t2v["MeanR"], "v2t_R1": m["v2t"]["R1"],
                "score": t2v["R1"] - 1e-3 * t2v["MeanR"] if self.recipe.select_by == "t2v_r1" else None}

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def similarity(self, model: RetrievalModel, split: str, block: int | None = None) -> np.ndarray:
        """Cache every text and video feature of `split`, then score all pairs blockwise (float64)."""
        s, c = self.split(split), self.config
        text_inputs, frame_inputs = self._inputs(split)
        was = model.training
        model.eval()
        texts, frames, masks = [], [], []
        for a in range(0, len(s), 64):
            texts.append(model.encode_text(text_inputs.batch(s.sentences[a:a + 64]).to(self.device)))
        for a in range(0, len(s.videos), 64):
            v = frame_inputs.batch(s.videos[a:a + 64]).to(self.device)
            frames.append(model.encode_video(v))
            masks.append(v.mask)
        sim = model.similarity(torch.cat(texts).double(), torch.cat(frames).double(), torch.cat(masks).double(),
                               block or c.eval_block, c.eval_em)
        model.train(was)
        return sim.cpu().numpy()

    def restore(self, ckpt: Mapping[str, Any]) -> nn.Module:
        model = self.build()
        model.load_state_dict(ckpt["state_dict"])
        return model.to(self.device).eval()

    def predict(self, model, split: str) -> dict[str, Any]:
        s = self.split(split)
        return {"sim": self.similarity(model, split), "rows": s.row_ids(), "cols": list(s.videos)}

    def write_predictions(self, predictions, path: Path) -> Path:
        """<path>.npy (texts × videos, float64), <path>.rows.json, <path>.cols.json."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        npy = path.with_name(path.name + ".npy")
        np.save(npy, np.asarray(predictions["sim"], dtype=np.float64))
        write_json(path.with_name(path.name + ".rows.json"), predictions["rows"])
        write_json(path.with_name(path.name + ".cols.json"), predictions["cols"])
        return npy

    def evaluate(self, predictions, split: str) -> dict[str, Any]:
        col = {v: j for j, v in enumerate(predictions["cols"])}
        out = retrieval_metrics(predictions["sim"], [col[r["video_id"]] for r in predictions["rows"]])
        out["chance_R1"] = 100.0 / max(1, out["n_videos"])
        return out

    def coverage(self, split: str) -> dict[str, Any]:
        """The split's videos without frames and their captions: left out of the matrix (and so of every R@K,
        which are over the videos that are there), counted beside the scores by stages.evaluate."""
        return self.split(split).coverage()


class RetrievalChance(RetrievalTask):
    """The floor: a uniformly random ranking. Its metrics are the exact expectations (R@K = min(K, V)/V,
    median and mean rank (V + 1)/2); the written matrix is one seeded random draw."""

    def predict(self, model, split: str) -> dict[str, Any]:
        s = Split.from_manifest(self.manifest, split)
        sim = np.random.default_rng(self.recipe.seed).random((len(s), len(s.videos)))
        return {"sim": sim, "rows": s.row_ids(), "cols": list(s.videos)}

    def evaluate(self, predictions, split: str) -> dict[str, Any]:
        n_texts, n = len(predictions["rows"]), len(predictions["cols"])
        if n == 0:
            raise UserError(f"manifest captions: split {split!r} has no captions to retrieve")
        row = {f"R{k}": 100.0 * min(k, n) / n for k in KS}
        row.update(MedianR=(n + 1) / 2, MeanR=(n + 1) / 2)
        return {"t2v": {**row, "queries": n_texts}, "v2t": {**row, "queries": n}, "n_texts": n_texts,
                "n_videos": n, "chance_R1": 100.0 / n, "expected": True}


def make_task(name: str, layers: Sequence[Layer], paths: Paths, params: Mapping[str, Any] | None = None,
              baseline: str | None = None, manifest: Manifest | None = None,
              loaded: Mapping[str, tuple[Any, Any]] | None = None) -> RetrievalTask:
    recipe, cfg = read_task_params(RetrievalConfig, layers)
    if baseline is None:
        return RetrievalTask(name, recipe, cfg, paths, params, manifest, loaded)
    if baseline == "chance":
        return RetrievalChance(name, recipe, dataclasses.replace(cfg), paths, params, manifest)
    raise UserError(f"params.yaml baselines.{name}.kind: the retrieval family has the baseline 'chance', "
                    f"not {baseline!r}")
