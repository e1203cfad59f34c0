"""finetune_window on the shared recipe: (window, sentence) pairs of the train split, LaViLa's dual-encoder
objective over stored per-frame CLIP vectors.

Pairs: every train sentence tied to a time span (dense events, grounding queries, long videos' clip captions;
whole-video captions span the whole video — the tables `finetune_clip` uses) draws `windows_per_text` window
centres inside its span each epoch. A window is `window` seconds around its centre, moved inside the video,
read as `frames` frame vectors: the stored frames nearest to the midpoints of `frames` equal sub-windows (the
frame rule `extract@lavila` follows). Its positives are *all* texts valid at its centre, so the symmetric
InfoNCE has multi-positive targets over the batch's distinct sentences (identical sentences are one text).

The text side is the shared CLIP text tower as `finetune_clip` left it: its sentence vectors are read from
`text.zarr` and stay fixed, so the memory bank and every family's text features keep their meaning.

Validation (`window_retrieval`): each val event's window (centred on the event's middle) ranks all distinct val
event sentences; a hit when a sentence valid at the window's centre is first (R@1) or in the top 5 — the
rule `finetune_clip` scores its middle frames by, so the two are comparable. Beside it: the middle frame
alone, the frame mean (the untrained encoder, exactly), chance, and an oracle that knows the event's colour
and shape and nothing else (`colour_shape_oracle`).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from models.encoders.tuning import TABLES, VideoTexts, collect_spans, multi_positive_infonce
from models.window.model import WindowEncoder
from vidmem.bank import sentence_vectors
from vidmem.common import UserError
from vidmem.manifest import Manifest
from vidmem.params import bounded, to_dict
from vidmem.paths import Paths
from vidmem.store import ArraySpec, FeatureStore, ShardedWriter
from vidmem.synth.parse import parse
from vidmem.training import EpochContext, Task, read_task_params

log = logging.getLogger(__name__)


@dataclass
class WindowConfig:
    """The window encoder and its pairs (`finetune_window` params beside the recipe's optimisation keys)."""

    window: float = bounded(4.0, lo=0.01)  # seconds per window (LaViLa / ReCap: 4)
    frames: int = bounded(12, lo=1)  # frame vectors per window (12 = every frame of 4 s at 3 fps)
    width: int = bounded(256, lo=8)
    layers: int = bounded(2, lo=0)
    heads: int = bounded(4, lo=1)
    dropout: float = bounded(0.1, lo=0, hi=1)
    windows_per_text: int = bounded(4, lo=1)  # window centres drawn inside each sentence's span, per epoch
    tables: tuple[Literal["events", "queries", "captions", "hierarchy"], ...] = TABLES

    def check(self, where: str = "finetune_window") -> None:
        if self.width % self.heads:
            raise UserError(f"params.yaml {where}: width ({self.width}) must be divisible by heads ({self.heads})")


# ---------------------------------------------------------------------------------------------------- windows
def stored_end(times: np.ndarray) -> float:
    """A stored video's end: its last frame plus one frame interval."""
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    return float(times[-1]) + step


def window_frames(times: np.ndarray, centres: np.ndarray, window: float, frames: int) -> np.ndarray:
    """Frame indices [len(centres), frames] of a `window`-s window around each centre, moved inside the video
    (a video shorter than the window: the whole video): the frame shown at the middle of each of `frames`
    equal parts — the last frame whose time is <= the midpoint, `vidmem.decode.window_frames`' rule."""
    end = stored_end(times)
    w = min(window, end)
    start = np.clip(np.asarray(centres, dtype=np.float64) - w / 2, 0.0, end - w)
    mids = start[:, None] + (np.arange(frames) + 0.5) * (w / frames)
    return np.clip(np.searchsorted(times, mids, side="right") - 1, 0, len(times) - 1).astype(np.int64)


@dataclass
class VideoFeats:
    texts: VideoTexts
    feats: np.ndarray  # [T, D] float32 unit rows
    times: np.ndarray  # [T] seconds


def load_videos(spans: list[VideoTexts], store: FeatureStore) -> list[VideoFeats]:
    out = []
    for v in spans:
        if v.video_id not in store:
            continue  # failed extraction: listed in the store's ledger
        f = np.asarray(store.get(v.video_id), dtype=np.float32)
        f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        out.append(VideoFeats(v, f, np.asarray(store.get(v.video_id, "times"), dtype=np.float64)))
    return out


# ---------------------------------------------------------------------------------------------------- metrics
def _hit_at_5(n: int, valid: int) -> float:
    """P(at least one of `valid` among n is in a uniformly random top 5 of the n)."""
    if n <= 5:
        return float(valid > 0)
    return 1.0 - math.comb(n - valid, 5) / math.comb(n, 5)


def rank_hits(scores: torch.Tensor, valid: list[set[int]]) -> tuple[float, float]:
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices.tolist()
    r1 = sum(t[0] in v for t, v in zip(top, valid)) / len(valid)
    r5 = sum(any(j in v for j in t) for t, v in zip(top, valid)) / len(valid)
    return r1, r5


def colour_shape_oracle(own: list[str], valid: list[set[int]], sentences: list[str]) -> tuple[float, float]:
    """A reader of colour and shape only: it ranks first, in random order, every sentence naming the query
    event's object (its colour and shape noun); expected R@1 and R@5 over that random order. A sentence the
    grammar cannot read never names the object; a query it cannot read ties every sentence."""
    subjects = [m.subject if (m := parse(s)) else None for s in sentences]
    r1 = r5 = 0.0
    for s, v in zip(own, valid):
        m = parse(s)
        tie = [j for j, subj in enumerate(subjects) if m is None or subj == m.subject]
        hits = sum(j in v for j in tie)
        r1 += hits / len(tie)
        r5 += _hit_at_5(len(tie), hits) if len(tie) >= 5 or hits else 0.0
    return r1 / len(own), r5 / len(own)


@torch.inference_mode()
def window_retrieval(encoder: WindowEncoder | None, videos: list[VideoFeats], manifest: Manifest, split: str,
                     text: dict[str, np.ndarray], window: float, frames: int) -> dict[str, Any]:
    """Each event of `split` (annotator 0) → all its distinct event sentences; see the module docstring.
    encoder None: only the rows that need no encoder (frame, frame mean, chance, oracle)."""
    by_vid = {v.texts.video_id: v for v in videos}
    events = [e for e in manifest.events if e.split == split and e.annotator == 0 and e.video_id in by_vid]
    sentences = sorted({e.sentence for e in events})
    if not events:
        return {"queries": 0}
    col = {s: j for j, s in enumerate(sentences)}
    txt = torch.from_numpy(np.stack([text[s] for s in sentences]))
    mid_rows, win_rows, valid, own = [], [], [], []
    for e in events:
        v = by_vid[e.video_id]
        c = (e.start + e.end) / 2
        idx = window_frames(v.times, np.asarray([c]), window, frames)[0]
        mid_rows.append(v.feats[int(np.argmin(np.abs(v.times - c)))])
        win_rows.append(v.feats[idx])
        ok = {col[t] for t in v.texts.valid_at(c) if t in col} | {col[e.sentence]}
        valid.append(ok)
        own.append(e.sentence)
    mid = torch.from_numpy(np.stack(mid_rows))
    win = torch.from_numpy(np.stack(win_rows))
    out: dict[str, Any] = {"queries": len(events), "sentences": len(sentences)}
    out["frame"] = dict(zip(("r1", "r5"), rank_hits(mid @ txt.t(), valid)))
    out["frame_mean"] = dict(zip(("r1", "r5"), rank_hits(win.mean(1) @ txt.t(), valid)))
    if encoder is not None:
        encoder.eval()
        out["window"] = dict(zip(("r1", "r5"), rank_hits(encoder(win) @ txt.t(), valid)))
    n = len(sentences)
    out["chance"] = {"r1": float(np.mean([len(v) / n for v in valid])),
                     "r5": float(np.mean([_hit_at_5(n, len(v)) for v in valid]))}
    out["oracle_colour_shape"] = dict(zip(("r1", "r5"), colour_shape_oracle(own, valid, sentences)))
    return out


def linear_probe(train_x: np.ndarray, train_y: list[str], val_x: np.ndarray, val_y: list[str],
                 steps: int = 300, seed: int = 0) -> dict[str, float]:
    """Val accuracy of a multinomial logistic regression (standardised inputs, full-batch Adam, weight decay
    1e-3) trained on (train_x, train_y), beside the majority class's val accuracy: what a vector *holds*
    about a label, however a retrieval space happens to use it."""
    labels = sorted(set(train_y) | set(val_y))
    ix = {l: i for i, l in enumerate(labels)}
    x, xv = torch.from_numpy(np.asarray(train_x, np.float32)), torch.from_numpy(np.asarray(val_x, np.float32))
    y, yv = torch.tensor([ix[a] for a in train_y]), torch.tensor([ix[a] for a in val_y])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(x.shape[1], len(labels))
    with torch.no_grad():
        lin.weight.normal_(0, 0.01, generator=g)
        lin.bias.zero_()
    opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(lin((x - mu) / sd), y).backward()
        opt.step()
    with torch.no_grad():
        acc = float((lin((xv - mu) / sd).argmax(1) == yv).float().mean())
    majority = max(float(np.mean([a == l for a in val_y])) for l in labels)
    return {"accuracy": acc, "majority": majority, "classes": len(labels)}


def probes(encoder: WindowEncoder | None, videos: dict[str, list[VideoFeats]], manifest: Manifest,
           text: dict[str, np.ndarray], window: float, frames: int) -> dict[str, Any]:
    """Linear probes for the colour, shape and action of each event (SynthVid's grammar, `parse`) from the
    event window's frame mean, its window vector (encoder given) and its sentence vector; trained on train
    events, scored on val events (annotator 0, sentences the grammar reads)."""
    def rows(split: str):
        by_vid = {v.texts.video_id: v for v in videos[split]}
        out = []
        for e in manifest.events:
            if e.split == split and e.annotator == 0 and e.video_id in by_vid and (m := parse(e.sentence)):
                v = by_vid[e.video_id]
                idx = window_frames(v.times, np.asarray([(e.start + e.end) / 2]), window, frames)[0]
                out.append((m, v.feats[idx], text[e.sentence]))
        return out

    tr, va = rows("train"), rows("val")
    if not tr or not va:
        return {}
    inputs = {"frame_mean": lambda r: np.stack([w.mean(0) for _, w, _ in r]),
              "sentence": lambda r: np.stack([t for _, _, t in r])}
    if encoder is not None:
        encoder.eval()
        def windowed(r):
            with torch.no_grad():
                return encoder(torch.from_numpy(np.stack([w for _, w, _ in r]))).numpy()

        inputs["window"] = windowed
    labels = {"colour": lambda m: m.colour, "shape": lambda m: m.shape, "action": lambda m: m.action.split(":")[0]}
    return {name: {what: linear_probe(get(tr), [lab(m) for m, _, _ in tr], get(va), [lab(m) for m, _, _ in va])
                   for what, lab in labels.items()}
            for name, get in inputs.items()}


# ---------------------------------------------------------------------------------------------------- task
class WindowTuningTask(Task):
    """The window encoder is the trained module; the validation score is val window→sentence R@1 + R@5, and
    `keep_initial` lets the untrained encoder (= the frame mean) win."""

    family = "encoders"
    code = ("models/window", "models/encoders/tuning.py", "vidmem/synth/parse.py", "vidmem/synth/grammar.py",
            "vidmem/synth/palette.py", "stages/finetune_window.py")

    def __init__(self, name: str, recipe, config: WindowConfig, paths: Paths, params=None):
        super().__init__(name, recipe, config, paths, params)
        self._text: dict[str, np.ndarray] | None = None
        self._splits: dict[str, list[VideoFeats]] = {}

    @cached_property
    def manifest(self) -> Manifest:
        return Manifest.read(self.paths.manifest)

    @cached_property
    def store(self) -> FeatureStore:
        """The tuned CLIP's frame vectors (`clip.zarr`)."""
        return FeatureStore(self.paths.store("clip"))

    def videos(self, split: str) -> list[VideoFeats]:
        if split not in self._splits:
            tables = self.config.tables if split == "train" else ("events",)
            self._splits[split] = load_videos(
                collect_spans(self.manifest, split, self.paths.compressed, tables), self.store)
        return self._splits[split]

    @property
    def text(self) -> dict[str, np.ndarray]:
        """Unit sentence vectors of every train and val text the pairs and the evaluation use."""
        if self._text is None:
            self._text = sentence_vectors(FeatureStore(self.paths.store("text")),
                                          (s.text for split in ("train", "val") for v in self.videos(split)
                                           for s in v.texts.spans))
        return self._text

    def inputs(self) -> list[Path]:
        return [self.paths.manifest, self.paths.store("clip"), self.paths.store("text")]

    def build(self) -> nn.Module:
        c = self.config
        return WindowEncoder(self.store.array("feats").shape[1], c.frames, c.width, c.layers, c.heads, c.dropout)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """No weight decay on gains, biases, the temporal table and the temperature (CLIP's rule)."""
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n != "temporal"]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and n != "temporal")]
        return [{"params": decay, "weight_decay": self.recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}]

    def _pairs(self) -> list[tuple[int, float, float]]:
        """(video index, span start, span end clipped to the video) of every train span."""
        out = []
        for i, v in enumerate(self.videos("train")):
            end = stored_end(v.times)
            out += [(i, min(s.start, end), min(s.end, end)) for s in v.texts.spans]
        return out

    def steps_per_epoch(self) -> int:
        n = len(self._pairs()) * self.config.windows_per_text
        return max(1, n // self.recipe.batch_size)

    def batches(self, ctx: EpochContext) -> Iterator[list[tuple[int, float]]]:
        rng = ctx.rng()
        pairs = self._pairs()
        k = self.config.windows_per_text
        samples = [(i, float(a + (b - a) * u)) for i, a, b in pairs for u in rng.random(k)]
        order = rng.permutation(len(samples))
        bs = self.recipe.batch_size
        for a in range(0, len(order) - 1, bs):
            batch = [samples[j] for j in order[a : a + bs]]
            if len(batch) > 1:
                yield batch

    def step(self, model: nn.Module, batch: list[tuple[int, float]]) -> tuple[torch.Tensor, dict[str, float]]:
        videos = self.videos("train")
        rows, valid = [], []
        for i, c in batch:
            v = videos[i]
            rows.append(v.feats[window_frames(v.times, np.asarray([c]), self.config.window, self.config.frames)[0]])
            valid.append(v.texts.valid_at(c))
        texts = sorted(set().union(*valid))
        col = {t: j for j, t in enumerate(texts)}
        pos = torch.zeros(len(batch), len(texts))
        for r, ok in enumerate(valid):
            pos[r, [col[t] for t in ok]] = 1.0
        win = model(torch.from_numpy(np.stack(rows)))
        txt = torch.from_numpy(np.stack([self.text[t] for t in texts]))
        loss = multi_positive_infonce(win, txt, pos, model.logit_scale.exp().clamp(max=100))
        return loss, {"loss": loss.item(), "temperature": 1.0 / float(model.logit_scale.detach().exp().clamp(max=100))}

    def after_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        r = window_retrieval(model, self.videos("val"), self.manifest, "val", self.text, self.config.window,
                             self.config.frames)
        w = r["window"]
        log.info("after %d epoch(s): val window→sentence R@1 %.3f R@5 %.3f (frame mean %.3f, middle frame %.3f, "
                 "chance %.3f, %d queries)", epoch, w["r1"], w["r5"], r["frame_mean"]["r1"], r["frame"]["r1"],
                 r["chance"]["r1"], r["queries"])
        return {"r1": w["r1"], "r5": w["r5"], "score": w["r1"] + w["r5"]}

    def identity(self) -> dict[str, Any]:
        return to_dict(self.config)


def make_window_task(params: dict[str, Any], paths: Paths) -> WindowTuningTask:
    recipe, cfg = read_task_params(WindowConfig, [(params.get("finetune_window"), "finetune_window")])
    if recipe.select_by != "r1_r5":
        raise UserError("params.yaml finetune_window.select_by: must be r1_r5 (val window→sentence R@1 + R@5)")
    return WindowTuningTask("window", recipe, cfg, paths, params)


# ---------------------------------------------------------------------------------------------------- store
WINDOW_STORE_ROWS = 4096


@torch.inference_mode()
def write_window_store(path: Path, model: WindowEncoder, clip: FeatureStore, cfg: WindowConfig,
                       checkpoint_sha256: str) -> int:
    """`window.zarr`: for every frame of every video in `clip.zarr`, the window vector centred on that frame
    (`feats` [n, D] float16, `times` = the centres) — row-aligned with the frame store, so a consumer that
    averages frames over a span can average windows over it instead."""
    model.eval()
    lengths = [b - a for a, b in zip(clip.offsets[:-1], clip.offsets[1:])]
    writer = ShardedWriter(
        path, clip.ids, lengths,
        {"feats": ArraySpec((int(clip.array("feats").shape[1]),), "float16"), "times": ArraySpec((), "float32")},
        {"kind": "window", "encoder": "window-encoder", "frames_from": str(clip.path),
         "frames_checkpoint_sha256": clip.attrs.get("checkpoint_sha256"), "checkpoint_sha256": checkpoint_sha256,
         "window": cfg.window, "frames": cfg.frames},
        rows_per_chunk=WINDOW_STORE_ROWS, chunks_per_shard=4)
    writer.prepare()

    def compute(requests: list[tuple[int, int, int]]) -> list[dict[str, np.ndarray]]:
        out = []
        for i, lo, hi in requests:
            vid = clip.ids[i]
            feats = np.asarray(clip.get(vid), dtype=np.float32)
            times = np.asarray(clip.get(vid, "times"), dtype=np.float64)
            idx = window_frames(times, times[lo:hi], cfg.window, cfg.frames)
            vec = torch.cat([model(torch.from_numpy(feats[idx[a : a + 256]])) for a in range(0, len(idx), 256)])
            out.append({"feats": vec.numpy().astype(np.float16), "times": times[lo:hi].astype(np.float32)})
        return out

    writer.fill(range(writer.n_shards), compute)
    writer.finish()
    return writer.n_rows
