"""How well the memory retrieves: precision@k of bank sentences for video windows, and the bank's coverage.

A retrieved bank sentence is a hit for a window when it describes an event of the window's video that overlaps
the window. Bank sentences come from other (train) videos, so "describes" cannot be string equality: two
sentences describe the same event when they say the same thing — the same `vidmem.synth.parse.Meaning`
(colour, shape, action) on SynthVid — and, for a sentence the grammar did not write (real data), when the
lower-cased words are equal. The random draw's precision is exact, not sampled: the fraction of the bank that
are hits for the window (a uniform draw of k has that expected precision for every k).

Coverage: the fraction of a split's events whose meaning some bank sentence has — an upper bound on what
retrieval can bring to those events.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from vidmem.synth.parse import parse as _parse

# each window re-reads its video's events: parse every distinct sentence once
parse = lru_cache(maxsize=None)(_parse)


def meaning_key(sentence: str) -> tuple:
    """What a sentence says: its (colour, shape, action) on SynthVid, else its lower-cased words."""
    m = parse(sentence)
    return ("meaning", *m) if m is not None else ("words", *re.findall(r"[a-z0-9']+", sentence.lower()))


def subject_key(sentence: str) -> tuple:
    """Partial credit: the object a sentence names (colour, shape), whatever it says the object does."""
    m = parse(sentence)
    return ("subject", *m.subject) if m is not None else meaning_key(sentence)


def action_key(sentence: str) -> tuple:
    """Partial credit: what a sentence says happens (the event kind), whichever object does it."""
    m = parse(sentence)
    return ("action", m.action) if m is not None else meaning_key(sentence)


KEYS = {"meaning": meaning_key, "subject": subject_key, "action": action_key}


def window_precision(retrieved: Sequence[Sequence[int]], windows: Sequence[tuple[float, float]],
                     events: Sequence[Sequence[tuple[float, float, str]]], bank: Sequence[str],
                     ks: Sequence[int], key: Callable[[str], tuple] = meaning_key) -> dict[str, Any]:
    """retrieved[q]: bank indices best first (at least max(ks)) for window q = (start, end) seconds;
    events[q]: (start, end, sentence) of that window's video. → {retrieved: {p@k}, random: {p@k}, windows}.
    `key` decides when two sentences say the same thing (meaning_key; subject_key / action_key: partial)."""
    keys = [key(s) for s in bank]
    by_key = Counter(keys)
    hits = {k: [] for k in ks}
    rand = []
    for top, (a, b), evs in zip(retrieved, windows, events):
        want = {key(t) for s, e, t in evs if s < b and e > a}
        for k in ks:
            hits[k].append(sum(keys[j] in want for j in top[:k]) / k)
        rand.append(sum(by_key.get(w, 0) for w in want) / len(bank))
    return {"windows": len(windows),
            "retrieved": {f"p@{k}": float(np.mean(v)) if v else float("nan") for k, v in hits.items()},
            "random": {f"p@{k}": float(np.mean(rand)) if rand else float("nan") for k in ks}}


def coverage(bank: Sequence[str], sentences: Sequence[str]) -> float:
    """Fraction of `sentences` (a split's events) whose meaning some bank sentence has."""
    have = {meaning_key(s) for s in bank}
    return float(np.mean([meaning_key(s) in have for s in sentences])) if sentences else float("nan")
