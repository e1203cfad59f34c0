"""Dense captioning as a task of the shared recipe: train@{pdvc,cm2}, evaluate@{pdvc,cm2,dense_trivial}.

Inputs: the manifest's events (train / val / test; reference files numbered by `annotator`), CLIP frame
features (`clip.zarr`) and, for CM2, the memory bank (`bank.zarr`). Predictions are the ActivityNet
dense-captioning result JSON; scores are densevid_eval's (METEOR, CIDEr, BLEU, ROUGE-L over tIoUs), P/R/F1 and
SODA_c. `select_by: meteor_soda` keeps the epoch with the best val METEOR + SODA_c (PDVC's rule); `loss` the
best val loss. `dense_trivial` is the floor: one whole-video event per test video, captioned with the most
frequent train sentence.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from metrics.dense import evaluate_dense, write_predictions
from models.dense.config import DenseConfig
from models.dense.data import DenseCaptionDataset, InMemoryFeatures, collate
from models.dense.losses import SetCriterion, count_bin_rates
from models.dense.model import DenseCaptioner
from models.dense.train import evaluate_loss, predict, run_model
from vidmem.bank import TextBank, load_bank, sentence_vectors
from vidmem.common import UserError
from vidmem.manifest import Manifest
from vidmem.params import Layer
from vidmem.paths import Paths
from vidmem.store import FeatureStore
from vidmem.training import EpochContext, Task, read_task_params

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("METEOR", "METEOR_2021", "CIDEr", "Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "SODA_c",
                "Precision", "Recall", "F1")


def load_features(paths: Paths, manifest: Manifest, splits: tuple[str, ...],
                  query: str = "frames") -> InMemoryFeatures:
    """The frame features of every video with events in `splits` (small: read once, kept in memory), and what
    CM2's `retrieval_query` reads beside them as 'queries': the window encoder's vectors (`window.zarr`,
    row-aligned with the frames) or, for the `oracle` diagnostic, `oracle_vectors`."""
    store = FeatureStore(paths.store("clip"))
    vids = sorted({e.video_id for e in manifest.events if e.split in splits and e.video_id in store})
    feats = {v: store.get(v) for v in vids}
    times = {v: store.get(v, "times") for v in vids}
    more = {}
    if query == "window":
        wstore = FeatureStore(paths.store("window"))
        missing = [v for v in vids if v not in wstore]
        if missing:
            raise UserError(f"{wstore.path}: no window vectors for {missing[0]!r} ({len(missing)} videos); "
                            "rerun `dvc repro finetune_window`")
        more["queries"] = {v: wstore.get(v) for v in vids}
    elif query == "oracle":
        more["queries"] = oracle_vectors(manifest, FeatureStore(paths.store("text")), times)
    return InMemoryFeatures(feats, times, **more)


def oracle_vectors(manifest: Manifest, text: FeatureStore,
                   times: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per frame of each video, the mean unit text vector of its ground-truth events (annotator 0) that span
    the frame's time; zeros where none does. Window means of these are what a perfect memory would return."""
    events = [e for e in manifest.events if e.annotator == 0 and e.video_id in times]
    vectors = sentence_vectors(text, (e.sentence for e in events))
    dim = int(text.array("sentence").shape[-1])
    acc = {v: np.zeros((len(t), dim), np.float32) for v, t in times.items()}
    count = {v: np.zeros((len(t), 1), np.float32) for v, t in times.items()}
    for e in events:
        t = np.asarray(times[e.video_id], dtype=np.float64)
        inside = ((t >= e.start) & (t <= e.end)).astype(np.float32)[:, None]
        acc[e.video_id] += inside * vectors[e.sentence]
        count[e.video_id] += inside
    return {v: acc[v] / np.maximum(count[v], 1.0) for v in times}


def references(manifest: Manifest, split: str) -> list[dict[str, Any]]:
    """One ActivityNet Captions dict per reference file (annotator) of `split`."""
    durations = {v.video_id: v.duration for v in manifest.videos}
    refs: dict[int, dict[str, Any]] = {}
    for e in manifest.events:
        if e.split != split:
            continue
        ref = refs.setdefault(e.annotator, {})
        entry = ref.setdefault(e.video_id, {"duration": durations.get(e.video_id), "timestamps": [], "sentences": []})
        entry["timestamps"].append([e.start, e.end])
        entry["sentences"].append(e.sentence)
    if not refs:
        raise UserError(f"manifest: split {split!r} has no dense-captioning events to evaluate on")
    return [refs[k] for k in sorted(refs)]


def summarise(scores: Mapping[str, Any], missing: Sequence[str] = ()) -> dict[str, Any]:
    """The reported numbers, with how many reference videos had no features (failed compression or
    extraction): they are still scored — as 0, densevid's rule for a video without predictions."""
    summary = {k: scores[k] for k in SUMMARY_KEYS if k in scores}
    summary.update(n_videos=scores.get("n_videos"), n_predictions=scores.get("n_predictions"),
                   n_videos_missing=len(missing), videos_missing=sorted(missing))
    return summary


class DenseTask(Task):
    family = "dense"
    code = ("models/dense", "kernels", "metrics/dense.py", "metrics/captions.py")

    def __init__(self, name: str, recipe, config: DenseConfig, paths: Paths, params=None,
                 datasets: Mapping[str, DenseCaptionDataset] | None = None, bank: TextBank | None = None):
        """datasets / bank: in-memory splits and memory instead of the manifest and stores (tests, notebooks)."""
        super().__init__(name, recipe, config, paths, params)
        if recipe.select_by not in ("loss", "meteor_soda"):
            raise UserError(f"params.yaml train.{name}.select_by: must be loss or meteor_soda, "
                            f"got {recipe.select_by!r}")
        self._manifest: Manifest | None = None
        self._in_memory = datasets is not None
        self._splits: dict[str, DenseCaptionDataset] = dict(datasets or {})
        self._bank: TextBank | None = bank
        self._criterion: SetCriterion | None = None

    # ------------------------------------------------------------------------------------------ data
    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = Manifest.read(self.paths.manifest, tables=("videos", "events"))
        return self._manifest

    def dataset(self, split: str) -> DenseCaptionDataset:
        if split not in self._splits:
            query = self.config.retrieval_query if self.config.retrieval else "frames"
            queries = None if query == "frames" else "queries"
            if split == "test":  # predict on every test video with any reference; skip (and name) missing ones
                feats = load_features(self.paths, self.manifest, ("test",), query)
                ds = DenseCaptionDataset.from_manifest(self.manifest, split, feats, annotator=None,
                                                       max_words=self.config.max_words,
                                                       resample_len=self.config.resample_len, on_missing="skip",
                                                       queries=queries)
            else:
                feats = load_features(self.paths, self.manifest, ("train", "val"), query)
                ds = DenseCaptionDataset.from_manifest(self.manifest, split, feats, max_words=self.config.max_words,
                                                       resample_len=self.config.resample_len, queries=queries)
            self._splits[split] = ds
        return self._splits[split]

    @property
    def bank(self) -> TextBank | None:
        if self.config.retrieval and self._bank is None:
            self._bank = load_bank(self.paths.bank).to(self.device)
        return self._bank

    def inputs(self) -> list[Path]:
        if self._in_memory:  # nothing on disk to key the run to
            return []
        m, store = self.paths.manifest, self.paths.store("clip")
        data = [m / "events.jsonl", m / "vocab.json", store / "zarr.json", store / "plan.json"]
        if not self.config.retrieval:
            return data
        extra = {"frames": [], "window": [self.paths.store("window")], "oracle": [self.paths.store("text")]}
        return data + [self.paths.bank] + [s / f for s in extra[self.config.retrieval_query]
                                           for f in ("zarr.json", "plan.json")]

    # ------------------------------------------------------------------------------------------ training
    def build(self) -> nn.Module:
        train = self.dataset("train")
        if len(train) == 0:
            raise UserError("dense model: the training split has no videos with events")
        self._criterion = SetCriterion(self.config, count_bin_rates(train.event_counts(),
                                                                     self.config.max_eseq_length))
        self.bank  # load it (CM2) before training starts
        return DenseCaptioner(self.config, train.vocab.size)

    def batches(self, ctx: EpochContext):
        return ctx.shuffled_batches(len(self.dataset("train")), self.recipe.batch_size)

    def steps_per_epoch(self) -> int:
        return -(-len(self.dataset("train")) // self.recipe.batch_size)

    def collate(self, samples: Sequence[int]):
        ds = self.dataset("train")
        return collate([ds[j] for j in samples]).to(self.device)

    def describe(self, samples: Sequence[int]) -> str:
        ds = self.dataset("train")
        return "videos " + ", ".join(ds.videos[j].video_id for j in samples)

    def step(self, model, batch):
        return self._criterion(model, run_model(model, batch, self.bank, training=True), batch)

    def validate(self, model, epoch: int) -> dict[str, float] | None:
        val = self.dataset("val")
        if len(val) == 0:
            return None
        out = {k: v for k, v in evaluate_loss(model, self._criterion, val, self.bank, self.recipe.batch_size,
                                              self.device).items()}
        if self.recipe.select_by == "meteor_soda":
            s = evaluate_dense(predict(model, val, self.bank, batch_size=self.recipe.batch_size),
                               references(self.manifest, "val"))
            out.update(METEOR=s["METEOR"], SODA_c=s["SODA_c"], score=s["METEOR"] + s["SODA_c"])
        return out

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"vocab_size": self.dataset("train").vocab.size}

    # ------------------------------------------------------------------------------------------ evaluation
    def restore(self, ckpt: Mapping[str, Any]) -> nn.Module:
        model = DenseCaptioner(self.config, int(ckpt["vocab_size"]))
        model.load_state_dict(ckpt["state_dict"])
        return model.to(self.device).eval()

    def predict(self, model, split: str) -> dict[str, list[dict[str, Any]]]:
        return predict(model, self.dataset(split), self.bank, batch_size=self.recipe.batch_size)["results"]

    def write_predictions(self, predictions, path: Path) -> Path:
        path = path.with_suffix(".json")
        write_predictions(path, predictions)
        return path

    def evaluate(self, predictions, split: str) -> dict[str, Any]:
        refs = references(self.manifest, split)
        missing = {v for ref in refs for v in ref} - set(predictions)
        return summarise(evaluate_dense(predictions, refs), missing)


class DenseTrivial(DenseTask):
    """The floor: one whole-video event per video, captioned with the most frequent train sentence."""

    def predict(self, model, split: str) -> dict[str, list[dict[str, Any]]]:
        counts = Counter(e.sentence for e in self.manifest.events if e.split == "train")
        if not counts:
            raise UserError("manifest: no train events for the trivial dense-captioning baseline")
        sentence = counts.most_common(1)[0][0]
        durations = {v.video_id: v.duration for v in self.manifest.videos}
        vids = sorted({e.video_id for e in self.manifest.events if e.split == split})
        return {v: [{"timestamp": [0.0, float(durations[v])], "sentence": sentence, "proposal_score": 1.0}]
                for v in vids}


def make_task(name: str, layers: Sequence[Layer], paths: Paths, params: Mapping[str, Any] | None = None,
              baseline: str | None = None) -> DenseTask:
    recipe, cfg = read_task_params(DenseConfig, layers)
    if baseline is None:
        return DenseTask(name, recipe, cfg, paths, params)
    if baseline == "trivial":
        return DenseTrivial(name, recipe, cfg, paths, params)
    raise UserError(f"params.yaml baselines.{name}.kind: the dense family has the baseline 'trivial', "
                    f"not {baseline!r}")
