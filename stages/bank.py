"""bank: CM2's memory — the train split's event sentences as CLIP text vectors → data/bank.zarr (vidmem/bank.py).

Also measures the memory (`metrics/bank.json`): the bank's coverage of each split's events (the fraction whose
meaning some bank sentence has) and, for every val video cut into `windows` proportional windows as CM2 cuts
it, the precision@k of the sentences each window retrieves (metrics/bank.py's hit rule: the same meaning; and,
as partial credit, the same object or the same action) with either query —
the mean of the window's frame vectors (`frames`) or of the window encoder's vectors (`window`,
finetune_window) — beside a random draw of the bank. CM2's `retrieval_query` picks the query by this.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from kernels.topk import cosine_topk
from metrics.bank import KEYS, coverage, window_precision
from models.dense.retrieval import window_edges, window_means
from vidmem.bank import bank_entries, read_bank, write_bank
from vidmem.common import load_params, run_stage, write_json
from vidmem.manifest import Manifest
from vidmem.params import bounded, read
from vidmem.paths import Paths
from vidmem.store import FeatureStore

log = logging.getLogger("stages.bank")


@dataclass
class BankConfig:
    split: Literal["train", "val", "test"] = "train"  # whose event sentences the memory holds (CM2: train)
    measure_split: Literal["train", "val", "test"] = "val"  # whose windows the precision is measured on
    windows: int = bounded(20, lo=1)  # proportional windows per video (= train.cm2.window)
    precision_k: tuple[int, ...] = (1, 5, 20)  # k of precision@k (20 = train.cm2.soft_k)


def measure(paths: Paths, manifest: Manifest, cfg: BankConfig) -> dict:
    vectors, _, sentences = read_bank(paths.bank)
    bank = torch.from_numpy(vectors)
    clip = FeatureStore(paths.store("clip"))
    window = FeatureStore(paths.store("window"))
    events: dict[str, list[tuple[float, float, str]]] = {}
    for e in manifest.events:
        if e.split == cfg.measure_split and e.annotator == 0 and e.video_id in clip and e.video_id in window:
            events.setdefault(e.video_id, []).append((e.start, e.end, e.sentence))
    kmax = min(max(cfg.precision_k), len(sentences))
    ks = [k for k in cfg.precision_k if k <= kmax]
    spans, evs, tops = [], [], {"frames": [], "window": []}
    for vid in sorted(events):
        times = np.asarray(clip.get(vid, "times"), dtype=np.float64)
        step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
        lengths = torch.tensor([len(times)])
        start, end = (x[0].tolist() for x in window_edges(lengths, cfg.windows))
        spans += [(float(times[a]), float(times[b - 1]) + step) for a, b in zip(start, end)]
        evs += [events[vid]] * cfg.windows
        for name, store in (("frames", clip), ("window", window)):
            feats = torch.from_numpy(np.asarray(store.get(vid), dtype=np.float32))[None]
            q = window_means(feats, lengths, cfg.windows)[0]
            tops[name] += cosine_topk(q, bank, kmax)[1].tolist()
    out = {"split": cfg.measure_split, "windows_per_video": cfg.windows, "videos": len(events),
           "windows": len(spans)}
    for name, top in tops.items():
        for level, key in KEYS.items():
            p = window_precision(top, spans, evs, sentences, ks, key)
            out.setdefault(name, {})[level] = p["retrieved"]
            out.setdefault("random", {})[level] = p["random"]
    return out


def main() -> None:
    cfg = read(BankConfig, load_params().get("bank"), "bank")
    paths = Paths()
    manifest = Manifest.read(paths.manifest, tables=("events",))
    entries = bank_entries(manifest, cfg.split)
    shutil.rmtree(paths.bank, ignore_errors=True)
    n = write_bank(paths.bank, entries, FeatureStore(paths.store("text")))
    log.info("%s: %d sentences from %d videos", paths.bank, n, len({v for v, _ in entries}))
    bank_sentences = [s for _, s in entries]
    cover = {split: coverage(bank_sentences, [e.sentence for e in manifest.events
                                              if e.split == split and e.annotator == 0])
             for split in ("val", "test")}
    precision = measure(paths, manifest, cfg)
    log.info("precision@k of retrieved bank sentences (%s windows, same meaning): frames %s, window %s, random %s",
             cfg.measure_split, *(precision[q]["meaning"] for q in ("frames", "window", "random")))
    write_json(paths.metric("bank"), {"sentences": n, "videos": len({v for v, _ in entries}),
                                      "distinct_sentences": len(set(bank_sentences)),
                                      "coverage": cover, "precision": precision})


if __name__ == "__main__":
    run_stage(main)
