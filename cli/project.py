"""Which trained project the commands use, and loading its checkpoints.

A project is a folder holding `params.yaml` and the pipeline's `data/` (checkpoints, the manifest's
vocabulary, CM2's memory bank): `--project DIR`, else the current folder when it is one, else the repository
this code lives in (`make repro` trains it there). Every checkpoint defaults to its pipeline path
(`vidmem.paths.Paths.checkpoint`) and can be replaced by a flag; a model is rebuilt from the `params` saved in
its own checkpoint, so a checkpoint trained with other settings than params.yaml's loads as trained.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.dispatch import task_for
from vidmem.common import UserError, load_params
from vidmem.paths import Paths
from vidmem.training import Task, default_device, load_checkpoint

REPO = Path(__file__).resolve().parents[1]

# model flag → (params group that names the model, default model name, the stage that trains it)
MODELS = {
    "cm2": ("train", "cm2"),
    "recap_clip": ("captions", "clip"),
    "recap_segment": ("captions", "segment"),
    "recap_video": ("captions", "video"),
    "emcl": ("train", "emcl"),
    "mrnet": ("train", "mrnet"),
    "mrnet_speech": ("train", "mrnet_speech"),
}


def find_project(arg: str | None) -> Path:
    if arg:
        root = Path(arg)
        if not (root / "params.yaml").is_file():
            raise UserError(
                f"--project {arg}: no params.yaml there (a vidmem checkout trained by `make repro`)"
            )
        return root
    cwd = Path.cwd()
    if (cwd / "params.yaml").is_file() and (cwd / "dvc.yaml").is_file():
        return cwd
    return REPO


@dataclass
class Project:
    """The trained project and the user's checkpoint overrides (flag name → path)."""

    root: Path
    overrides: Mapping[str, str | None] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    _tasks: dict[str, tuple[Task, dict[str, Any]]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, arg: str | None, overrides: Mapping[str, str | None] | None = None) -> Project:
        root = find_project(arg)
        return cls(root, dict(overrides or {}), load_params(root / "params.yaml"))

    @property
    def paths(self) -> Paths:
        return Paths(self.root)

    def model_name(self, key: str) -> str:
        group, entry = MODELS[key]
        if group == "captions":
            name = (self.params.get("captions") or {}).get(entry)
            if not isinstance(name, str):
                raise UserError(f"{self.root / 'params.yaml'} captions.{entry}: expected a model name")
            return name
        return entry

    def checkpoint(self, key: str) -> tuple[str, Path]:
        """(model name, checkpoint path) of a model flag; the path is the flag's or the pipeline's."""
        name = self.model_name(key)
        given = self.overrides.get(key)
        if given:
            return name, Path(given)
        family = ((self.params.get("train") or {}).get(name) or {}).get("family")
        if not isinstance(family, str):
            raise UserError(f"{self.root / 'params.yaml'}: no train.{name} entry (pass --{flag(key)} PATH)")
        return name, self.paths.checkpoint(family, name)

    def missing_hint(self, key: str) -> str:
        name = self.model_name(key)
        where = relative(self.root)
        return f"run `dvc repro train@{name}` in {where} (or `make repro`), or pass --{flag(key)} PATH"

    def require(self, key: str) -> Path:
        """A model flag's checkpoint, which must exist (else one line naming the command that makes it)."""
        _, path = self.checkpoint(key)
        if not path.is_file():
            raise UserError(f"{relative(path)}: checkpoint not found; {self.missing_hint(key)}")
        return path

    def task(self, key: str, device=None) -> tuple[Task, dict[str, Any]]:
        """(task, checkpoint) of a model flag: the task is rebuilt from the checkpoint's own params. Loaded
        once per run (a command checks every model it needs before any work, then uses them)."""
        if key not in self._tasks:
            self._tasks[key] = self._load_task(key, device)
        return self._tasks[key]

    def _load_task(self, key: str, device=None) -> tuple[Task, dict[str, Any]]:
        name, _ = self.checkpoint(key)
        path = self.require(key)
        device = device or default_device()
        ckpt = load_checkpoint(path, device, self.missing_hint(key))
        group = ckpt.get("params") or (self.params.get("train") or {}).get(name)
        if not isinstance(group, Mapping) or "family" not in group:
            raise UserError(f"{path}: the checkpoint names no family in its params")
        try:
            task = task_for(name, {"train": {name: dict(group)}}, self.paths)
        except UserError as e:  # e.g. a checkpoint from another version of the code
            msg = str(e).replace(f"params.yaml train.{name}.", "saved param ")
            raise UserError(f"{relative(path)}: does not fit this code's model ({msg})") from None
        task.device = device
        return task, ckpt

    # ---------------------------------------------------------------------------------------- other inputs
    def _input(self, key: str, default: Path, marker: str, what: str, stage: str, flag: str) -> Path:
        """A pipeline output the command reads (or the one the user names): one line naming what makes it."""
        path = Path(self.overrides.get(key) or default)
        if not (path / marker if marker else path).is_file():
            raise UserError(f"{relative(path)}: {what} not found; run `dvc repro {stage}` in "
                            f"{relative(self.root)} (or `make repro`), or pass {flag} PATH")
        return path

    def clip_checkpoint(self) -> Path:
        return self._input("clip", self.paths.clip_checkpoint, "", "CLIP checkpoint", "finetune_clip",
                           "--clip-checkpoint")

    def vocab_file(self) -> Path:
        return self._input("vocab", self.paths.manifest / "vocab.json", "", "caption vocabulary", "ingest",
                           "--vocab")

    def bank_path(self) -> Path:
        return self._input("bank", self.paths.bank, "zarr.json", "CM2 memory bank", "bank", "--bank")

    def extract_params(self, clip_ckpt: Path) -> dict[str, Any]:
        """params.yaml with the CLIP config the checkpoint was tuned with (its own `params.clip`)."""
        import torch

        params = dict(self.params)
        try:
            saved = torch.load(clip_ckpt, map_location="cpu", weights_only=False).get("params") or {}
        except Exception as e:
            raise UserError(f"{clip_ckpt}: not a checkpoint torch can read ({type(e).__name__})") from None
        if isinstance(saved.get("clip"), Mapping):
            params["clip"] = {**(params.get("clip") or {}), **saved["clip"]}
        return params


def relative(path: str | os.PathLike) -> str:
    """`path` relative to the current folder when it lies below it (messages stay short), else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def flag(key: str) -> str:
    return key.replace("_", "-")


def with_data(task: Task, **data: Any) -> Task:
    """The same task (class, recipe, config) built on in-memory data: each family's constructor takes its
    own keyword arguments for that (dense: datasets/bank, grounding: splits/queries, recap: data, ...)."""
    out = type(task)(
        task.name, task.recipe, dataclasses.replace(task.config), task.paths, task.params, **data
    )
    out.device = task.device
    return out
