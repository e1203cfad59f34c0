"""Readers for the raw file types the public formats use: JSON, JSON lines, text lines, CSV, pickle.

Each reads a whole file or raises `UserError` naming it (a file that cannot be read at all is an error).
Bytes that are not valid UTF-8 do not stop the read: they survive as lone surrogates (Python's
`surrogateescape`), so that `checks.text` can point at the exact entry and field that holds them.
JSON objects keep duplicate keys on the side (`json.load` would silently keep only the last one).
Pickles come from the internet, so only plain Python values are unpickled.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vidmem.common import UserError


class JsonObject(dict):
    """A JSON object that remembers keys it saw more than once (first value kept, later ones listed)."""

    duplicates: list[tuple[str, Any]]

    def __init__(self, pairs: list[tuple[str, Any]]):
        super().__init__()
        self.duplicates = []
        for key, value in pairs:
            if key in self:
                self.duplicates.append((key, value))
            else:
                self[key] = value


def read_text(path: str | os.PathLike) -> str:
    """The whole file as text; invalid UTF-8 bytes are kept as lone surrogates for `checks.text` to report."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(
            f"{path}: file not found (check ingest.root and this source's paths in params.yaml)"
        ) from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected a file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    return data.decode("utf-8-sig", errors="surrogateescape")


def load_json(path: str | os.PathLike) -> Any:
    text = read_text(path)
    try:
        return json.loads(text, object_pairs_hook=JsonObject)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def read_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) for every non-blank line."""
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            yield lineno, line


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any | json.JSONDecodeError]]:
    """(line number, parsed value or the decode error) per non-blank line: one bad line is one bad entry."""
    for lineno, line in read_lines(path):
        try:
            yield lineno, json.loads(line, object_pairs_hook=JsonObject)
        except json.JSONDecodeError as e:
            yield lineno, e


def read_csv(
    path: str | os.PathLike, columns: tuple[str, ...]
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) rows; a header without `columns` makes the file unreadable."""
    text = read_text(path)
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise UserError(f"{path}: malformed CSV: {e}") from None
    if not rows:
        raise UserError(f"{path}: empty file, expected a CSV header with columns {', '.join(columns)}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in columns if c not in header]
    if missing:
        raise UserError(
            f"{path}: CSV header lacks column(s) {', '.join(missing)} (header: {','.join(header)})"
        )
    body = []
    lineno = 1
    for fields in rows[1:]:
        lineno += 1
        if fields and any(f.strip() for f in fields):
            body.append((lineno, fields))
    return header, body


# Globals a plain-data pickle may name (Python 2 pickles use __builtin__ / copy_reg).
_SAFE_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("__builtin__", "complex"),
    ("collections", "OrderedDict"),
}


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}'")


def load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle plain Python values only (lists, tuples, dicts, strings, numbers, sets): never code."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return _PlainUnpickler(f, encoding="utf-8", errors="surrogateescape").load()
    except FileNotFoundError:
        raise UserError(
            f"{path}: file not found (check ingest.root and this source's paths in params.yaml)"
        ) from None
    except pickle.UnpicklingError as e:
        raise UserError(
            f"{path}: {e}: only plain Python values (lists, dicts, strings, numbers) are unpickled; "
            "re-save the file with plain types"
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable pickle: {e}") from None
