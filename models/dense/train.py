"""Training and prediction for PDVC / CM2 (one code path; `cfg.retrieval` switches CM2's memory on).

Adam + gradient clipping + PDVC's step schedule, seeded per epoch so that CPU runs repeat bit for bit and
a run killed between epochs resumes from `last.pt` to the same weights as an uninterrupted one. `best.pt`
keeps the epoch with the best validation score: by default −(validation loss), or any callable (e.g.
METEOR + SODA_c computed by the evaluation code).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from models.dense.config import DenseConfig, lr_at
from models.dense.data import DenseBatch, DenseCaptionDataset, collate
from models.dense.losses import SetCriterion, count_bin_rates
from models.dense.model import DenseCaptioner, DenseOutput
from models.dense.postprocess import postprocess, results_json
from models.dense.retrieval import TextBank, retrieve
from vidmem.common import UserError, save_torch, seed_everything

_log = logging.getLogger(__name__)

MetricsLog = Callable[[dict[str, float], int], None]
ScoreFn = Callable[[DenseCaptioner, int], float]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
        retrieved = retrieve(batch.feats, batch.lengths, bank, cfg.window, cfg.soft_k, groups)
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


# ------------------------------------------------------------------------------------------------ checkpoints
def _resume_key(params: dict, vocab_size: int) -> dict:
    """What must match to continue a run: everything but the epoch budget (raising `epochs` extends a run)."""
    return {**{k: v for k, v in params.items() if k != "epochs"}, "vocab_size": vocab_size}


def load_model(path: str | Path, device: torch.device | str = "cpu") -> DenseCaptioner:
    """A trained model from `best.pt` / `last.pt`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; train the dense model first")
    ckpt = torch.load(path, map_location=device, weights_only=False)
    model = build_model(DenseConfig(**ckpt["params"]), ckpt["vocab_size"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


@dataclass
class TrainResult:
    last: Path
    best: Path
    best_epoch: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- training
def train(
    cfg: DenseConfig,
    train_ds: DenseCaptionDataset,
    val_ds: DenseCaptionDataset | None,
    out_dir: str | Path,
    bank: TextBank | None = None,
    log: MetricsLog | None = None,
    score_fn: ScoreFn | None = None,
    device: torch.device | str | None = None,
    run_key: str = "",
) -> TrainResult:
    """Train for cfg.epochs: `last.pt` every epoch, `best.pt` on a better score; resumes from `last.pt`.

    log(metrics, epoch) receives train/val losses, lr and the score after every epoch (plug dvclive here).
    score_fn(model, epoch) → higher-is-better selection score; default −(validation loss).
    run_key: identity of everything else the run depends on (code, features, bank); `last.pt` is only resumed
    when it matches, so a rerun caused by changed inputs trains afresh instead of continuing a stale run.
    """
    if len(train_ds) == 0:
        raise UserError("dense model: the training split has no videos with events")
    if cfg.retrieval and bank is None:
        raise UserError("dense model: retrieval is on (CM2) but no memory bank was given")
    device = torch.device(device) if device is not None else default_device()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    vocab_size = train_ds.vocab.size

    seed_everything(cfg.seed)
    model = build_model(cfg, vocab_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    criterion = SetCriterion(cfg, count_bin_rates(train_ds.event_counts(), cfg.max_eseq_length))
    if bank is not None:
        bank.to(device)
    params = cfg.to_params()
    state = {"epoch": 0, "best_score": -math.inf, "best_epoch": -1, "history": []}

    if last_path.exists():
        ckpt = torch.load(last_path, map_location=device, weights_only=False)
        same = _resume_key(ckpt.get("params", {}), ckpt.get("vocab_size", -1)) == _resume_key(params, vocab_size)
        if same and ckpt.get("run_key", "") == run_key:
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            state = {k: ckpt[k] for k in state}
            _log.info("resuming from %s after epoch %d", last_path, state["epoch"])
        else:
            _log.warning("%s was trained with other params or inputs; starting over", last_path)

    for epoch in range(state["epoch"], cfg.epochs):
        lr = lr_at(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(cfg.seed + epoch)  # this epoch's dropout stream, the same after a resume
        order = torch.randperm(
            len(train_ds), generator=torch.Generator().manual_seed(cfg.seed + epoch)
        ).tolist()
        model.train()
        sums: dict[str, float] = {}
        n = 0
        for batch in tqdm(
            batches(train_ds, order, cfg.batch_size),
            total=math.ceil(len(order) / cfg.batch_size),
            desc=f"epoch {epoch}",
            leave=False,
        ):
            batch = batch.to(device)
            loss, terms = criterion(model, run_model(model, batch, bank, training=True), batch)
            if not torch.isfinite(loss):
                raise RuntimeError(f"epoch {epoch}: non-finite loss {terms} on videos {batch.video_ids}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * len(batch.video_ids)
            n += len(batch.video_ids)

        metrics = {f"train/{k}": v / n for k, v in sums.items()}
        metrics["lr"] = lr
        if val_ds is not None and len(val_ds):
            metrics.update(
                {
                    f"val/{k}": v
                    for k, v in evaluate_loss(model, criterion, val_ds, bank, cfg.batch_size, device).items()
                }
            )
        if score_fn is not None:
            score = float(score_fn(model, epoch))
        else:
            score = -metrics.get("val/loss", metrics["train/loss"])
        metrics["score"] = score
        state["history"].append({"epoch": epoch, **metrics})
        state["epoch"] = epoch + 1
        if score > state["best_score"]:
            state["best_score"], state["best_epoch"] = score, epoch
            save_torch(
                {
                    "state_dict": model.state_dict(),
                    "params": params,
                    "vocab_size": vocab_size,
                    "epoch": epoch,
                    "score": score,
                },
                best_path,
            )
        save_torch(
            {
                "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "params": params,
                "vocab_size": vocab_size,
                "run_key": run_key,
                **state,
            },
            last_path,
        )
        _log.info(
            "epoch %d: loss %.4f%s score %.4f",
            epoch,
            metrics["train/loss"],
            f" val {metrics['val/loss']:.4f}" if "val/loss" in metrics else "",
            score,
        )
        if log is not None:
            log(metrics, epoch)

    return TrainResult(last_path, best_path, state["best_epoch"], state["best_score"], state["history"])
