"""The forward pass, validation loss and prediction of PDVC / CM2 (one code path; `cfg.retrieval` switches
CM2's memory on). The training loop is the shared recipe's (`vidmem.training.fit`, via `models.dense.task`).
"""

from __future__ import annotations

import logging
import math

import torch
from tqdm import tqdm

from models.dense.config import DenseConfig
from models.dense.data import DenseBatch, DenseCaptionDataset, collate
from models.dense.losses import SetCriterion
from models.dense.model import DenseCaptioner, DenseOutput
from models.dense.postprocess import postprocess, results_json
from models.dense.retrieval import retrieve, window_means
from vidmem.bank import TextBank
from vidmem.common import UserError

log = logging.getLogger(__name__)


def build_model(cfg: DenseConfig, vocab_size: int) -> DenseCaptioner:
    return DenseCaptioner(cfg, vocab_size)


def run_model(model: DenseCaptioner, batch: DenseBatch, bank: TextBank | None, training: bool) -> DenseOutput:
    """Forward pass; with retrieval on, first fetch the memory (own sentences excluded in training)."""
    retrieved = None
    cfg = model.cfg
    if cfg.retrieval:
        if bank is None:
            raise UserError("dense model: retrieval is on (CM2) but no memory bank was given")
        groups = bank.groups_for(batch.video_ids).to(batch.feats.device) if training else None
        if cfg.retrieval_query == "oracle":  # the ground truth's own sentences: an upper bound of retrieval
            if batch.queries is None:
                raise UserError("dense model: retrieval_query is oracle but the batch has no ground-truth "
                                "vectors")
            retrieved = window_means(batch.queries, batch.lengths, cfg.window)
        else:
            queries = batch.feats if batch.queries is None else batch.queries
            retrieved = retrieve(queries, batch.lengths, bank, cfg.window, cfg.soft_k, groups)
    return model(batch.feats, batch.valid, batch.durations, retrieved)


def batches(ds: DenseCaptionDataset, order: list[int], batch_size: int):
    for i in range(0, len(order), batch_size):
        yield collate([ds[j] for j in order[i : i + batch_size]])


@torch.no_grad()
def evaluate_loss(
    model: DenseCaptioner,
    criterion: SetCriterion,
    ds: DenseCaptionDataset,
    bank: TextBank | None,
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """Mean of every loss term over the dataset, eval mode (no dropout), captions teacher-forced."""
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    for batch in batches(ds, list(range(len(ds))), batch_size):
        batch = batch.to(device)
        _, terms = criterion(model, run_model(model, batch, bank, training=False), batch)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v * len(batch.video_ids)
        n += len(batch.video_ids)
    return {k: v / max(n, 1) for k, v in sums.items()}


@torch.no_grad()
def predict(
    model: DenseCaptioner,
    ds: DenseCaptionDataset,
    bank: TextBank | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> dict:
    """Dense captions for every video of `ds` → the ActivityNet result JSON (as a dict)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).eval()
    if bank is not None:
        bank.to(device)
    results: dict[str, list[dict]] = {}
    for batch in tqdm(
        batches(ds, list(range(len(ds))), batch_size),
        total=math.ceil(len(ds) / batch_size),
        desc="predict",
        leave=False,
    ):
        batch = batch.to(device)
        out = run_model(model, batch, bank, training=False)
        last = out.last
        words, logps = model.caption_head.generate(last.hs, last.reference, out.memory)
        results.update(
            postprocess(
                last.logits,
                last.boxes,
                last.count_logits,
                words,
                logps,
                batch.durations,
                batch.video_ids,
                ds.vocab.decode,
                model.cfg.ec_alpha,
                model.cfg.rerank,
            )
        )
    return results_json(results)
