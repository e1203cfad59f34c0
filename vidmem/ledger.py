"""An append-only, crash-safe record of what happened to every input of a stage.

Each line is one JSON object with a `key` (usually a video id) and a `status` ('done' or 'failed', with a
`reason`). Lines are flushed and fsync'ed as they are written, so a killed stage can be rerun and skip what
is done. The last line for a key wins; a torn last line (the process died mid-write) is ignored.
`finalize` rewrites the ledger atomically with one line per current key, in a stable order.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vidmem.common import write_jsonl

DONE = "done"
FAILED = "failed"


class Ledger:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # torn write from a killed run
                    if isinstance(row, dict) and "key" in row:
                        self._rows[row["key"]] = row
        self._fh = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, key: str) -> dict[str, Any] | None:
        return self._rows.get(key)

    def rows(self) -> dict[str, dict[str, Any]]:
        return dict(self._rows)

    def record(self, key: str, status: str, **fields: Any) -> dict[str, Any]:
        row = {"key": key, "status": status, **fields}
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._rows[key] = row
        return row

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def finalize(self, keys: Iterable[str]) -> list[dict[str, Any]]:
        """Keep exactly `keys` (in that order), dropping stale entries; rewrite atomically."""
        self.close()
        rows = [self._rows[k] for k in keys if k in self._rows]
        write_jsonl(self.path, rows)
        self._rows = {r["key"]: r for r in rows}
        return rows

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self._rows.values():
            out[row["status"]] = out.get(row["status"], 0) + 1
        return out
