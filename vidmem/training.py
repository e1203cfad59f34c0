"""The training recipe every method family shares: a `Task` says what to train, `fit()` owns how.

A family is a package `models/<family>/` whose `make_task(name, layers, paths, params)` returns a `Task`:
build the model, yield the train split's batches for an epoch, one step → (loss, logged terms), optionally a
validation score, and predict / write / score predictions in the family's public format. `fit()` owns
everything else, once for all families (and for `finetune_clip`):

- **Checkpoints** under `data/checkpoints/<family>/<name>/`: `last.pt` after every epoch (model, optimiser, history,
  run key), `best.pt` whenever the validation score improves (`{"state_dict", "params", "epoch", "score"}`).
- **Resume** from `last.pt` only when the run key matches — sha256 over the task's code (`Task.code`, which
  dvc.yaml's deps must cover: tests/test_recipe.py checks), its input data (`Task.inputs`) and every param but
  an epoch budget the schedule does not depend on. Anything else starts over, so outputs follow inputs. A
  resumed run ends bit-identical to an uninterrupted one (CPU).
- **Seeding**: `recipe.seed` before the model is built; epoch e draws its batch order, sampling and dropout
  from (seed, e) alone (`EpochContext`), so a resume after epoch e repeats what an uninterrupted run does.
- **Schedules**: linear warm-up over `warmup_steps`, then constant, step (PDVC's MultiStepLR) or cosine;
  Adam or AdamW; gradient clipping; a non-finite loss stops with a message naming the batch.
- **Data-parallel under torchrun** (gloo on CPU, NCCL on GPU): every rank builds the same seeded model and the
  same global batches and takes its own contiguous share of each; gradients are averaged across ranks after
  backward (the all-reduce DDP does, done explicitly because tasks call submodules — caption heads, samplers —
  outside `forward`, which DDP's hooks do not see); rank 0 validates and writes checkpoints and curves.
  `batch_size` is the global batch, so a run's optimisation does not depend on how many ranks share it.
- **Curves**: DVCLive, written from the whole history at the end (a resumed run still shows every epoch) to
  `dvclive/<name>/`, which dvc.yaml declares as plots.

`train.<name>` params hold the recipe keys (`RecipeConfig`) and the family's model keys together, over the
family's defaults in `families.<family>`; `read_task_params` splits them and names any unknown key.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vidmem.common import UserError, inputs_key, params_hash, save_torch, seed_everything
from vidmem.dist import Dist, init_from_env
from vidmem.params import Layer, bounded, read_split, to_dict
from vidmem.paths import Paths

log = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[1]
# The recipe's own code: every training stage's run key covers it (and its dvc.yaml deps list it).
RECIPE_CODE = ("vidmem/training.py", "vidmem/params.py")


# ---------------------------------------------------------------------------------------------------- params
@dataclass
class RecipeConfig:
    """How to optimise: the keys every `train.<name>` group shares (the rest belong to the family)."""

    epochs: int = bounded(10, lo=0)
    batch_size: int = bounded(8, lo=1)              # global: split across torchrun ranks
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = bounded(1e-4, lo=0)
    weight_decay: float = bounded(0.0, lo=0)
    betas: tuple[float, float] = bounded((0.9, 0.999), lo=0, hi=1)
    eps: float = bounded(1e-8, lo=0)
    schedule: Literal["constant", "step", "cosine"] = "constant"
    warmup_steps: int = bounded(0, lo=0)            # linear warm-up from lr/warmup_steps to lr
    lr_decay_start: int = bounded(8, lo=0)          # step: × lr_decay_rate at start, start + every, ... < epochs
    lr_decay_every: int = bounded(3, lo=1)
    lr_decay_rate: float = bounded(0.5, lo=0)
    min_lr: float = bounded(0.0, lo=0)              # cosine: the floor it decays to
    grad_clip: float = bounded(0.0, lo=0)           # max global grad norm; 0: off
    seed: int = 0
    select_by: str = "loss"                         # best.pt by: loss (−val loss) or a score the family names
    keep_initial: bool = False                      # score the starting weights too: best.pt may be them
    init: str = "none"                              # a checkpoint to start from (its state_dict), or none

    def resume_params(self) -> dict[str, Any]:
        """What a resumed run must share: all but an epoch budget the schedule ignores (more epochs extend)."""
        d = to_dict(self)
        if self.schedule != "cosine":
            d.pop("epochs")
        return d


def read_task_params(config_cls: type, layers: Sequence[Layer]) -> tuple[RecipeConfig, Any]:
    """Split stacked `families.<family>` + `train.<name>` groups into (recipe, family config)."""
    recipe, cfg = read_split([RecipeConfig, config_cls], layers, skip=("family",))
    return recipe, cfg


# ---------------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class EpochContext:
    """What one epoch may draw randomness from: (seed, epoch) only, so a resumed run draws the same."""

    epoch: int
    seed: int
    rank: int = 0
    world: int = 1

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + self.epoch)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def permutation(self, n: int) -> list[int]:
        return torch.randperm(n, generator=self.generator()).tolist()

    def shuffled_batches(self, n: int, batch_size: int) -> Iterator[list[int]]:
        """Indices 0..n−1 in this epoch's order, in global batches of `batch_size` (the last may be short)."""
        order = self.permutation(n)
        for a in range(0, n, batch_size):
            yield order[a : a + batch_size]


class Task:
    """One trainable model of a family (or its baseline). Subclasses fill in the methods marked required."""

    family: ClassVar[str] = ""
    # Project-relative code the trained weights depend on, hashed into the run key; dvc.yaml's deps for the
    # model's train stage must cover every path (tests/test_recipe.py checks). RECIPE_CODE is always added.
    code: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, recipe: RecipeConfig, config: Any, paths: Paths,
                 params: Mapping[str, Any] | None = None):
        self.name, self.recipe, self.config, self.paths = name, recipe, config, paths
        self.params = params or {}
        self.device = torch.device("cpu")

    # -------------------------------------------------------------------------- required for training
    def build(self) -> nn.Module:
        raise NotImplementedError

    def batches(self, ctx: EpochContext) -> Iterable[Sequence[Any]]:
        """The train split's global batches for this epoch: sequences of samples (`collate` makes a batch)."""
        raise NotImplementedError

    def step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward one batch → (scalar loss to minimise, terms to log, including 'loss')."""
        raise NotImplementedError

    # -------------------------------------------------------------------------- optional
    def collate(self, samples: Sequence[Any]) -> Any:
        return samples

    def inputs(self) -> list[Path]:
        """Data files/folders the weights depend on (hashed into the run key; keep them cheap to read)."""
        return []

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad],
                 "weight_decay": self.recipe.weight_decay}]

    def after_step(self, model: nn.Module) -> None:
        """After each optimiser step (e.g. clamp a temperature)."""

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float] | None:
        """Validation metrics after `epoch` finished epochs (0: the starting weights); 'score' (higher is
        better) selects best.pt, else −'loss'. Runs on rank 0 only."""
        return None

    def steps_per_epoch(self) -> int | None:
        """Optimiser steps per epoch (the cosine schedule needs it)."""
        return None

    def describe(self, samples: Sequence[Any]) -> str:
        return f"{len(samples)} samples"

    def checkpoint_extra(self) -> dict[str, Any]:
        """Extra fields saved in both checkpoints (e.g. the vocabulary size the model was built for)."""
        return {}

    def load_init(self, model: nn.Module, ckpt: Mapping[str, Any]) -> None:
        """Start from another checkpoint (`recipe.init`): matching weights load, the rest stay as built."""
        own = model.state_dict()
        state = {k: v for k, v in ckpt["state_dict"].items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(state, strict=False)
        log.info("%s: %d of %d tensors initialised from %s", self.name, len(state), len(own), self.recipe.init)

    # -------------------------------------------------------------------------- evaluation
    def restore(self, ckpt: Mapping[str, Any]) -> nn.Module:
        model = self.build()
        model.load_state_dict(ckpt["state_dict"])
        return model.to(self.device).eval()

    def predict(self, model: nn.Module | None, split: str) -> Any:
        raise NotImplementedError

    def write_predictions(self, predictions: Any, path: Path) -> Path:
        raise NotImplementedError

    def evaluate(self, predictions: Any, split: str) -> dict[str, Any]:
        raise NotImplementedError

    # -------------------------------------------------------------------------- identity
    def all_params(self) -> dict[str, Any]:
        """The effective `train.<name>` group: the family plus every recipe and model key (checkpoints)."""
        return {"family": self.family, **to_dict(self.recipe), **to_dict(self.config)}

    def identity(self) -> dict[str, Any]:
        """The model-side params a resumed run must share (the recipe's are added by `run_key`)."""
        return to_dict(self.config)

    def code_paths(self) -> tuple[str, ...]:
        return RECIPE_CODE + tuple(self.code)

    def run_key(self) -> str:
        code = inputs_key(self.code_paths(), root=PROJECT)
        data = list(self.inputs())
        if self.recipe.init.lower() != "none":
            data.append(Path(self.recipe.init))
        rel = [_relative(p, self.paths.root) for p in data]
        return inputs_key(rel, extra=[self.recipe.resume_params(), self.identity(), code],
                          root=self.paths.root)


def _relative(path: Path, root: Path) -> Path:
    path = Path(path)
    try:
        return path.relative_to(root)
    except ValueError:
        return path


# ---------------------------------------------------------------------------------------------------- schedule
def lr_at(recipe: RecipeConfig, step: int, epoch: int, total_steps: int | None) -> float:
    """The learning rate of optimiser step `step` (0-based), in epoch `epoch` (0-based)."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    if recipe.schedule == "step":
        n = max(0, (recipe.epochs - recipe.lr_decay_start) // recipe.lr_decay_every)
        milestones = [recipe.lr_decay_start + recipe.lr_decay_every * i for i in range(n)]
        return recipe.lr * recipe.lr_decay_rate ** sum(1 for m in milestones if m <= epoch)
    if recipe.schedule == "cosine":
        if not total_steps:
            raise ValueError("the cosine schedule needs the task's steps_per_epoch()")
        progress = (step - recipe.warmup_steps) / max(1, total_steps - recipe.warmup_steps)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return recipe.min_lr + (recipe.lr - recipe.min_lr) * cos
    return recipe.lr


def make_optimizer(groups: list[dict[str, Any]], recipe: RecipeConfig) -> torch.optim.Optimizer:
    kind = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.AdamW
    return kind(groups, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps, weight_decay=recipe.weight_decay)


# ---------------------------------------------------------------------------------------------------- fit
@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None  # the final (last-epoch) weights, in this process


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu",
                    hint: str = "train it first") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; {hint}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"{path}: not a checkpoint torch can read ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a vidmem checkpoint (no 'state_dict')")
    return ckpt


def fit(task: Task, out_dir: str | os.PathLike | None = None, curves: str | os.PathLike | None = None,
        device: torch.device | str | None = None, dist: Dist | None = None, progress: bool = True) -> FitResult:
    """Train `task` for `recipe.epochs` (see the module docstring). out_dir: data/checkpoints/<family>/<name>;
    curves: dvclive/<name> (None: no curves)."""
    recipe = task.recipe
    d = dist or init_from_env()
    task.device = torch.device(device) if device is not None else default_device()
    out = Path(out_dir) if out_dir is not None else task.paths.model_dir(task.family, task.name)
    last_path, best_path = out / "last.pt", out / "best.pt"
    params = task.all_params()
    extra = task.checkpoint_extra()
    run_key = task.run_key()

    seed_everything(recipe.seed)
    model = task.build().to(task.device)
    if recipe.init.lower() != "none":
        task.load_init(model, load_checkpoint(recipe.init, task.device, "train the model it names first"))
    optimizer = make_optimizer(task.param_groups(model), recipe)
    spe = task.steps_per_epoch()
    total = spe * recipe.epochs if spe else None
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_score": -math.inf, "best_epoch": -1, "history": []}

    if last_path.exists():
        ckpt = load_checkpoint(last_path, task.device)
        if ckpt.get("run_key") == run_key:
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            state = {k: ckpt[k] for k in state}
            log.info("%s: resuming from %s after epoch %d", task.name, last_path, state["epoch"])
        else:
            log.warning("%s: %s was trained from other code, inputs or params; starting over", task.name, last_path)
    if d.world > 1:
        for p in model.state_dict().values():
            torch.distributed.broadcast(p, 0)

    def save(path: Path, with_state: bool) -> None:
        body = {"state_dict": model.state_dict(), "params": params, "name": task.name, **extra}
        if with_state:
            body.update(optimizer=optimizer.state_dict(), run_key=run_key, **state)
        else:
            body.update(epoch=state["best_epoch"], score=state["best_score"])
        save_torch(body, path)

    def consider(epoch: int, row: dict[str, Any]) -> None:
        score = row.get("score")
        if score is None:
            score = -row.get("val/loss", row.get("train/loss", math.inf))
        row["score"] = float(score)
        state["history"].append(row)
        if row["score"] > state["best_score"]:
            state["best_score"], state["best_epoch"] = row["score"], epoch
            save(best_path, with_state=False)

    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        if recipe.keep_initial and not state["history"]:
            model.eval()
            consider(0, {"epoch": 0, **_prefixed(task.validate(model, 0))})
            save(last_path, with_state=True)
    d.barrier()

    for epoch in range(state["epoch"], recipe.epochs):
        ctx = EpochContext(epoch, recipe.seed, d.rank, d.world)
        torch.manual_seed(recipe.seed + epoch)  # this epoch's dropout stream, the same after a resume
        model.train()
        sums: dict[str, float] = {}
        n = 0
        lr = lr_at(recipe, state["step"], epoch, total)
        bar = tqdm(task.batches(ctx), total=spe, desc=f"{task.name} epoch {epoch + 1}/{recipe.epochs}",
                   leave=False, disable=not (progress and d.main))
        for i, samples in enumerate(bar):
            share = _share(samples, d.rank, d.world)
            if share is None:
                break
            lr = lr_at(recipe, state["step"], epoch, total)
            for g in optimizer.param_groups:  # a group's lr_scale (e.g. CLIP towers' coef_lr) scales the schedule
                g["lr"] = lr * g.get("lr_scale", 1.0)
            batch = task.collate(share)
            loss, terms = task.step(model, batch)
            if not torch.isfinite(loss):
                raise UserError(
                    f"{task.name}: non-finite loss at epoch {epoch + 1}, batch {i} ({task.describe(share)}): "
                    f"{_fmt(terms)}; lower train.{task.name}.lr or set grad_clip")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if d.world > 1:
                _average_gradients(model, d.world)
            if recipe.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            task.after_step(model)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(share)
            n += len(share)
            state["step"] += 1
        if d.world > 1:
            sums, n = _global_sums(sums, n)
        row: dict[str, Any] = {"epoch": epoch + 1, **{f"train/{k}": v / max(n, 1) for k, v in sums.items()},
                               "lr": lr}
        state["epoch"] = epoch + 1
        if d.main:
            model.eval()
            row.update(_prefixed(task.validate(model, epoch + 1)))
            consider(epoch + 1, row)
            save(last_path, with_state=True)
            log.info("%s epoch %d/%d: %s", task.name, epoch + 1, recipe.epochs,
                     _fmt({k: v for k, v in row.items() if k != "epoch"}))
        d.barrier()

    if d.main and not best_path.exists():  # no score was ever finite: the last weights are all there is
        save(best_path, with_state=False)
    if d.main and curves is not None:
        write_history(curves, state["history"])
    return FitResult(state["best_epoch"], state["best_score"], state["history"], model)


def _prefixed(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validation metrics under 'val/' ('score' stays as it is)."""
    if not metrics:
        return {}
    return {(k if k == "score" or k.startswith("val/") else f"val/{k}"): v for k, v in metrics.items()}


def _fmt(terms: Mapping[str, Any]) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in terms.items())


def _share(samples: Sequence[Any], rank: int, world: int) -> Sequence[Any] | None:
    """Rank `rank`'s contiguous share of a global batch; None when the batch cannot give every rank one."""
    n = len(samples)
    if world == 1:
        return samples if n else None
    if n < world:
        return None
    a, b = rank * n // world, (rank + 1) * n // world
    return samples[a:b]


def _average_gradients(model: nn.Module, world: int) -> None:
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    present = [g for g in grads if g is not None]
    if len(present) != len(grads):  # a parameter unused by this rank's share: count it as zero
        for p in model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        present = [p.grad for p in model.parameters() if p.requires_grad]
    flat = torch.cat([g.reshape(-1) for g in present])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for g in present:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _global_sums(sums: dict[str, float], n: int) -> tuple[dict[str, float], int]:
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys] + [float(n)], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t[:-1])}, int(t[-1])


# ---------------------------------------------------------------------------------------------------- curves
def write_history(folder: str | os.PathLike, history: Iterable[Mapping[str, Any]], step_key: str = "epoch") -> None:
    """A run's per-epoch metrics as DVCLive curves in `folder` (replacing what was there).

    DVCLive is told not to write dvc.yaml entries or experiments: the pipeline's dvc.yaml declares the plots.
    """
    from dvclive import Live

    live = Live(dir=str(folder), resume=False, dvcyaml=False, save_dvc_exp=False, report=None)
    for row in history:
        live.step = int(row[step_key])
        for key, value in row.items():
            if key != step_key and isinstance(value, (int, float)) and not isinstance(value, bool):
                live.log_metric(key, float(value))
        live.next_step()
    live.end()
    (Path(live.dir) / "plots" / "metrics").mkdir(parents=True, exist_ok=True)  # the declared output, even if empty


def config_hash(cfg: Any) -> str:
    return params_hash(to_dict(cfg))
