"""The shared training recipe, on a family defined here (not in models/): dispatch + fit, kill -9 and resume,
data-parallel under torchrun, schedules, and the dvc.yaml deps that must cover every run key's code.

The toy family is this module (`family: tests.test_recipe`): a small MLP with dropout regressing a fixed
random linear map, so a run draws init, batch order and dropout from the seeds like a real family does.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from vidmem.common import UserError
from vidmem.params import bounded
from vidmem.paths import Paths
from vidmem.training import EpochContext, RecipeConfig, Task, fit, load_checkpoint, lr_at, read_task_params

REPO = Path(__file__).resolve().parents[1]
FAMILY = "tests.test_recipe"
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------------- the family
@dataclass
class ToyConfig:
    samples: int = bounded(48, lo=1)
    width: int = bounded(16, lo=1)
    dropout: float = bounded(0.2, lo=0, hi=0.9)


class ToyTask(Task):
    family = "tests.test_recipe"
    code = ("tests/test_recipe.py",)

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(self.config.samples, 8, generator=g)
        return x, x @ torch.randn(8, 2, generator=g)

    def build(self) -> nn.Module:
        c = self.config
        return nn.Sequential(nn.Linear(8, c.width), nn.ReLU(), nn.Dropout(c.dropout), nn.Linear(c.width, 2))

    def batches(self, ctx: EpochContext):
        kill_at = os.environ.get("TOY_KILL_AT_EPOCH")
        if kill_at is not None and ctx.epoch == int(kill_at):  # a kill -9 once the previous epoch is saved
            os.kill(os.getpid(), signal.SIGKILL)
        return ctx.shuffled_batches(self.config.samples, self.recipe.batch_size)

    def steps_per_epoch(self) -> int:
        return -(-self.config.samples // self.recipe.batch_size)

    def collate(self, samples):
        x, y = self.data()
        return x[list(samples)], y[list(samples)]

    def step(self, model, batch):
        x, y = batch
        loss = ((model(x) - y) ** 2).mean()
        return loss, {"loss": loss.item()}

    def validate(self, model, epoch):
        x, y = self.data()
        with torch.no_grad():
            return {"loss": float(((model(x) - y) ** 2).mean())}


def make_task(name, layers, paths, params=None, baseline=None) -> ToyTask:
    recipe, cfg = read_task_params(ToyConfig, layers)
    return ToyTask(name, recipe, cfg, paths, params)


# ---------------------------------------------------------------------------------------------- helpers
def toy_project(root: Path, **recipe) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    params = {
        "families": {"tests.test_recipe": {"epochs": 3, "batch_size": 8, "lr": 1e-2, "seed": 5, "schedule": "cosine",
                                           "warmup_steps": 2, "grad_clip": 1.0, "width": 16}},
        "train": {"toy": {"family": "tests.test_recipe", "dropout": 0.25, **recipe}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def stage(root: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO), "VIDMEM_LOG": "WARNING",
           "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(list(args), cwd=root, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


# ---------------------------------------------------------------------------------------------- tests
def test_dispatch_fit_kill_and_resume_give_the_uninterrupted_weights(tmp_path):
    full = toy_project(tmp_path / "full")
    stage(full, "python", "-m", "stages.train", "toy")
    killed = toy_project(tmp_path / "killed")
    proc = stage(killed, "python", "-m", "stages.train", "toy", env={"TOY_KILL_AT_EPOCH": "1"}, check=False)
    assert proc.returncode == -signal.SIGKILL
    ckpt = load_checkpoint(Paths(killed).checkpoint(FAMILY, "toy", "last"))
    assert ckpt["epoch"] == 1 and ckpt["step"] == 6
    stage(killed, "python", "-m", "stages.train", "toy")

    for which in ("last", "best"):
        a, b = weights(Paths(full).checkpoint(FAMILY, "toy", which)), weights(Paths(killed).checkpoint(FAMILY, "toy", which))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), which
    la, lb = (load_checkpoint(Paths(p).checkpoint(FAMILY, "toy", "last")) for p in (full, killed))
    assert la["history"] == lb["history"] and [h["epoch"] for h in la["history"]] == [1, 2, 3]
    assert la["params"]["family"] == "tests.test_recipe" and la["params"]["dropout"] == 0.25
    assert la["params"]["schedule"] == "cosine"  # the family's defaults under the model's own keys
    losses = [h["train/loss"] for h in la["history"]]
    assert losses[-1] < losses[0]
    curves = Paths(full).curves("toy") / "plots" / "metrics"
    assert (curves / "train" / "loss.tsv").is_file() and (curves / "val" / "loss.tsv").is_file()


def test_changed_params_start_over_instead_of_resuming(tmp_path):
    root = toy_project(tmp_path / "p")
    stage(root, "python", "-m", "stages.train", "toy")
    first = weights(Paths(root).checkpoint(FAMILY, "toy", "last"))
    toy_project(root, dropout=0.3)
    proc = stage(root, "python", "-m", "stages.train", "toy", env={"VIDMEM_LOG": "INFO"})
    assert "starting over" in proc.stderr
    again = weights(Paths(root).checkpoint(FAMILY, "toy", "last"))
    assert not all(torch.equal(first[k], again[k]) for k in first)


def test_torchrun_ranks_end_with_identical_weights(tmp_path):
    root = toy_project(tmp_path / "ddp", batch_size=12)
    torchrun = BIN / "torchrun"
    stage(root, str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "tests.test_recipe",
          str(root / "ranks"))
    r0, r1 = (torch.load(root / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    saved = weights(Paths(root).checkpoint(FAMILY, "toy", "last"))  # rank 0 wrote the checkpoint
    assert all(torch.equal(saved[k], r0[k]) for k in r0)
    history = load_checkpoint(Paths(root).checkpoint(FAMILY, "toy", "last"))["history"]
    assert len(history) == 3 and history[-1]["train/loss"] < history[0]["train/loss"]


def test_schedules():
    r = RecipeConfig(lr=1.0, schedule="step", epochs=10, lr_decay_start=4, lr_decay_every=3, lr_decay_rate=0.5)
    assert [lr_at(r, 0, e, None) for e in range(10)] == [1, 1, 1, 1, .5, .5, .5, .25, .25, .25]
    r = RecipeConfig(lr=1.0, schedule="cosine", warmup_steps=4, min_lr=0.1)
    assert [lr_at(r, s, 0, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(r, 9, 0, 14) == pytest.approx(0.1 + 0.9 * 0.5) and lr_at(r, 14, 0, 14) == pytest.approx(0.1)
    assert lr_at(RecipeConfig(lr=0.3), 99, 7, None) == 0.3


def test_non_finite_loss_names_the_batch(tmp_path):
    class Nan(ToyTask):
        def step(self, model, batch):
            loss, terms = super().step(model, batch)
            return loss * float("nan"), terms

    task = Nan("toy", RecipeConfig(epochs=1, batch_size=8), ToyConfig(), Paths(tmp_path))
    with pytest.raises(UserError, match=r"toy: non-finite loss at epoch 1, batch 0 \(8 samples\)"):
        fit(task, tmp_path / "ck", device="cpu", progress=False)


def test_params_split_between_recipe_and_family():
    layers = [({"lr": "5e-4", "width": 8}, "families.tests.test_recipe"), ({"family": "x", "epochs": 2}, "train.toy")]
    recipe, cfg = read_task_params(ToyConfig, layers)
    assert (recipe.lr, recipe.epochs, cfg.width) == (5e-4, 2, 8)
    with pytest.raises(UserError, match=r"^params.yaml train.toy.widht: unknown key \(did you mean 'width'\?\); "
                                        r"valid keys: .*batch_size.*dropout"):
        read_task_params(ToyConfig, [*layers, ({"widht": 3}, "train.toy")])
    with pytest.raises(UserError, match=r"^params.yaml families.tests.test_recipe.lr: expected a number, got 'x'"):
        read_task_params(ToyConfig, [({"lr": "x"}, "families.tests.test_recipe")])


# ---------------------------------------------------------------------------------------------- dvc.yaml
def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def _dvc_stages() -> dict[str, list[str]]:
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {s.addressing: [str(Path(d.def_path)) for d in s.deps] for s in repo.index.stages}


def test_dvc_deps_cover_every_run_key():
    """Each training stage's dvc.yaml deps cover the code and data its run key hashes (one declaration, checked)."""
    from models.encoders.extract import CODE as EXTRACT_CODE
    from models.encoders.tuning import make_tuning_task
    from models.window.task import make_window_task
    from stages.dispatch import task_for

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = _dvc_stages()
    checked = []
    for name, group in params["train"].items():
        deps = stages[f"train@{name}"]
        task = task_for(name, params, Paths())
        for path in task.code_paths() + ("stages/train.py", "stages/dispatch.py", f"models/{group['family']}"):
            assert _covered(path, deps), f"train@{name}: dvc.yaml deps miss {path}"
        for path in task.inputs():
            assert _covered(str(path), deps), f"train@{name}: dvc.yaml deps miss input {path}"
        checked.append(name)
    tuning = make_tuning_task(params, Paths())
    for path in tuning.code_paths() + tuple(str(p) for p in tuning.inputs()):
        assert _covered(path, stages["finetune_clip"]), f"finetune_clip: dvc.yaml deps miss {path}"
    window = make_window_task(params, Paths())
    for path in window.code_paths() + tuple(str(p) for p in window.inputs()):
        assert _covered(path, stages["finetune_window"]), f"finetune_window: dvc.yaml deps miss {path}"
    for kind in ("clip", "lavila", "text"):
        for path in EXTRACT_CODE + (str(Paths().clip_checkpoint),):
            assert _covered(path, stages[f"extract@{kind}"]), f"extract@{kind}: dvc.yaml deps miss {path}"
    assert checked == list(params["train"])


def test_stages_list_no_models():
    for stage_file in ("stages/train.py", "stages/evaluate.py", "stages/dispatch.py"):
        text = (REPO / stage_file).read_text()
        for name in ("pdvc", "cm2", "dense", "models.dense"):
            assert name not in text, f"{stage_file} names {name}"


# ---------------------------------------------------------------------------------------------- torchrun entry
if __name__ == "__main__":  # torchrun --nproc_per_node=2 -m tests.test_recipe <folder>: fit, save each rank's weights
    from stages.dispatch import task_for
    from vidmem.dist import init_from_env

    out = Path(sys.argv[1])
    d = init_from_env()
    torch.set_num_threads(1)
    task = task_for("toy", yaml.safe_load(Path("params.yaml").read_text()), Paths())
    result = fit(task, Paths().model_dir(FAMILY, "toy"), device="cpu", dist=d, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result.model.state_dict(), out / f"rank{d.rank}.pt")  # this rank's own final weights
    d.close()
