"""MemBridge on the shared recipe: pre-training and three downstream tasks, each a train@<name> stage.

- `task: pretrain` — VTM (one hard negative per direction from the dual encoder) + MLM (15 %) + prefix LM,
  equal weights, on the train split's MSR-VTT-style captions. best.pt: the lowest val loss.
- `task: retrieval` — fine-tuned with VTM from the pre-trained weights (`init`); at test the dual encoder's
  top `rerank_top` candidates of every text (and of every video) are re-scored by the matching head.
  Predictions: the texts × videos similarity matrix (.npy + rows/cols JSON, as the retrieval family writes).
- `task: caption` — fine-tuned with the prefix LM; decoded greedily and by beam search, both scored with
  BLEU-4, METEOR, ROUGE-L, CIDEr (metrics/captions.py). Predictions `[{"video_id", "caption"}]` (beam; the
  greedy ones beside them).
- `task: qa` — answer classification over the closed answer set (ingest's answers.json) from the video-mean
  and question-end outputs. Predictions `[{"question_id", "answer"}]`; metrics/qa.py.

`bridge: false` is the baseline of each (full attention, no bridges), pre-trained the same way.
Floors (`baselines.<name>.kind`): chance (expected R@K of a random ranking), dual (the dual encoder's own
ranking, no re-ranking), top_caption (the most frequent train caption for every video), top_answer (the most
frequent train answer for every question).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metrics.captions import score_corpora, tokenize_captions
from metrics.qa import qa_metrics
from metrics.retrieval import retrieval_metrics
from models.membridge.config import MemBridgeConfig
from models.membridge.data import Words, answer_set, distinct_video_batches, dual_similarity
from models.membridge.model import MemBridgeModel
from models.retrieval.data import Split, StoredFrames, StoredTexts
from models.retrieval.task import RetrievalChance, RetrievalTask
from vidmem.common import UserError, read_json, write_json
from vidmem.formats.vocab import tokenize
from vidmem.manifest import QA, Manifest
from vidmem.params import Layer
from vidmem.paths import Paths
from vidmem.store import FeatureStore
from vidmem.training import EpochContext, Task, read_task_params

log = logging.getLogger(__name__)

EVAL_SEED = 1234            # fixed draws (masks, prefixes, hard negatives) for validation and test losses
PAIRS_PER_FORWARD = 256


@dataclasses.dataclass
class Loaded:
    """What the stores give a task: frames per video and sentence vectors per caption (dual encoder)."""

    frames: StoredFrames
    texts: StoredTexts | None = None


class MemBridgeTask(Task):
    family = "membridge"
    code = ("models/membridge", "models/retrieval")

    def __init__(self, name: str, recipe, config: MemBridgeConfig, paths: Paths, params=None,
                 manifest: Manifest | None = None, loaded: Loaded | None = None,
                 answers: Mapping[str, int] | None = None):
        """manifest / loaded / answers: in-memory data instead of data/manifest and the stores (tests)."""
        super().__init__(name, recipe, config, paths, params)
        self._manifest, self._loaded, self._answers = manifest, loaded, answers
        self._in_memory = loaded is not None
        self._splits: dict[str, Split] = {}
        self._words: Words | None = None

    # ------------------------------------------------------------------------------------------ data
    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = Manifest.read(self.paths.manifest, tables=("videos", "captions", "qa"))
        return self._manifest

    @property
    def words(self) -> Words:
        if self._words is None:
            self._words = Words.from_manifest(self.manifest)
        return self._words

    @property
    def answers(self) -> list[str]:
        if self._answers is None:
            path = self.paths.manifest / "answers.json"
            self._answers = read_json(path) if path.is_file() else {}
        return answer_set(self.manifest, self._answers)

    def _available(self) -> set[str] | None:
        if self._in_memory:
            return None
        if not hasattr(self, "_ids"):
            self._ids = set(FeatureStore(self.paths.store("clip")).ids)
        return self._ids

    def split(self, name: str) -> Split:
        if name not in self._splits:
            self._splits[name] = Split.from_manifest(self.manifest, name, self._available())
        return self._splits[name]

    def coverage(self, split: str) -> dict[str, Any]:
        """Videos of the split without frames (failed compression or extraction), left out of every task's
        scores with their captions and questions; stages.evaluate writes this beside each row."""
        available = self._available()
        lost = [q for q in self.manifest.qa if q.split == split and available is not None
                and q.video_id not in available]
        cov = self.split(split).coverage()
        cov["videos_missing"] = sorted(set(cov["videos_missing"]) | {q.video_id for q in lost})
        cov.update(n_videos_missing=len(cov["videos_missing"]), n_questions_missing=len(lost))
        return cov

    def questions(self, split: str) -> list[QA]:
        available = self._available()
        return [q for q in self.manifest.qa
                if q.split == split and (available is None or q.video_id in available)]

    @property
    def loaded(self) -> Loaded:
        """Frames of every video with captions or questions, sentence vectors of every caption (read once)."""
        if self._loaded is None:
            splits = [self.split(s) for s in ("train", "val", "test")]
            videos = [v for s in splits for v in s.videos] + [q.video_id for q in self.manifest.qa]
            available = self._available()
            videos = [v for v in dict.fromkeys(videos) if v in available]
            frames = StoredFrames(FeatureStore(self.paths.store("clip")), videos, self.config.max_frames)
            sentences = [t for s in splits for t in s.sentences]
            texts = StoredTexts(FeatureStore(self.paths.store("text")), sentences, 1) if sentences else None
            self._loaded = Loaded(frames, texts)
        return self._loaded

    def inputs(self) -> list[Path]:
        if self._in_memory:
            return []
        m = self.paths.manifest
        stores = [self.paths.store("clip"), self.paths.store("text")]
        return [m / "captions.jsonl", m / "qa.jsonl", m / "answers.json", m / "vocab.json"] + \
            [p / f for p in stores for f in ("zarr.json", "plan.json")]

    def video_batch(self, videos: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.loaded.frames.batch(videos)
        return v.feats.to(self.device), v.mask.to(self.device)

    def text_batch(self, sentences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, n = self.words.batch(sentences, self.config.max_words)
        return ids.to(self.device), n.to(self.device)

    def dual(self, split: Split, rows: Sequence[int] | None = None) -> torch.Tensor:
        """Dual-encoder similarities of `rows` (texts; default all) against every video of `split`, or, for a
        batch, of text i against the video of text j."""
        if self.loaded.texts is None:
            raise UserError("manifest captions: no captions to score")
        rows = range(len(split)) if rows is None else rows
        sent = torch.from_numpy(np.stack([self.loaded.texts.sentence[split.sentences[i]] for i in rows]))
        frames, mask = self.video_batch(split.videos)
        return dual_similarity(frames, mask, sent.to(self.device))

    # ------------------------------------------------------------------------------------------ model
    def clip_dim(self) -> int:
        return int(next(iter(self.loaded.frames.feats.values())).shape[-1])

    def build(self) -> nn.Module:
        answers = len(self.answers) if self.config.task == "qa" else 0
        return MemBridgeModel(self.config, self.clip_dim(), len(self.words), answers)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"vocab_size": len(self.words)}

    def caption_batches(self, ctx: EpochContext) -> list[list[int]]:
        train = self.split("train")
        if len(train.videos) < 2:
            raise UserError("manifest captions: the train split needs captions of at least 2 videos")
        return distinct_video_batches(train.by_video, self.recipe.batch_size, ctx.rng(),
                                      ctx.permutation(len(train.videos)))

    def caption_tensors(self, split: Split, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        frames, mask = self.video_batch([split.videos[split.text_video[i]] for i in rows])
        ids, n = self.text_batch([split.sentences[i] for i in rows])
        video = torch.tensor([split.text_video[i] for i in rows], device=self.device)
        # pairs that are no negatives: the same video, or a sentence that is also a caption of the other video
        of = self.described(split)
        cols = [split.text_video[i] for i in rows]
        same = torch.tensor([[c in of[split.sentences[i]] for c in cols] for i in rows], device=self.device)
        return {"frames": frames, "mask": mask, "ids": ids, "len": n, "video": video, "same": same}

    def described(self, split: Split) -> dict[str, set[int]]:
        """Per sentence, the videos of `split` it is a caption of."""
        key = id(split)
        if getattr(self, "_described", (None,))[0] != key:
            of: dict[str, set[int]] = collections.defaultdict(set)
            for sentence, video in zip(split.sentences, split.text_video):
                of[sentence].add(video)
            self._described = (key, of)
        return self._described[1]

    def describe(self, samples: Sequence[Any]) -> str:
        return f"{len(samples)} samples, first {samples[0]!r}"

    # the pieces every caption-trained task shares -------------------------------------------------
    def vtm(self, model: MemBridgeModel, b: Mapping[str, torch.Tensor], split: Split, rows: Sequence[int],
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        sent = torch.from_numpy(np.stack([self.loaded.texts.sentence[split.sentences[i]] for i in rows]))
        dual = dual_similarity(b["frames"], b["mask"], sent.to(self.device))
        same = b["same"] | (b["video"][:, None] == b["video"][None, :])
        return model.vtm_loss(b["frames"], b["mask"], b["ids"], b["len"], dual, same, self.config.hard_temp,
                              generator)

    def steps_per_epoch(self) -> int | None:
        """Batches of distinct_video_batches (their count does not depend on the draw)."""
        sizes = [len(r) for r in self.split("train").by_video]
        bs = self.recipe.batch_size
        n = 0
        for r in range(max(sizes, default=0)):
            k = sum(1 for s in sizes if s > r)
            n += k // bs + (1 if k % bs >= 2 else 0)
        return n


# -------------------------------------------------------------------------------------------------- pretrain
class PretrainTask(MemBridgeTask):
    def batches(self, ctx: EpochContext):
        return self.caption_batches(ctx)

    def collate(self, samples):
        return list(samples), self.caption_tensors(self.split("train"), samples)

    def losses(self, model, split: Split, rows: Sequence[int], b, generator=None) -> dict[str, torch.Tensor]:
        cfg = self.config
        vtm, vtm_acc = self.vtm(model, b, split, rows, generator)
        mlm, mlm_acc = model.mlm_loss(b["frames"], b["mask"], b["ids"], b["len"], cfg.mlm_prob, generator)
        plm, plm_acc = model.plm_loss(b["frames"], b["mask"], b["ids"], b["len"], generator=generator)
        return {"loss": vtm + mlm + plm, "vtm": vtm, "mlm": mlm, "plm": plm, "vtm_acc": vtm_acc,
                "mlm_acc": mlm_acc, "plm_acc": plm_acc}

    def step(self, model, batch):
        rows, b = batch
        terms = self.losses(model, self.split("train"), rows, b)
        return terms["loss"], {k: float(v.detach()) for k, v in terms.items()}

    @torch.no_grad()
    def split_losses(self, model, name: str) -> dict[str, float] | None:
        """Mean losses and accuracies over `name`'s captions in distinct-video batches, with fixed draws."""
        s = self.split(name)
        if len(s.videos) < 2:
            return None
        was = model.training
        model.eval()
        g = torch.Generator().manual_seed(EVAL_SEED)
        batches = distinct_video_batches(s.by_video, self.recipe.batch_size, np.random.default_rng(EVAL_SEED),
                                         range(len(s.videos)))
        sums: dict[str, float] = collections.defaultdict(float)
        n = 0
        for rows in batches:
            terms = self.losses(model, s, rows, self.caption_tensors(s, rows), g)
            for k, v in terms.items():
                sums[k] += float(v) * len(rows)
            n += len(rows)
        model.train(was)
        return {k: v / n for k, v in sums.items()}

    def validate(self, model, epoch: int):
        return self.split_losses(model, "val")

    def predict(self, model, split: str):
        return {"losses": self.split_losses(model, split), "split": split}

    def write_predictions(self, predictions, path: Path) -> Path:
        out = Path(path).with_name(Path(path).name + ".json")
        write_json(out, predictions)
        return out

    def evaluate(self, predictions, split: str):
        if predictions["losses"] is None:
            raise UserError(f"manifest captions: split {split!r} needs captions of at least 2 videos")
        return dict(predictions["losses"])


# ------------------------------------------------------------------------------------------------- retrieval
class RerankTask(MemBridgeTask):
    """Dual-encoder candidates re-scored by the matching head."""

    code = MemBridgeTask.code + ("metrics/retrieval.py",)

    def batches(self, ctx: EpochContext):
        return self.caption_batches(ctx)

    def collate(self, samples):
        return list(samples), self.caption_tensors(self.split("train"), samples)

    def step(self, model, batch):
        rows, b = batch
        loss, acc = self.vtm(model, b, self.split("train"), rows)
        return loss, {"loss": float(loss.detach()), "vtm_acc": float(acc)}

    @torch.no_grad()
    def similarity(self, model: MemBridgeModel, split: str) -> np.ndarray:
        """Texts × videos: the dual encoder's cosine, with every candidate pair (a text's top `rerank_top`
        videos and a video's top `rerank_top` texts; all pairs when 0) re-scored as match log-odds +
        rerank_dual × cosine (BLIP's re-ranking adds the two; 0: the matching head alone), shifted above every
        non-candidate."""
        s = self.split(split)
        dual = self.dual(s).cpu().numpy().astype(np.float64)
        k = self.config.rerank_top
        cand = np.zeros(dual.shape, dtype=bool)
        if k == 0 or k >= dual.shape[1]:
            cand[:] = True
        else:
            np.put_along_axis(cand, np.argsort(-dual, axis=1, kind="stable")[:, :k], True, axis=1)
        if 0 < k < dual.shape[0]:
            np.put_along_axis(cand, np.argsort(-dual, axis=0, kind="stable")[:k], True, axis=0)
        pairs = np.argwhere(cand)
        was = model.training
        model.eval()
        scores = np.empty(len(pairs))
        for a in range(0, len(pairs), PAIRS_PER_FORWARD):
            p = pairs[a: a + PAIRS_PER_FORWARD]
            frames, mask = self.video_batch([s.videos[j] for j in p[:, 1]])
            ids, n = self.text_batch([s.sentences[i] for i in p[:, 0]])
            logits = model.match_logits(model.fuse(frames, mask, ids, n), n)
            scores[a: a + len(p)] = (logits[:, 1] - logits[:, 0]).double().cpu().numpy()
        model.train(was)
        sim = dual.copy()
        if len(scores):
            scores = scores + self.config.rerank_dual * dual[cand]
            sim[cand] = scores - scores.min() + 2.0
        return sim

    def validate(self, model, epoch: int):
        s = self.split("val")
        if len(s) == 0:
            return None
        m = retrieval_metrics(self.similarity(model, "val"), s.text_video, dsl_temp=None)
        return {"t2v_R1": m["t2v"]["R1"], "t2v_MeanR": m["t2v"]["MeanR"], "v2t_R1": m["v2t"]["R1"],
                "score": m["t2v"]["R1"] - 1e-3 * m["t2v"]["MeanR"]}

    def predict(self, model, split: str):
        return RetrievalTask.predict(self, model, split)      # the retrieval family's similarity-matrix format

    def write_predictions(self, predictions, path: Path) -> Path:
        return RetrievalTask.write_predictions(self, predictions, path)

    def evaluate(self, predictions, split: str):
        col = {v: j for j, v in enumerate(predictions["cols"])}
        out = retrieval_metrics(predictions["sim"], [col[r["video_id"]] for r in predictions["rows"]],
                                dsl_temp=None)
        out["chance_R1"] = 100.0 / max(1, out["n_videos"])
        return out


class DualBaseline(RerankTask):
    """The dual encoder's own ranking (meanP on the stored features), nothing re-ranked."""

    def predict(self, model, split: str):
        s = self.split(split)
        sim = self.dual(s).cpu().numpy().astype(np.float64)
        return {"sim": sim, "rows": s.row_ids(), "cols": list(s.videos)}


class ChanceBaseline(RerankTask):
    """A uniformly random ranking: the exact expected R@K (the retrieval family's floor)."""

    def predict(self, model, split: str):
        return RetrievalChance.predict(self, model, split)

    def evaluate(self, predictions, split: str):
        return RetrievalChance.evaluate(self, predictions, split)


# -------------------------------------------------------------------------------------------------- captions
class CaptionTask(MemBridgeTask):
    """Prefix-LM captioning of a whole video."""

    code = MemBridgeTask.code + ("metrics/captions.py",)

    def batches(self, ctx: EpochContext):
        return self.caption_batches(ctx)

    def collate(self, samples):
        return self.caption_tensors(self.split("train"), samples)

    def step(self, model, b):
        loss, acc = model.plm_loss(b["frames"], b["mask"], b["ids"], b["len"])
        return loss, {"loss": float(loss.detach()), "plm_acc": float(acc)}

    def references(self, split: str) -> dict[str, list[str]]:
        s = self.split(split)
        return {v: [s.sentences[i] for i in rows] for v, rows in zip(s.videos, s.by_video)}

    @torch.no_grad()
    def decode(self, model: MemBridgeModel, videos: Sequence[str], beam: bool) -> dict[str, str]:
        was = model.training
        model.eval()
        out: dict[str, str] = {}
        for a in range(0, len(videos), 32):
            part = list(videos[a: a + 32])
            frames, mask = self.video_batch(part)
            ids = model.beam_search(frames, mask) if beam else model.greedy(frames, mask)
            out.update({v: self.words.decode(i) for v, i in zip(part, ids)})
        model.train(was)
        return out

    def validate(self, model, epoch: int):
        """Greedy val CIDEr-D on the family's word tokenisation (no Java: it runs every epoch)."""
        refs = self.references("val")
        if not refs:
            return None
        pred = self.decode(model, list(refs), beam=False)
        tok = {v: [" ".join(tokenize(c)) for c in r] for v, r in refs.items()}
        cider = score_corpora([(tok, pred)], ("CIDEr",), source="val captions")[0].corpus["CIDEr"]
        return {"CIDEr": cider, "score": cider}

    def predict(self, model, split: str):
        videos = list(self.references(split))
        return {"beam": self.decode(model, videos, beam=True),
                "greedy": self.decode(model, videos, beam=False)}

    def write_predictions(self, predictions, path: Path) -> Path:
        """<path>.json (beam search) and <path>.greedy.json, each [{"video_id", "caption"}]."""
        path = Path(path)
        main = path.with_name(path.name + ".json")
        for name, key in ((main, "beam"), (path.with_name(path.name + ".greedy.json"), "greedy")):
            if key in predictions:
                write_json(name, [{"video_id": v, "caption": c} for v, c in predictions[key].items()])
        return main

    def evaluate(self, predictions, split: str):
        """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D per decoding (one PTB tokenisation, shared METEOR trips)."""
        refs = self.references(split)
        if not refs:
            raise UserError(f"manifest captions: split {split!r} has no captions")
        kinds = [k for k in ("beam", "greedy") if k in predictions]
        both = tokenize_captions({**{("ref", v): r for v, r in refs.items()},
                                  **{(k, v): [predictions[k][v]] for k in kinds for v in refs}})
        r = {v: both[("ref", v)] for v in refs}
        scores = score_corpora([(r, {v: both[(k, v)][0] for v in refs}) for k in kinds],
                               source=f"{split} captions")
        out: dict[str, Any] = {k: sc.corpus for k, sc in zip(kinds, scores)}
        out.update(videos=len(refs), beam_size=self.config.beam_size)
        return out


class TopCaptionBaseline(CaptionTask):
    """Every video gets the most frequent train caption (ties: the first in manifest order)."""

    def predict(self, model, split: str):
        counts = collections.Counter(self.split("train").sentences)
        if not counts:
            raise UserError("manifest captions: no train captions")
        top = counts.most_common(1)[0][0]
        return {"beam": {v: top for v in self.references(split)}}


# -------------------------------------------------------------------------------------------------------- QA
class QATask(MemBridgeTask):
    """Answer classification over the closed answer set."""

    code = MemBridgeTask.code + ("metrics/qa.py",)

    def label(self, answer: str) -> int:
        if not hasattr(self, "_label"):
            self._label = {a: i for i, a in enumerate(self.answers)}
        return self._label.get(answer, -100)           # outside the set: ignored in training, wrong at test

    def batches(self, ctx: EpochContext):
        rows = self.questions("train")
        if not rows:
            raise UserError("manifest qa: no train questions with frames")
        return list(ctx.shuffled_batches(len(rows), self.recipe.batch_size))

    def steps_per_epoch(self) -> int | None:
        return -(-len(self.questions("train")) // self.recipe.batch_size)

    def qa_tensors(self, rows: Sequence[QA]):
        frames, mask = self.video_batch([q.video_id for q in rows])
        ids, n = self.text_batch([q.question for q in rows])
        return frames, mask, ids, n

    def collate(self, samples):
        qs = self.questions("train")
        rows = [qs[i] for i in samples]
        label = torch.tensor([self.label(q.answer) for q in rows], device=self.device)
        return (*self.qa_tensors(rows), label)

    def step(self, model, batch):
        frames, mask, ids, n, label = batch
        logits = model.answer_logits(model.fuse(frames, mask, ids, n), n)
        loss = nn.functional.cross_entropy(logits, label, ignore_index=-100)
        return loss, {"loss": float(loss.detach()), "acc": float((logits.argmax(-1) == label).float().mean())}

    @torch.no_grad()
    def answer(self, model, rows: Sequence[QA]) -> dict[str, str]:
        was = model.training
        model.eval()
        out = {}
        for a in range(0, len(rows), 128):
            part = rows[a: a + 128]
            frames, mask, ids, n = self.qa_tensors(part)
            pick = model.answer_logits(model.fuse(frames, mask, ids, n), n).argmax(-1).tolist()
            out.update({q.qa_id: self.answers[i] for q, i in zip(part, pick)})
        model.train(was)
        return out

    def validate(self, model, epoch: int):
        rows = self.questions("val")
        if not rows:
            return None
        acc = qa_metrics(self.answer(model, rows), {q.qa_id: q.answer for q in rows})["accuracy"]
        return {"accuracy": acc, "score": acc}

    def predict(self, model, split: str):
        return self.answer(model, self.questions(split))

    def write_predictions(self, predictions, path: Path) -> Path:
        out = Path(path).with_name(Path(path).name + ".json")
        write_json(out, [{"question_id": q, "answer": a} for q, a in predictions.items()])
        return out

    def evaluate(self, predictions, split: str):
        rows = self.questions(split)
        if not rows:
            raise UserError(f"manifest qa: split {split!r} has no questions")
        types = {q.qa_id: q.answer_type for q in rows if getattr(q, "answer_type", None)}
        out = qa_metrics(predictions, {q.qa_id: q.answer for q in rows}, types or None)
        out["answers"] = len(self.answers)
        return out


class TopAnswerBaseline(QATask):
    """Every question gets the most frequent train answer (ties: the first in manifest order)."""

    def predict(self, model, split: str):
        counts = collections.Counter(q.answer for q in self.manifest.qa if q.split == "train")
        if not counts:
            raise UserError("manifest qa: no train questions")
        top = counts.most_common(1)[0][0]
        return {q.qa_id: top for q in self.questions(split)}


TASKS = {"pretrain": PretrainTask, "retrieval": RerankTask, "caption": CaptionTask, "qa": QATask}
BASELINES = {"chance": ChanceBaseline, "dual": DualBaseline, "top_caption": TopCaptionBaseline,
             "top_answer": TopAnswerBaseline}


def make_task(name: str, layers: Sequence[Layer], paths: Paths, params: Mapping[str, Any] | None = None,
              baseline: str | None = None, manifest: Manifest | None = None, loaded: Loaded | None = None,
              answers: Mapping[str, int] | None = None) -> MemBridgeTask:
    recipe, cfg = read_task_params(MemBridgeConfig, layers)
    if baseline is None:
        cls = TASKS[cfg.task]
    elif baseline in BASELINES:
        cls = BASELINES[baseline]
    else:
        raise UserError(f"params.yaml baselines.{name}.kind: the membridge family has the baselines "
                        f"{', '.join(BASELINES)}, not {baseline!r}")
    return cls(name, recipe, cfg, paths, params, manifest, loaded, answers)
