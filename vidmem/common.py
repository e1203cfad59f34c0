"""Shared plumbing for every stage: params, logging, user errors, atomic writes, deterministic seeding.

Stages are thin (`python -m stages.<name>`): they read their params group with `load_params`, call library
code, and write outputs atomically so an interrupted stage never leaves a half output that DVC would cache.
User mistakes raise `UserError`; `run_stage` turns them into one clear line on stderr and exit status 2.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import glob
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("vidmem")

PARAMS_FILE = Path("params.yaml")


class UserError(Exception):
    """An error caused by the user's input or configuration: reported as one line, no stack trace."""


# ---------------------------------------------------------------------------------------------------- params
def load_params(path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml (the file DVC tracks). A missing or malformed file is a user error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: params file not found (run from the repository root)")
    try:
        with path.open(encoding="utf-8") as f:
            params = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(params, dict):
        raise UserError(f"{path}: expected a mapping of stage groups at the top level")
    return params


def section(params: dict[str, Any], dotted: str) -> Any:
    """`section(p, 'train.cm2')` → p['train']['cm2'], with an error naming the missing key."""
    node: Any = params
    seen = []
    for key in dotted.split("."):
        seen.append(key)
        if not isinstance(node, dict) or key not in node:
            raise UserError(f"params.yaml: missing key '{'.'.join(seen)}'")
        node = node[key]
    return node


def params_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able value (used to key resumable work to the params that made it)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def inputs_key(paths: Iterable[str | os.PathLike], extra: Any = None, root: str | os.PathLike | None = None) -> str:
    """sha256 over the names and bytes of the given files (folders: every file below, no caches).

    Names are hashed as given; with `root`, paths are relative to it (so the key does not depend on where the
    project lies, or on the working directory).
    """
    h = hashlib.sha256(repr(extra).encode())
    base = Path(root) if root is not None else Path()
    for name in map(Path, paths):
        top = base / name
        if not top.exists():
            raise FileNotFoundError(f"{top}: an input of this run is missing")
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(_key_name(f, base if root is not None else None).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _key_name(f: Path, base: Path | None) -> str:
    """A file's name in a run key: relative to the project root; a file outside it (local pretrained weights
    elsewhere on the machine) by its absolute path."""
    if base is None:
        return str(f)
    try:
        return str(f.relative_to(base))
    except ValueError:
        try:
            return str(f.resolve().relative_to(base.resolve()))
        except ValueError:
            return str(f.resolve())


# ---------------------------------------------------------------------------------------------------- logging
def setup_logging(level: int | str | None = None) -> None:
    level = level or os.environ.get("VIDMEM_LOG", "INFO")
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def bound_heap_growth(arenas: int = 2) -> None:
    """Keep glibc's heap from growing with video length: at most `arenas` malloc arenas.

    glibc gives each thread its own arena; decoded frame chunks and batch tensors (tens of MB) then fragment
    across the decode and compute threads' heaps. Two arenas kept a 60-minute video's peak memory at 1.15x a
    1-minute one's. A fixed 16 MB mmap threshold as well gave 1.10x but cost ~14% of extract throughput in page
    faults (and a 1 MB one ~40%), so the threshold stays glibc's. Measured by `python -m bench.extract`
    (README, Performance). A no-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, int(arenas))  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


_LIBC: Any = None


def release_free_heap() -> None:
    """Hand the pages of freed heap chunks back to the OS (glibc's malloc_trim; a no-op off glibc).

    Batch tensors of tens of MB below glibc's (growing) mmap threshold come from the heap, and the holes they
    leave fragment it: over an hour of video the resident set kept growing though nothing was kept. Callers
    trim every few batches (models.encoders.extract.TRIM_EVERY): after every batch the page faults cost 25 %.
    """
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        _LIBC = False


def run_stage(main: Callable[[], None]) -> None:
    """Entry point wrapper for stages: logging on, bounded heap, user errors as one line + exit status 2."""
    setup_logging()
    bound_heap_growth()
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# ---------------------------------------------------------------------------------------------------- seeding
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU) so CPU runs repeat bit for bit."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- atomic io
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    `suffix` keeps an extension on the temporary name for tools that look at it (ffmpeg: '.mp4').
    """
    path = Path(path)
    tmp = _tmp_sibling(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` atomically and byte-reproducibly.

    Saved to a path, torch names the archive's records after the file — our temporary name, random — so the same
    weights gave different bytes on every run and DVC reran everything downstream. Through a file object the
    records are named `archive/...` whatever the file is called.

    Pickle also writes object identity: an object met twice is written once, then referenced. Equal values
    built along different paths (a fresh run's param-group keys are the interpreter's interned strings; after a
    resume they come from `torch.load`, one object per occurrence) gave other bytes, so the object is first
    rebuilt by `_canonical`: containers new, every string interned. Then equal values give equal bytes.
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(_canonical(obj), f)


def _canonical(obj: Any) -> Any:
    """`obj` with its dicts, lists and tuples rebuilt and its strings interned (tensors and others as they are):
    the pickle of two equal values is then the same whatever objects they shared."""
    if type(obj) is str:
        return sys.intern(obj)
    if isinstance(obj, dict):
        items = [(_canonical(k), _canonical(v)) for k, v in obj.items()]
        if type(obj) is dict:
            return dict(items)
        out = copy.copy(obj)          # keeps a subclass's attributes: a state_dict's `_metadata`, a factory
        out.clear()
        out.update(items)
        if isinstance(getattr(out, "_metadata", None), dict):
            out._metadata = _canonical(out._metadata)
        return out
    if type(obj) is list:
        return [_canonical(v) for v in obj]
    if type(obj) is tuple:
        return tuple(_canonical(v) for v in obj)
    return obj


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary sibling name; swap it in only on success.

    A process killed mid-build (SIGKILL runs no cleanup) leaves its `.<name>.*.tmp` sibling behind: the next
    build of the same path removes it first (one writer per output, as DVC runs a stage)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    """Deterministic JSON (sorted keys only where asked by the caller's data order; UTF-8 kept)."""
    return json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text(path, dumps_json(obj, indent))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON: {e.msg}") from None
    return rows


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
