"""What the DVC stages run for dense captioning: train@{pdvc,cm2}, evaluate@{pdvc,cm2,dense_trivial}.

Inputs: the manifest's events (train / val / test, reference files numbered by `annotator`), CLIP frame
features (data/features/clip.zarr) and, for CM2, the memory bank (data/bank.zarr). Outputs: checkpoints under
data/checkpoints/<name>/, DVCLive curves under dvclive/<name>/, predictions in the ActivityNet dense-captioning
result format under data/predictions/<name>.json, and scores in metrics/<name>.json.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from metrics.dense import evaluate_dense, write_predictions
from models.dense.config import DenseConfig
from models.dense.data import DenseCaptionDataset, InMemoryFeatures
from models.dense.retrieval import TextBank
from models.dense.train import load_model, predict, train
from vidmem.bank import read_bank
from vidmem.common import UserError, inputs_key, section, write_json
from vidmem.manifest import Manifest
from vidmem.store import FeatureStore
from vidmem.training import write_history

log = logging.getLogger(__name__)

MANIFEST = Path("data/manifest")
FEATURES = Path("data/features/clip.zarr")
BANK = Path("data/bank.zarr")
CHECKPOINTS = Path("data/checkpoints")
PREDICTIONS = Path("data/predictions")
METRICS = Path("metrics")
DENSE_MODELS = ("pdvc", "cm2")


def load_features(manifest: Manifest, splits: tuple[str, ...]) -> InMemoryFeatures:
    """The frame features of every video with events in `splits` (small: read once, kept in memory)."""
    store = FeatureStore(FEATURES)
    vids = {e.video_id for e in manifest.events if e.split in splits and e.video_id in store}
    return InMemoryFeatures({v: store.get(v) for v in vids}, {v: store.get(v, "times") for v in vids})


def load_bank() -> TextBank:
    vectors, video_ids, sentences = read_bank(BANK)
    return TextBank(vectors, video_ids, sentences)


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


STAGE_KEYS = ("select_by",)  # train.<name> keys read here, not model hyper-parameters


def dense_config(params: dict[str, Any], name: str) -> DenseConfig:
    p = {k: v for k, v in section(params, f"train.{name}").items() if k not in STAGE_KEYS}
    return DenseConfig.from_params(p, f"params.yaml train.{name}")


def score_on(model, ds: DenseCaptionDataset, refs: list[dict[str, Any]], bank: TextBank | None,
             batch_size: int) -> dict[str, Any]:
    results = predict(model, ds, bank, batch_size=batch_size)
    return evaluate_dense(results, refs)


def train_stage(name: str, params: dict[str, Any]) -> None:
    if name not in DENSE_MODELS:
        raise UserError(f"dense models are {DENSE_MODELS}, not {name!r}")
    cfg = dense_config(params, name)
    manifest = Manifest.read(MANIFEST, tables=("videos", "events"))
    feats = load_features(manifest, ("train", "val"))
    train_ds = DenseCaptionDataset.from_manifest(manifest, "train", feats, max_words=cfg.max_words)
    val_ds = DenseCaptionDataset.from_manifest(manifest, "val", feats, max_words=cfg.max_words)
    bank = load_bank() if cfg.retrieval else None
    select = section(params, f"train.{name}").get("select_by", "loss")
    score_fn = None
    if select == "meteor_soda":
        val_refs = references(manifest, "val")

        def score_fn(model, epoch: int) -> float:
            s = score_on(model, val_ds, val_refs, bank, cfg.batch_size)
            log.info("epoch %d val METEOR %.4f SODA_c %.4f", epoch, s["METEOR"], s["SODA_c"])
            return s["METEOR"] + s["SODA_c"]

    code = inputs_key(["models/dense", "kernels"], root=Path(__file__).resolve().parents[2])  # wherever it lies
    data = [MANIFEST / "events.jsonl", MANIFEST / "vocab.json", FEATURES / "zarr.json", FEATURES / "plan.json"]
    run_key = inputs_key(data + ([BANK] if cfg.retrieval else []), extra=[select, code])
    result = train(cfg, train_ds, val_ds, CHECKPOINTS / name, bank, score_fn=score_fn, run_key=run_key)
    write_history(name, result.history)
    log.info("%s: best epoch %d (score %.4f)", name, result.best_epoch, result.best_score)


def evaluate_stage(name: str, params: dict[str, Any]) -> dict[str, Any]:
    manifest = Manifest.read(MANIFEST, tables=("videos", "events"))
    refs = references(manifest, "test")
    if name == "dense_trivial":
        results = trivial_predictions(manifest, "test")
    else:
        cfg = dense_config(params, name)
        feats = load_features(manifest, ("test",))
        ds = DenseCaptionDataset.from_manifest(manifest, "test", feats, annotator=None, max_words=cfg.max_words,
                                               on_missing="skip")
        model = load_model(CHECKPOINTS / name / "best.pt")
        results = predict(model, ds, load_bank() if cfg.retrieval else None, batch_size=cfg.batch_size)["results"]
    write_predictions(PREDICTIONS / f"{name}.json", results)
    scores = evaluate_dense(results, refs)
    summary = {k: scores[k] for k in ("METEOR", "CIDEr", "Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L",
                                       "SODA_c", "Precision", "Recall", "F1") if k in scores}
    summary.update(n_videos=scores.get("n_videos"), n_predictions=scores.get("n_predictions"))
    write_json(METRICS / f"{name}.json", summary)
    log.info("%s test: %s", name, {k: round(v, 4) for k, v in summary.items() if isinstance(v, float)})
    return summary


def trivial_predictions(manifest: Manifest, split: str) -> dict[str, list[dict[str, Any]]]:
    """The trivial baseline: one whole-video event per test video, captioned with the most frequent train sentence."""
    counts = Counter(e.sentence for e in manifest.events if e.split == "train")
    if not counts:
        raise UserError("manifest: no train events for the trivial dense-captioning baseline")
    sentence = counts.most_common(1)[0][0]
    durations = {v.video_id: v.duration for v in manifest.videos}
    vids = sorted({e.video_id for e in manifest.events if e.split == split})
    return {v: [{"timestamp": [0.0, float(durations[v])], "sentence": sentence, "proposal_score": 1.0}] for v in vids}
