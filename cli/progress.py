"""Progress bars: tqdm (a pinned requirement); a plain stderr line where it is missing. Both stay quiet when
stderr is not a terminal, as tqdm's `disable=None` does."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any


class _Line:
    """The fallback: `desc: n/total` rewritten in place on stderr."""

    def __init__(
        self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it"
    ):
        self.iterable, self.total, self.desc, self.unit, self.n = iterable, total, desc, unit, 0
        self.on = sys.stderr.isatty()

    def __iter__(self) -> Iterator:
        for x in self.iterable or ():
            yield x
            self.update(1)
        self.close()

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.on:
            of = f"/{self.total}" if self.total else ""
            sys.stderr.write(f"\r{self.desc}: {self.n}{of} {self.unit}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.on:
            sys.stderr.write("\n")


def bar(iterable: Iterable | None = None, **kw: Any):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is pinned in requirements.txt
        return _Line(iterable, kw.get("total"), kw.get("desc", ""), kw.get("unit", "it"))
    return tqdm(iterable, disable=None, **kw)
