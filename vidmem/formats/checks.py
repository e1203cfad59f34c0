"""The one home of entry-level validation shared by every parser: keys, types, text, ids and time spans.

Each check returns the clean value or raises `Bad(field, reason)`; the parser turns that into a `Problem`
naming its file and entry. Keeping the rules here means "start > end" or "end past the duration" reads and
behaves the same for ActivityNet, Charades-STA, TACoS or Ego4D.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from vidmem.common import UserError
from vidmem.formats.base import Bad, Parsed

_SURROGATES = range(0xDC80, 0xDD00)  # bytes that were not valid UTF-8 (readers use surrogateescape)


def key(obj: Any, name: str, where: str = "") -> Any:
    """obj[name], or Bad naming the missing key."""
    if not isinstance(obj, Mapping):
        raise Bad(where or name, f"{where or 'entry'} must be a JSON object, got {_kind(obj)}")
    if name not in obj:
        raise Bad(name, f"missing key '{name}'")
    return obj[name]


def mapping(value: Any, field: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise Bad(field, f"{field} must be an object, got {_kind(value)}")
    return value


def seq(value: Any, field: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise Bad(field, f"{field} must be a list, got {_kind(value)}")
    return list(value)


def text(value: Any, field: str) -> str:
    """A non-empty string of valid UTF-8, stripped of surrounding whitespace."""
    if not isinstance(value, str):
        raise Bad(field, f"{field} must be a string, got {_kind(value)}")
    bad = next((c for c in value if ord(c) in _SURROGATES), None)
    if bad is not None:
        raise Bad(field, f"{field} is not valid UTF-8 (byte 0x{ord(bad) - 0xDC00:02x})")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise Bad(field, f"{field} holds an unpaired UTF-16 surrogate")
    value = value.strip()
    if not value:
        raise Bad(field, f"{field} is empty")
    return value


def ident(value: Any, field: str) -> str:
    """A video / entry id: non-empty text without inner whitespace or path separators."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    value = text(value, field)
    if any(c.isspace() for c in value) or "/" in value or "\\" in value or value in (".", ".."):
        raise Bad(field, f"{field} {value!r} is not a usable id (whitespace or path separator)")
    return value


def number(value: Any, field: str) -> float:
    """A finite number; numeric strings are accepted (Charades-STA lines and CSV cells are text)."""
    if isinstance(value, bool):
        raise Bad(field, f"{field} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise Bad(field, f"{field} must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise Bad(field, f"{field} must be a number, got {_kind(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise Bad(field, f"{field} must be a finite number, got {value}")
    return value


def integer(value: Any, field: str) -> int:
    x = number(value, field)
    if x != int(x):
        raise Bad(field, f"{field} must be a whole number, got {x:g}")
    return int(x)


def duration(value: Any, field: str = "duration") -> float:
    d = number(value, field)
    if d <= 0:
        raise Bad(field, f"{field} must be > 0, got {d:g}")
    return d


def pair(value: Any, field: str) -> tuple[Any, Any]:
    """A [start, end] pair (list or tuple of two)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise Bad(field, f"{field} must be a [start, end] pair, got {value!r}"[:200])
    return value[0], value[1]


def span(
    start: Any,
    end: Any,
    duration: float | None,
    tolerance: float,
    field: str = "timestamps",
    end_slack: float = 0.0,
) -> tuple[float, float]:
    """Validate a time span in seconds against the video duration (when known).

    Negative times and start > end are errors. An end past the duration by at most `tolerance` (+ `end_slack`)
    is clamped to the duration (real ActivityNet and Charades-STA ends overshoot slightly), and a larger
    overshoot is an error.
    """
    s = number(start, f"{field} start")
    e = number(end, f"{field} end")
    if s < 0 or e < 0:
        raise Bad(field, f"negative time in {field}: start {s:g}, end {e:g}")
    if s > e:
        raise Bad(field, f"start {s:g} > end {e:g}")
    if duration is not None:
        limit = duration + tolerance + end_slack
        if e > limit:
            raise Bad(
                field,
                f"end {e:g} is past the video duration {duration:g} "
                f"(by {e - duration:.3g} s; time_tolerance {tolerance:g} s)",
            )
        if s > duration + tolerance:
            raise Bad(field, f"start {s:g} is past the video duration {duration:g}")
        e = min(e, duration)
        s = min(s, e)
    return s, e


def unique(seen: dict[str, str], value: str, where: str, field: str, what: str = "video id") -> None:
    """Record that `value` was seen at `where`; a repeat is Bad naming where it was first seen."""
    if value in seen:
        raise Bad(field, f"duplicate {what} '{value}' (first at {seen[value]})")
    seen[value] = where


def no_duplicate_keys(obj: Mapping, where: str = "") -> None:
    """JSON objects read by `readers.load_json` list repeated keys; any repeat is Bad."""
    dups = getattr(obj, "duplicates", None)
    if dups:
        name = dups[0][0]
        raise Bad(name, f"duplicate key '{name}'{' in ' + where if where else ''}")


def video_entries(
    out: Parsed, data: Any, file: str, count: Callable[[Any], int]
) -> Iterator[tuple[str, Any]]:
    """(video id, value) of a JSON object keyed by video id.

    Unusable and repeated ids become problems (`count(value)`: how many rows the entry holds); of a repeat
    the first copy is kept. A file that is not such an object is unreadable as a whole.
    """
    if not isinstance(data, Mapping):
        raise UserError(f"{file}: expected a JSON object keyed by video id, got {_kind(data)}")
    for raw, value in data.items():
        try:
            vid = ident(raw, "video id")
        except Bad as bad:
            out.problem(file, f"video {raw!r}", bad, count(value))
            continue
        yield vid, value
    for raw, value in getattr(data, "duplicates", []):
        bad = Bad(
            "video id", f"duplicate video id '{raw}': the file holds it more than once (the first is kept)"
        )
        out.problem(file, f"video '{raw}'", bad, count(value))


def count_list(value: Any, *names: str) -> int:
    """How many rows an entry holds (the longest of its lists `names`, at least 1), for problems that drop
    the whole entry: with 'sentences' missing or short, its 'timestamps' still tell how many events it had."""
    if not isinstance(value, Mapping):
        return 1
    return max([1, *(len(value[n]) for n in names if isinstance(value.get(n), list))])


def event_rows(item: Any) -> int:
    """Rows an ActivityNet-style video entry holds: one per event, by its sentences or its timestamps."""
    return count_list(item, "sentences", "timestamps")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"[:80]
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__
