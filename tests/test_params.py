"""The one params reader: types, YAML's numeric strings, bounds, nested groups, unknown keys, layered groups."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from vidmem.common import UserError
from vidmem.params import bounded, read, read_layers, to_dict

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Inner:
    k: int = bounded(3, lo=1)
    names: tuple[str, ...] = ("a",)


@dataclass
class Outer:
    lr: float = 1e-3
    mode: Literal["a", "b"] = "a"
    pair: tuple[float, float] = bounded((0.9, 0.999), lo=0, hi=1)
    maybe: int | None = None
    flag: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    anything: Any = None

    def check(self, where: str) -> None:
        if self.mode == "b" and self.maybe is None:
            raise UserError(f"params.yaml {where}.maybe: needed when mode is b")


def test_types_and_yaml_strings():
    cfg = read(Outer, yaml.safe_load("lr: 5e-4\npair: [0.5, '1e-1']\nmaybe: 4\ninner: {k: '2', names: [x, y]}"), "g")
    assert cfg.lr == 5e-4 and isinstance(cfg.lr, float)  # YAML 1.1 reads 5e-4 as a string
    assert cfg.pair == (0.5, 0.1) and cfg.maybe == 4 and cfg.inner == Inner(2, ("x", "y"))
    assert read(Outer, None, "g") == Outer()
    assert to_dict(cfg)["pair"] == [0.5, 0.1] and to_dict(cfg)["inner"] == {"k": 2, "names": ["x", "y"]}


@pytest.mark.parametrize("node, message", [
    ({"lrr": 1}, "params.yaml g.lrr: unknown key (did you mean 'lr'?); valid keys: anything, counts, flag, inner"),
    ({"inner": {"kk": 1}}, "params.yaml g.inner.kk: unknown key (did you mean 'k'?); valid keys: k, names"),
    ({"lr": "fast"}, "params.yaml g.lr: expected a number, got 'fast'"),
    ({"lr": True}, "params.yaml g.lr: expected a number, got True"),
    ({"lr": "nan"}, "params.yaml g.lr: expected a finite number, got 'nan'"),
    ({"mode": "c"}, "params.yaml g.mode: must be one of a, b; got 'c'"),
    ({"pair": [0.5]}, "params.yaml g.pair: expected a list of 2 values, got [0.5]"),
    ({"pair": [0.5, 2]}, "params.yaml g.pair: must be in [0, 1], got (0.5, 2.0)"),
    ({"flag": "yes"}, "params.yaml g.flag: expected true or false, got 'yes'"),
    ({"inner": {"k": 0}}, "params.yaml g.inner.k: must be in [1, inf], got 0"),
    ({"inner": {"k": 2.5}}, "params.yaml g.inner.k: expected an integer, got 2.5"),
    ({"counts": {"a": "x"}}, "params.yaml g.counts.a: expected an integer, got 'x'"),
    ({"maybe": "x"}, "params.yaml g.maybe: expected an integer, got 'x'"),
    ({"mode": "b"}, "params.yaml g.maybe: needed when mode is b"),
    ("lr", "params.yaml g: expected a mapping of keys, got str"),
])
def test_errors_name_the_key(node, message):
    with pytest.raises(UserError) as e:
        read(Outer, node, "g")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_layers_later_wins_and_errors_name_the_layer():
    cfg = read_layers(Outer, [({"lr": 1.0, "mode": "b", "maybe": 1}, "families.x"), ({"lr": 2.0}, "train.y")])
    assert (cfg.lr, cfg.mode, cfg.maybe) == (2.0, "b", 1)
    with pytest.raises(UserError, match=r"^params.yaml families.x.mode: must be one of a, b"):
        read_layers(Outer, [({"mode": "z"}, "families.x"), ({"lr": 2.0}, "train.y")])
    with pytest.raises(UserError, match=r"^params.yaml train.y.oops: unknown key"):
        read_layers(Outer, [({"lr": 1.0}, "families.x"), ({"oops": 2.0}, "train.y")])


def test_a_misspelt_stage_key_is_one_line_without_a_traceback(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["finetune_clip"]["learning_rate"] = 1e-3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "stages.finetune_clip"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml finetune_clip.learning_rate: unknown key; valid keys: batch_size, betas, epochs, eps, "
        "family, frames_per_text, grad_clip, init, keep_initial, lr, lr_decay_every, lr_decay_rate, "
        "lr_decay_start, min_lr, optimizer, schedule, seed, select_by, tables, videos_per_chunk, warmup_steps, "
        "weight_decay"]
