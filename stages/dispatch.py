"""From a model's name to its family's task: the one place stages look families up (they list no models).

`train.<name>.family: <family>` names the package `models/<family>/` (a dotted module path works too, e.g. a
test's own family); its `make_task(name, layers, paths, params, baseline=None)` builds the task from the
stacked params groups `families.<family>` (the family's defaults) and `train.<name>` (what differs). A
baseline that needs no training is `baselines.<name>: {family: <family>, kind: <kind>}`.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from vidmem.common import UserError
from vidmem.paths import Paths
from vidmem.training import Task


def family_module(family: Any, where: str) -> ModuleType:
    if not isinstance(family, str) or not family:
        raise UserError(f"params.yaml {where}.family: expected the name of a family (a package under models/)")
    module = family if "." in family else f"models.{family}"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            raise UserError(f"params.yaml {where}.family: no family '{family}' (no module {module})") from None
        raise
    if not hasattr(mod, "make_task"):
        raise UserError(f"params.yaml {where}.family: {module} has no make_task()")
    return mod


def _group(params: Mapping[str, Any], top: str, name: str) -> Mapping[str, Any] | None:
    groups = params.get(top) or {}
    if not isinstance(groups, Mapping):
        raise UserError(f"params.yaml {top}: expected a mapping of model names")
    group = groups.get(name)
    if group is not None and not isinstance(group, Mapping):
        raise UserError(f"params.yaml {top}.{name}: expected a mapping of keys")
    return group


def models(params: Mapping[str, Any]) -> list[str]:
    return list((params.get("train") or {}).keys())


def task_for(name: str, params: Mapping[str, Any], paths: Paths | None = None) -> Task:
    """The task of a trained model (`train.<name>`) or of a baseline (`baselines.<name>`)."""
    paths = paths or Paths()
    group, top, baseline = _group(params, "train", name), "train", None
    if group is None:
        group, top = _group(params, "baselines", name), "baselines"
        if group is None:
            known = models(params) + list((params.get("baselines") or {}).keys())
            raise UserError(f"params.yaml: no train.{name} or baselines.{name} group; known: {', '.join(known)}")
        baseline = group.get("kind")
        if not isinstance(baseline, str):
            raise UserError(f"params.yaml baselines.{name}.kind: expected the name of one of the family's baselines")
    family = group.get("family")
    mod = family_module(family, f"{top}.{name}")
    defaults = (params.get("families") or {}).get(family)
    layers = [(defaults, f"families.{family}"), ({k: v for k, v in group.items() if k != "kind"}, f"{top}.{name}")]
    return mod.make_task(name, layers, paths, params, baseline=baseline)
