"""The one params reader: a `params.yaml` group → a typed, validated dataclass, with errors that name the key.

Every stage reads its group through `read(Config, node, "group.sub")`. The dataclass's type hints are the
schema: `int`, `float`, `bool`, `str`, `X | None`, `Literal[...]`, `tuple[X, ...]`, `tuple[X, Y]`, `list[X]`,
`dict[str, X]`, nested dataclasses and `Any`. Field metadata adds bounds (`lo`, `hi`; see `bounded`).

- A missing key takes the field's default; an unknown or misspelt key is one line naming
  `params.yaml <group>.<key>` and the valid keys.
- YAML 1.1 reads `5e-4` (no dot) as a string: numeric strings are accepted where a number is expected.
- A wrong type or an out-of-range value is one line naming the key, what was expected and what was found.
- `layers`: a value may come from several groups (a model's group over its family's defaults, see
  `vidmem.training`); later layers win, and an error names the group the bad value came from.
- After the fields are read, a dataclass's `check(where)` method, when it has one, validates across fields.

All errors are `UserError`, so a stage prints them as one line and exits with status 2, no traceback.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union

from vidmem.common import UserError

T = TypeVar("T")

Layer = tuple[Mapping[str, Any] | None, str]  # (mapping, where it lives: "train.cm2")


def bounded(default: Any = dataclasses.MISSING, *, lo: float | None = None, hi: float | None = None,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with inclusive bounds checked by `read` (for numbers, and for each item of a tuple)."""
    meta = {"lo": lo, "hi": hi}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def read(cls: type[T], node: Mapping[str, Any] | None, where: str) -> T:
    """Read one params group into `cls`; see the module docstring."""
    return read_layers(cls, [(node, where)])


def read_layers(cls: type[T], layers: Sequence[Layer], skip: Sequence[str] = ()) -> T:
    """Read `cls` from stacked groups (later ones override earlier ones key by key); `skip`: keys to ignore."""
    values, origin = _stack(layers, skip)
    known = {f.name for f in dataclasses.fields(cls)}
    for key, where in origin.items():
        if key not in known:
            raise UserError(_unknown(where, key, known))
    return _build(cls, values, origin)


def read_split(classes: Sequence[type], layers: Sequence[Layer], skip: Sequence[str] = ()) -> list[Any]:
    """Read several dataclasses from the keys of one (stacked) group: each key belongs to the first class
    that has a field of that name; a key no class knows is an error listing every valid key."""
    values, origin = _stack(layers, skip)
    owners = [{f.name for f in dataclasses.fields(c)} for c in classes]
    known = set().union(*owners)
    for key, where in origin.items():
        if key not in known:
            raise UserError(_unknown(where, key, known | set(skip)))
    out = []
    for cls, names in zip(classes, owners):
        claimed = {k for k in values if k in names and not any(k in o for o in owners[: len(out)])}
        out.append(_build(cls, {k: values[k] for k in claimed}, {k: origin[k] for k in claimed}))
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain JSON-able data (tuples become lists), for checkpoints and run keys."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


# ------------------------------------------------------------------------------------------------ internals
def _stack(layers: Sequence[Layer], skip: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for node, where in layers:
        if node is None:
            continue
        if not isinstance(node, Mapping):
            raise UserError(f"params.yaml {where}: expected a mapping of keys, got {type(node).__name__}")
        for key, value in node.items():
            if key in skip:
                continue
            values[key] = value
            origin[key] = where
    return values, origin


def _unknown(where: str, key: str, known: set[str]) -> str:
    close = sorted(known, key=lambda k: _distance(k, str(key)))[:1]
    hint = f" (did you mean '{close[0]}'?)" if close and _distance(close[0], str(key)) <= 2 else ""
    return f"params.yaml {where}.{key}: unknown key{hint}; valid keys: {', '.join(sorted(known))}"


def _distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _build(cls: type[T], values: dict[str, Any], origin: dict[str, str]) -> T:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        key = f"{origin[f.name]}.{f.name}"
        value = _coerce(values[f.name], hints[f.name], key)
        _bounds(value, f.metadata, key)
        kwargs[f.name] = value
    try:
        cfg = cls(**kwargs)
    except TypeError as e:  # a required field without a value
        raise UserError(f"params.yaml {next(iter(origin.values()), cls.__name__)}: {e}") from None
    check = getattr(cfg, "check", None)
    if callable(check):
        groups = sorted(set(origin.values())) or [cls.__name__]
        check(groups[-1])
    return cfg


def _bounds(value: Any, meta: Mapping[str, Any], key: str) -> None:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is None and hi is None:
        return
    items = value if isinstance(value, (tuple, list)) else [value]
    for v in items:
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise UserError(f"params.yaml {key}: must be in {rng}, got {value!r}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(value, option, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if len(errors) == 1 else
                        f"params.yaml {key}: expected {' or '.join(_name(o) for o in options)}, got {value!r}")
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise UserError(f"params.yaml {key}: must be one of {', '.join(map(str, args))}; got {value!r}")
    if dataclasses.is_dataclass(hint):
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise UserError(f"params.yaml {key}: expected a mapping of keys, got {value!r}")
        return read(hint, value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"params.yaml {key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"params.yaml {key}: expected a list of {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise UserError(f"params.yaml {key}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"params.yaml {key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise UserError(f"params.yaml {key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        number = _number(value)
        if number is not None and math.isfinite(number) and number == int(number):
            return int(number)
        raise UserError(f"params.yaml {key}: expected an integer, got {value!r}")
    if hint is float:
        number = None if isinstance(value, bool) else _number(value)
        if number is None:
            raise UserError(f"params.yaml {key}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise UserError(f"params.yaml {key}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise UserError(f"params.yaml {key}: expected a string, got {value!r}")
    raise TypeError(f"vidmem.params: unsupported field type {hint!r} for {key}")


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))
