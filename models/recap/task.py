"""Video ReCap as tasks of the shared recipe, and the recursive caption extraction.

    train@recap_clip → captions@clip → train@recap_segment → captions@segment → train@recap_video → captions@video
    train@recap_flat (video level, no captions), train@recapu (ReCap-U), evaluate@recap

- A level's model trains on the manifest's reference captions of that level (the `hierarchy` table) and, with
  `pseudo_labels`, on the pseudo-labelled train text (`hierarchy_pseudo`: Ego4D-HCap's `*_train_pseudo`
  files, SynthVid's shifted segment windows), which is never scored nor the trivial baseline's; its
  text input is what the level below *generated* (data/captions/<lower>/, every split, train included), as
  ReCap's curriculum writes `captions_pred` / `segment_descriptions_pred` before the next stage.
- ReCap-U (`level: unified`): one parameter set for all three levels, one batch of each level in turn (its own
  optimiser step each: the paper's alternate batching); its lower-level training inputs are the ReCap caption
  stages' outputs, and at test time it runs the whole recursion on its own captions.
- Scores (`evaluate`): metrics/hierarchy.py per level (CIDEr, METEOR, ROUGE-L with PTB; rougeLsum).
- Vocabulary: the manifest's word vocabulary (data/manifest/vocab.json, `vidmem.formats.vocab.Vocab`): lower-
  cased words, punctuation dropped, 0 = BOS/EOS/padding. With `decoder_checkpoint` (a local GPT-2-style
  folder) the checkpoint's byte-level BPE instead (models/recap/gpt2.py), stored in every checkpoint it trains.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metrics.captions import score_captions
from metrics.hierarchy import flatten, score_hierarchy
from models.recap.config import LEVELS, RecapConfig
from models.recap.data import (
    HCAP_FILES,
    Batch,
    Sample,
    captions_inside,
    collate,
    cross_fit_folds,
    hcap_entries,
    join_captions,
    key_of,
    masked_sample,
    read_hcap,
    rows_in,
    uniform_indices,
    windows,
    write_atomic,
    write_hcap,
)
from models.recap.gpt2 import GPT2Spec, GPT2Vocab, checkpoint_dir, checkpoint_files, load_checkpoint, read_spec, read_vocab
from models.recap.model import ReCap
from vidmem.common import UserError, file_hash
from vidmem.formats.vocab import Vocab
from vidmem.params import Layer
from vidmem.paths import Paths
from vidmem.training import EpochContext, Task, read_task_params

log = logging.getLogger(__name__)

LOWER = {"segment": "clip", "video": "segment"}
Span = tuple[str, float, float, str]        # (vid, start, end, text)


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class RecapData:
    """Everything a ReCap task reads: videos, reference captions per level, window features, vocabulary.
    `from_paths` reads the manifest and stores; tests build one in memory."""

    videos: dict[str, tuple[str, float]]                       # vid → (split, duration)
    references: list[Span | tuple]                              # (level, vid, split, start, end, text)
    lavila: dict[str, tuple[np.ndarray, np.ndarray]]           # vid → (feats [W, D], window starts [W])
    vocab: Vocab
    clip: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)   # frames (optional)
    missing: list[tuple] = field(default_factory=list)          # (level, vid, split) of references left out:
                                                                # their video has no features
    pseudo: list[tuple] = field(default_factory=list)           # pseudo-labelled train text, as `references`

    @classmethod
    def from_paths(cls, paths: Paths, clip_frames: bool = False) -> RecapData:
        from vidmem.manifest import Manifest
        from vidmem.store import FeatureStore

        m = Manifest.read(paths.manifest, tables=("videos", "hierarchy", "hierarchy_pseudo"))
        refs = [(h.level, h.video_id, h.split, h.start, h.end, h.text) for h in m.hierarchy]
        pseudo = [(h.level, h.video_id, h.split, h.start, h.end, h.text) for h in m.hierarchy_pseudo]
        if not refs:
            raise UserError(f"{paths.manifest}/hierarchy.jsonl: no hierarchical captions (ego4d_hcap) to train on")
        dur = {v.video_id: v.duration for v in m.videos}
        split = {}
        for r in refs + pseudo:
            split.setdefault(r[1], r[2])
        vids = sorted(split)
        store = FeatureStore(paths.store("lavila"))
        cs = FeatureStore(paths.store("clip")) if clip_frames else None
        missing = [v for v in vids if v not in store or (cs is not None and v not in cs)]
        if len(missing) == len(vids):
            raise UserError(f"{paths.store('lavila')}: no window features for any video with hierarchical "
                            f"captions ({missing[:3]} ...); run extract@lavila")
        if missing:  # failed compression or extraction: left out of training and scores, and counted
            log.warning("recap: %d video(s) without features left out: %s", len(missing), ", ".join(missing[:5]))
            lost = set(missing)
            dropped = [(r[0], r[1], r[2]) for r in refs if r[1] in lost]
            refs = [r for r in refs if r[1] not in lost]
            pseudo = [r for r in pseudo if r[1] not in lost]
            vids = [v for v in vids if v not in lost]
        else:
            dropped = []
        lavila = {v: (np.asarray(store.get(v), np.float32), np.asarray(store.get(v, "times"), np.float64))
                  for v in vids}
        clip = {}
        if cs is not None:
            clip = {v: (np.asarray(cs.get(v), np.float32), np.asarray(cs.get(v, "times"), np.float64))
                    for v in vids}
        vocab = Vocab.from_json(json.loads((paths.manifest / "vocab.json").read_text()),
                                str(paths.manifest / "vocab.json"))
        return cls({v: (split[v], float(dur[v])) for v in vids}, refs, lavila, vocab, clip, dropped, pseudo)

    def coverage(self, split: str) -> dict[str, Any]:
        """The split's videos without features and their references per level, left out of the scores."""
        rows = [r for r in self.missing if r[2] == split]
        return {"n_videos_missing": len({r[1] for r in rows}), "videos_missing": sorted({r[1] for r in rows}),
                "references_missing": dict(sorted(Counter(r[0] for r in rows).items()))}

    def refs(self, level: str, split: str, pseudo: bool = False) -> list[Span]:
        """The split's reference captions of `level`; pseudo: its pseudo-labelled rows (hierarchy_pseudo.jsonl,
        training text only) instead."""
        rows = self.pseudo if pseudo else self.references
        return sorted((v, s, e, t) for lv, v, sp, s, e, t in rows if lv == level and sp == split)

    def ref_texts(self, level: str, split: str) -> dict[str, str]:
        """The split's reference captions of `level` by span key (what predictions are scored against)."""
        return {key_of(v, s, e): t for v, s, e, t in self.refs(level, split)}

    def split_videos(self, split: str) -> list[str]:
        return sorted(v for v, (sp, _) in self.videos.items() if sp == split)

    def folds(self, folds: int) -> dict[str, int]:
        """The cross-fitting fold of every train video."""
        return cross_fit_folds(self.split_videos("train"), folds)


# ---------------------------------------------------------------------------------------------------- task
class RecapTask(Task):
    family = "recap"
    code = ("models/recap", "metrics/hierarchy.py", "metrics/captions.py")

    def __init__(self, name: str, recipe, config: RecapConfig, paths: Paths, params=None,
                 data: RecapData | None = None,
                 generated: Mapping[str, Mapping[str, dict[str, list]]] | None = None):
        """data / generated ({level: {split: {vid: [(s, e, caption)]}}}): in memory instead of the project."""
        super().__init__(name, recipe, config, paths, params)
        self._data = data
        self._in_memory = data is not None
        self._generated: dict[str, dict[str, dict[str, list]]] = {k: dict(v) for k, v in (generated or {}).items()}
        self._samples: dict[tuple[str, str], list[Sample]] = {}
        self._vocab: Vocab | GPT2Vocab | None = None
        self._spec: GPT2Spec | None = None            # the GPT-2 decoder's shape (build / restore)

    # ------------------------------------------------------------------------------------------ data
    @property
    def data(self) -> RecapData:
        if self._data is None:
            self._data = RecapData.from_paths(self.paths, clip_frames=self.config.clip_features == "clip")
        return self._data

    @property
    def gpt2(self) -> bool:
        return str(self.config.decoder_checkpoint).lower() != "none"

    @property
    def vocab(self) -> Vocab | GPT2Vocab:
        """The ids captions are written in: the manifest's words, or the GPT-2 checkpoint's BPE (from the
        restored checkpoint when there is one, else from the folder)."""
        if self._vocab is None:
            if self.gpt2:
                self._vocab = read_vocab(checkpoint_dir(self.config.decoder_checkpoint))
            else:
                self._vocab = self.data.vocab
        return self._vocab

    def share_data(self, other: RecapTask) -> None:
        """Read what `other` read (the caption stage's fold models caption from the same data)."""
        self._data, self._generated = other.data, other._generated

    def generated(self, level: str, split: str) -> dict[str, list[tuple[float, float, str]]]:
        """The captions a caption stage generated for `level` (what the level above reads); with
        `lower_input: reference` the manifest's reference captions of that level instead (an oracle
        ablation: what the level would score on perfect lower-level captions)."""
        if self.config.lower_input == "reference":
            out: dict[str, list[tuple[float, float, str]]] = {}
            for v, s, e, t in self.data.refs(level, split):
                out.setdefault(v, []).append((s, e, t))
            return out
        got = self._generated.setdefault(level, {})
        if split not in got:
            got[split] = read_hcap(self.paths.captions / level, level, split)
        return got[split]

    def uses_text(self, level: str) -> bool:
        return self.config.use_text and level != "clip"

    def lower_inputs(self, level: str) -> list[str]:
        """Which generated levels this model's training reads."""
        levels = self.config.levels
        return sorted({LOWER[lv] for lv in levels if self.uses_text(lv)}, key=LEVELS.index)

    def inputs(self) -> list[Path]:
        if self._in_memory:
            return []
        m, store = self.paths.manifest, self.paths.store("lavila")
        out = [m / "hierarchy.jsonl", m / "videos.jsonl", m / "vocab.json", store / "zarr.json",
               store / "plan.json"]
        if self.config.pseudo_labels:
            out.append(m / "hierarchy_pseudo.jsonl")
        if self.gpt2:
            out += checkpoint_files(checkpoint_dir(self.config.decoder_checkpoint))
        if self.config.clip_features == "clip" and "clip" in self.config.levels:
            out += [self.paths.store("clip") / "zarr.json", self.paths.store("clip") / "plan.json"]
        for lv in self.lower_inputs(self.config.level):
            out += [self.paths.captions / lv / HCAP_FILES[lv].format(split=s) for s in ("train", "val")]
        return out

    def sample(self, level: str, vid: str, start: float, end: float, text: str = "",
               lower: Sequence[tuple[float, float, str]] | None = None) -> Sample:
        """One caption's inputs by §1.2's rules; `lower`: the lower level's generated captions of the video."""
        cfg, d = self.config, self.data
        feats, times = d.lavila[vid]
        kind = "lavila"
        if level == "clip":
            if cfg.clip_features == "clip":
                feats, times = d.clip[vid]
                kind = "clip"
            x = feats[rows_in(times, start, end)]
            mask = np.ones(len(x), dtype=bool)
        elif level == "segment":
            x = feats[rows_in(times, start, end)]
            x = x[uniform_indices(len(x), cfg.segment_feats)]
            mask = np.ones(len(x), dtype=bool)
        else:
            x, mask = masked_sample(feats[rows_in(times, start, end)], cfg.video_feats)
        words: list[int] = []
        if self.uses_text(level):
            inside = captions_inside(lower or [], start, end)
            joined = " ".join(inside) if level == "segment" else join_captions(inside)
            words = self.vocab.encode(joined, cfg.max_text_tokens)
        target = self.vocab.encode(text, cfg.max_words(level)) if text else []
        return Sample(key_of(vid, start, end), vid, level, start, end, x.astype(np.float32), mask, kind, words,
                      target, text)

    def samples(self, level: str, split: str) -> list[Sample]:
        """The reference captions of `level` in `split` with their inputs (cached). A fold model (`fold` ≥ 0)
        trains on the train videos outside its fold."""
        if (level, split) not in self._samples:
            lower = self.generated(LOWER[level], split) if self.uses_text(level) else {}
            refs = self.data.refs(level, split)
            if split == "train" and self.config.pseudo_labels:
                refs = sorted(refs + self.data.refs(level, split, pseudo=True))
            if split == "train" and self.config.fold >= 0:
                fold = self.data.folds(self.config.folds)
                refs = [r for r in refs if fold[r[0]] != self.config.fold]
            self._samples[level, split] = [self.sample(level, v, s, e, t, lower.get(v, [])) for v, s, e, t in refs]
        return self._samples[level, split]

    # ------------------------------------------------------------------------------------------ training
    def build(self) -> nn.Module:
        for lv in self.config.levels:
            if not self.samples(lv, "train"):
                raise UserError(f"recap {self.name}: the train split has no {lv}-level captions")
        if not self.gpt2:
            return ReCap(self.config, self.vocab.size)
        spec, weights, vocab = load_checkpoint(self.config.decoder_checkpoint, self.vocab)
        if self.config.positions > spec.n_positions:
            raise UserError(f"params.yaml families.recap: max_text_tokens / *_words need {self.config.positions} "
                            f"positions, {self.config.decoder_checkpoint} has {spec.n_positions}")
        self._spec = spec
        model = ReCap(self.config, vocab.size, spec)
        model.decoder.lm.load_state_dict(weights)        # strict: every GPT-2 tensor, nothing else
        log.info("recap %s: decoder from %s (%d layers, width %d, %d tokens; embeddings, attention and MLPs "
                 "frozen)", self.name, self.config.decoder_checkpoint, spec.n_layer, spec.n_embd, spec.vocab_size)
        return model

    def _level_batches(self, level: str, rng: np.random.Generator, bs: int) -> Iterator[list[tuple[str, int]]]:
        """One level's batches, reshuffled each pass, forever (ReCap-U cycles the shorter levels)."""
        n = len(self.samples(level, "train"))
        while True:
            order = rng.permutation(n).tolist()
            for a in range(0, n, bs):
                yield [(level, j) for j in order[a : a + bs]]

    def batches(self, ctx: EpochContext):
        bs = self.recipe.batch_size
        levels = self.config.levels
        if len(levels) == 1:
            return [[(levels[0], j) for j in b]
                    for b in ctx.shuffled_batches(len(self.samples(levels[0], "train")), bs)]
        rng = ctx.rng()
        streams = {lv: self._level_batches(lv, rng, bs) for lv in levels}
        out = []
        for _ in range(self._rounds()):
            out += [next(streams[lv]) for lv in levels]     # alternate batching: one batch per level in turn
        return out

    def _rounds(self) -> int:
        """ReCap-U's rounds per epoch: `unified_samples` per level (the paper's force_len), in batches."""
        return -(-self.config.unified_samples // self.recipe.batch_size)

    def steps_per_epoch(self) -> int:
        if len(self.config.levels) == 1:
            return -(-len(self.samples(self.config.levels[0], "train")) // self.recipe.batch_size)
        return self._rounds() * len(self.config.levels)

    def collate(self, samples: Sequence[tuple[str, int]]) -> Batch:
        level = samples[0][0]
        rows = self.samples(level, "train")
        return collate([rows[j] for _, j in samples], self.config.use_text).to(self.device)

    def describe(self, samples: Sequence[tuple[str, int]]) -> str:
        rows = self.samples(samples[0][0], "train")
        return ", ".join(rows[j].key for _, j in samples)

    def loss(self, model: ReCap, batch: Batch) -> torch.Tensor:
        """Teacher-forced cross-entropy over the words and the EOS (padding ignored)."""
        vl = model.encode(batch.feats, batch.feat_mask, batch.kind, batch.level, batch.text, batch.text_mask)
        logits = model(vl, batch.ids)
        return F.cross_entropy(logits[batch.target_mask], batch.targets[batch.target_mask])

    def step(self, model, batch):
        loss = self.loss(model, batch)
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def validate(self, model, epoch: int) -> dict[str, float] | None:
        out = {}
        for lv in self.config.levels:
            rows = self.samples(lv, "val")
            if not rows:
                continue
            total = n = 0.0
            for a in range(0, len(rows), 32):
                chunk = rows[a : a + 32]
                total += float(self.loss(model, collate(chunk, self.config.use_text).to(self.device))) * len(chunk)
                n += len(chunk)
            out[f"{lv}_loss"] = total / n
        if not out:
            return None
        out["loss"] = sum(out.values()) / len(out)
        return out

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]   # a GPT-2 decoder's frozen
        gates = [p for n, p in named if n.endswith("_gate")]                      # weights are left out
        rest = [p for n, p in named if not n.endswith("_gate")]
        return [{"params": rest, "weight_decay": self.recipe.weight_decay},
                {"params": gates, "weight_decay": 0.0, "lr_scale": self.config.gate_lr_scale}]

    def checkpoint_extra(self) -> dict[str, Any]:
        if not self.gpt2:
            return {"vocab_size": self.vocab.size}
        spec = self._spec or read_spec(checkpoint_dir(self.config.decoder_checkpoint))
        return {"vocab_size": self.vocab.size, "gpt2": spec.state(), "tokenizer": self.vocab.state()}

    # ------------------------------------------------------------------------------------------ captioning
    def restore(self, ckpt: Mapping[str, Any]) -> nn.Module:
        spec = None
        if "gpt2" in ckpt:         # trained on a GPT-2-style decoder: shape and tokenizer from the checkpoint
            spec = self._spec = GPT2Spec(**ckpt["gpt2"])
            self._vocab = GPT2Vocab.from_state(ckpt["tokenizer"])
        model = ReCap(self.config, int(ckpt["vocab_size"]), spec)
        model.load_state_dict(ckpt["state_dict"])
        return model.to(self.device).eval()

    @torch.no_grad()
    def caption(self, model: ReCap, samples: Sequence[Sample], batch_size: int = 64) -> list[str]:
        """Decode one caption per sample (greedy, or beam with `beam_size` > 1)."""
        model.eval()
        out: list[str] = []
        by_level: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            by_level.setdefault(s.level, []).append(i)
        result: dict[int, str] = {}
        for lv, idx in by_level.items():
            for a in range(0, len(idx), batch_size):
                chunk = [samples[i] for i in idx[a : a + batch_size]]
                b = collate(chunk, self.config.use_text).to(self.device)
                vl = model.encode(b.feats, b.feat_mask, b.kind, b.level, b.text, b.text_mask)
                for i, ids in zip(idx[a : a + batch_size],
                                  model.generate(vl, self.config.max_words(lv), self.config.beam_size)):
                    result[i] = self.vocab.decode(ids) or "nothing"
        out = [result[i] for i in range(len(samples))]
        return out

    def grid(self, level: str, vid: str) -> list[tuple[float, float]]:
        """Where captions are written at inference: fixed clip_sec / segment_sec grids, the whole video."""
        dur = self.data.videos[vid][1]
        if level == "clip":
            return windows(dur, self.config.clip_sec)
        if level == "segment":
            return windows(dur, self.config.segment_sec)
        return [(0.0, round(dur, 3))]

    def caption_video(self, model: ReCap, level: str, vid: str,
                      lower: Sequence[tuple[float, float, str]] | None) -> list[tuple[float, float, str]]:
        return self.caption_videos(model, level, [vid], {vid: list(lower or [])})[vid]

    def caption_videos(self, model: ReCap, level: str, vids: Sequence[str],
                       lower: Mapping[str, Sequence[tuple[float, float, str]]]) -> dict[str, list]:
        """Every `level` window of `vids` on the inference grid, decoded together (one batch per 64)."""
        samples = [self.sample(level, v, s, e, "", lower.get(v, [])) for v in vids for s, e in self.grid(level, v)]
        out: dict[str, list] = {v: [] for v in vids}
        for s, c in zip(samples, self.caption(model, samples)):
            out[s.video_id].append((s.start, s.end, c))
        return out

    # ------------------------------------------------------------------------------------------ evaluation
    def predict(self, model, split: str) -> dict[str, dict[str, str]]:
        """{level: {key: caption}} at the test references' spans. ReCap levels read the caption stages' lower
        captions; ReCap-U generates its own, level by level (the whole recursion)."""
        preds: dict[str, dict[str, str]] = {}
        own: dict[str, dict[str, list]] = {}
        for lv in self.config.levels:
            refs = self.data.refs(lv, split)
            if self.config.level == "unified" and self.uses_text(lv):
                lower = own[LOWER[lv]]
            else:
                lower = self.generated(LOWER[lv], split) if self.uses_text(lv) else {}
            samples = [self.sample(lv, v, s, e, "", lower.get(v, [])) for v, s, e, _ in refs]
            preds[lv] = dict(zip((s.key for s in samples), self.caption(model, samples)))
            if self.config.level == "unified" and lv != "video":
                below = own.get(LOWER.get(lv, ""), {}) if self.uses_text(lv) else {}
                own[lv] = self.caption_videos(model, lv, self.data.split_videos(split), below)
        return preds

    def write_predictions(self, predictions, path: Path) -> Path:
        path = path.with_suffix(".json")
        write_atomic(path, json.dumps(predictions, indent=1, sort_keys=True).encode())
        return path

    def coverage(self, split: str) -> dict[str, Any]:
        return self.data.coverage(split)

    def evaluate(self, predictions, split: str) -> dict[str, Any]:
        levels = {}
        for lv, preds in predictions.items():
            levels[lv] = (self.data.ref_texts(lv, split), preds)
        scores = score_hierarchy(levels)
        return {**flatten(scores), "levels": scores}


class RecapTrivial(RecapTask):
    """The floor per level: the most frequent train caption of that level, everywhere."""

    def predict(self, model, split: str) -> dict[str, dict[str, str]]:
        out = {}
        for lv in LEVELS:
            counts = Counter(t for _, _, _, t in self.data.refs(lv, "train"))
            if not counts:
                continue
            top = counts.most_common(1)[0][0]
            out[lv] = {key_of(v, s, e): top for v, s, e, _ in self.data.refs(lv, split)}
        return out


# ---------------------------------------------------------------------------------------------------- captions@
def generate_captions(task: RecapTask, model: ReCap, level: str, out: Path, checkpoint: Path | None,
                      splits: Sequence[str] = ("train", "val", "test"), chunk: int = 8,
                      fold_models: Sequence[tuple[RecapTask, ReCap, Path | None]] = (),
                      score: bool = False) -> dict[str, Any]:
    """Caption every `level` window of every video of `splits` into `out/` (Ego4D-HCap files per split).

    fold_models (cross-fitting): one (task, model, checkpoint) per fold, the i-th trained without fold i; a
    train video of fold i is captioned by the i-th, every other video by `model`. Without them `model`
    captions the train split too (captions of videos it trained on).
    score: also return each split's CIDEr-D against the level's references at the same spans
    (`<split>_CIDEr`, over `<split>_scored` captions): the quality of what the level above reads, per split.
    Resumable per video: videos are decoded `chunk` at a time and each video's captions go to
    `out/parts/<vid>.json` with the key of what was read (checkpoint, lower-level captions, config); a rerun
    keeps parts whose key matches and redoes the rest.
    `out/read.json` records what the stage read."""
    lower_level = LOWER.get(level)
    writers = [(task, model, checkpoint)] + list(fold_models)
    hashes = [file_hash(c) if c is not None else f"in-memory-{i}" for i, (_, _, c) in enumerate(writers)]
    configs = [{k: v for k, v in vars(t.config).items()} for t, _, _ in writers]
    record: dict[str, Any] = {"level": level, "checkpoint": str(checkpoint), "checkpoint_sha256": hashes[0],
                              "config": configs[0], "splits": {}}
    fold: dict[str, int] = {}
    if fold_models:
        fold = task.data.folds(len(fold_models))
        record["cross_fit"] = [{"fold": i, "checkpoint": str(c), "checkpoint_sha256": hashes[1 + i],
                                "videos": sum(f == i for f in fold.values())}
                               for i, (_, _, c) in enumerate(fold_models)]
    counts: dict[str, Any] = {"generated": 0, "resumed": 0}
    quality: dict[str, Any] = {}
    for split in splits:
        lower_file = None
        lower: dict[str, list] = {}
        if task.uses_text(level):
            lower = task.generated(lower_level, split)
            lower_file = task.paths.captions / lower_level / HCAP_FILES[lower_level].format(split=split)
        vids = task.data.split_videos(split)
        writer = {v: 1 + fold[v] if split == "train" and v in fold else 0 for v in vids}
        keys = {v: hashlib.sha256(json.dumps([hashes[writer[v]], configs[writer[v]], level, v, lower.get(v, [])],
                                             sort_keys=True, default=str).encode()).hexdigest() for v in vids}
        done: dict[str, list] = {}
        for vid in vids:
            part = out / "parts" / f"{vid}.json"
            if part.is_file():
                try:
                    got = json.loads(part.read_text())
                    if got.get("key") == keys[vid]:
                        done[vid] = [tuple(c) for c in got["captions"]]
                        counts["resumed"] += 1
                except (ValueError, KeyError):
                    pass
        todo = [v for v in vids if v not in done]
        for w, (wtask, wmodel, _) in enumerate(writers):
            mine = [v for v in todo if writer[v] == w]
            for a in range(0, len(mine), chunk):      # a kill loses at most one chunk of videos
                got = wtask.caption_videos(wmodel, level, mine[a : a + chunk], lower)
                for vid, caps in got.items():
                    write_atomic(out / "parts" / f"{vid}.json",
                                 json.dumps({"key": keys[vid], "captions": caps}).encode())
                    done[vid] = [tuple(c) for c in caps]
                    counts["generated"] += 1
        entries: list[Any] = []
        for vid in vids:
            mine = lower.get(vid, [])
            caps = done[vid]
            inputs = [[c for c in mine if s - 1e-6 <= c[0] < e - 1e-6] for s, e, _ in caps] if mine else None
            entries += hcap_entries(level, vid, caps, inputs)
        write_hcap(out / HCAP_FILES[level].format(split=split), level, entries)
        if score:
            quality.update(caption_quality(task, level, split, done))
        record["splits"][split] = {"videos": len(vids), "captions": len(entries),
                                   "lower": str(lower_file) if lower_file else None,
                                   "lower_sha256": file_hash(lower_file) if lower_file else None}
    keep = {f"{v}.json" for sp in splits for v in task.data.split_videos(sp)}
    for p in (out / "parts").glob("*.json"):
        if p.name not in keep:
            p.unlink()
    write_atomic(out / "read.json", json.dumps(record, indent=1, sort_keys=True, default=str).encode())
    log.info("captions@%s: %d videos captioned, %d resumed -> %s", level, counts["generated"], counts["resumed"], out)
    return {**counts, **{f"{sp}_captions": r["captions"] for sp, r in record["splits"].items()}, **quality}


def caption_quality(task: RecapTask, level: str, split: str,
                    captions: Mapping[str, Sequence[tuple[float, float, str]]]) -> dict[str, Any]:
    """CIDEr-D (PTB-tokenised, pycocoevalcap) of generated captions at the spans of the split's references."""
    refs = task.data.ref_texts(level, split)
    preds = {key_of(v, s, e): c for v, caps in captions.items() for s, e, c in caps}
    keys = [k for k in refs if k in preds]
    if not keys:
        return {f"{split}_scored": 0}
    cider = score_captions({k: [refs[k]] for k in keys}, {k: preds[k] for k in keys}, ("CIDEr",),
                           source=f"captions@{level} {split}")["CIDEr"]
    return {f"{split}_CIDEr": cider, f"{split}_scored": len(keys)}


def make_task(name: str, layers: Sequence[Layer], paths: Paths, params: Mapping[str, Any] | None = None,
              baseline: str | None = None) -> RecapTask:
    recipe, cfg = read_task_params(RecapConfig, layers)
    if baseline is None:
        return RecapTask(name, recipe, cfg, paths, params)
    if baseline == "trivial":
        return RecapTrivial(name, recipe, cfg, paths, params)
    raise UserError(f"params.yaml baselines.{name}.kind: the recap family has the baseline 'trivial', "
                    f"not {baseline!r}")
