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


class Steps:
    """Wall time and peak resident memory of each step of a run (`with steps("compress"): ...`).

    The peak is the process's VmHWM, reset before each step through /proc/self/clear_refs (Linux), so each
    step's number is its own peak, not the run's so far; where /proc is missing only times are kept."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}
        self._before = 0.0  # the highest peak among the periods before the last reset

    def run_peak(self) -> float | None:
        """The process's peak so far, across resets."""
        now = self._peak()
        return None if now is None else max(now, self._before)

    def _reset(self) -> None:
        self._before = max(self._before, self._peak() or 0.0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    @staticmethod
    def _peak() -> float | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            return None
        return None

    def __call__(self, name: str):
        import contextlib
        import time

        @contextlib.contextmanager
        def timed():
            self._reset()
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self.seconds[name] = round(time.perf_counter() - t0, 3)
                peak = self._peak()
                if peak is not None:
                    self.peak_rss_mb[name] = peak

        return timed()
