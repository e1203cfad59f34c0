"""Inline SVG drawings for the report: line charts (DVCLive curves) and event timelines. Plain SVG, no
JavaScript; every mark has a <title> so the browser shows its value on hover."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def _num(v: float) -> str:
    return f"{v:.1f}"


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.1e}"
    return f"{v:.3g}"


@dataclass
class Series:
    name: str
    x: Sequence[float]
    y: Sequence[float]


def line_chart(title: str, series: Sequence[Series], width: int = 300, height: int = 170) -> str:
    """One chart: every series as a polyline over shared axes (non-finite points are dropped)."""
    pts = [
        [(float(a), float(b)) for a, b in zip(s.x, s.y) if math.isfinite(a) and math.isfinite(b)]
        for s in series
    ]
    allp = [p for ps in pts for p in ps]
    left, right, top, bottom = 46, 8, 20, 28
    w, h = width - left - right, height - top - bottom
    out = [
        (
            f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
        ),
        f'<text x="{left}" y="13" class="ct">{escape(title)}</text>',
    ]
    if not allp:
        out.append(f'<text x="{left}" y="{top + h / 2}" class="cn">no points</text></svg>')
        return "".join(out)
    x0, x1 = min(p[0] for p in allp), max(p[0] for p in allp)
    y0, y1 = min(p[1] for p in allp), max(p[1] for p in allp)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * w

    def sy(v: float) -> float:
        return top + h - (v - y0) / (y1 - y0) * h

    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" class="cf"/>')
    for t in _ticks(y0, y1):
        out.append(
            f'<line x1="{left}" x2="{left + w}" y1="{_num(sy(t))}" y2="{_num(sy(t))}" class="cg"/>'
            f'<text x="{left - 4}" y="{_num(sy(t) + 3)}" class="cy">{_label(t)}</text>'
        )
    for t in _ticks(x0, x1):
        out.append(f'<text x="{_num(sx(t))}" y="{top + h + 12}" class="cx">{_label(t)}</text>')
    out.append(f'<text x="{left + w}" y="{height - 3}" class="cx" style="text-anchor:end">step</text>')
    for i, (s, ps) in enumerate(zip(series, pts)):
        colour = PALETTE[i % len(PALETTE)]
        if not ps:
            continue
        if len(ps) == 1:
            out.append(
                f'<circle cx="{_num(sx(ps[0][0]))}" cy="{_num(sy(ps[0][1]))}" r="2.5" fill="{colour}"/>'
            )
        else:
            line = " ".join(f"{_num(sx(a))},{_num(sy(b))}" for a, b in ps)
            out.append(
                f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5">'
                f'<title>{escape(s.name)}: last {_label(ps[-1][1])} at step {_label(ps[-1][0])}</title>'
                '</polyline>'
            )
        out.append(
            f'<text x="{left + w - 2}" y="{top + 10 + 11 * i}" class="cl" fill="{colour}" '
            f'text-anchor="end">{escape(s.name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


@dataclass
class Span:
    start: float
    end: float
    text: str
    score: float | None = None


@dataclass
class Track:
    label: str
    spans: Sequence[Span]
    kind: str = "pred"  # truth | pred | best (the colour class)


def timeline(
    duration: float, tracks: Sequence[Track], width: int = 900, row: int = 18, marks: Sequence[float] = ()
) -> str:
    """Tracks of [start, end] bars over one video's duration (truth above predictions); `marks`: times
    drawn as thin ticks on the axis (where the thumbnails are taken)."""
    left, right = 150, 10
    w = width - left - right
    dur = max(float(duration), 1e-6)
    axis = 20
    lanes: list[list[tuple[Span, int]]] = []
    for t in tracks:  # overlapping spans of one track stack in sub-lanes
        ends: list[float] = []
        placed = []
        for s in sorted(t.spans, key=lambda s: (s.start, s.end)):
            lane = next((i for i, e in enumerate(ends) if e <= s.start), None)
            if lane is None:
                lane = len(ends)
                ends.append(s.end)
            else:
                ends[lane] = s.end
            placed.append((s, lane))
        lanes.append(placed)
    heights = [max(1, 1 + max((ln for _, ln in p), default=0)) * row for p in lanes]
    height = axis + sum(heights) + 6 * len(tracks) + 4

    def sx(v: float) -> float:
        return left + max(0.0, min(v, dur)) / dur * w

    out = [
        (
            f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">'
        )
    ]
    for t in _ticks(0, dur, 8):
        out.append(
            f'<line x1="{_num(sx(t))}" x2="{_num(sx(t))}" y1="12" y2="{height}" class="cg"/>'
            f'<text x="{_num(sx(t))}" y="10" class="cx">{_label(t)} s</text>'
        )
    for m in marks:
        out.append(f'<line x1="{_num(sx(m))}" x2="{_num(sx(m))}" y1="13" y2="19" class="tm"/>')
    y = axis
    for t, placed, hgt in zip(tracks, lanes, heights):
        out.append(
            f'<text x="{left - 6}" y="{y + row * 0.7}" class="tl" text-anchor="end">{escape(t.label)}</text>'
            f'<rect x="{left}" y="{y}" width="{w}" height="{hgt}" class="tb"/>'
        )
        for s, lane in placed:
            x, x2 = sx(s.start), sx(s.end)
            tip = f"{s.start:.1f}–{s.end:.1f} s: {s.text}" + (
                f" (score {s.score:.3f})" if s.score is not None else ""
            )
            out.append(
                f'<rect x="{_num(x)}" y="{y + lane * row + 2}" width="{_num(max(x2 - x, 2))}" '
                f'height="{row - 4}" rx="3" class="ev {t.kind}"><title>{escape(tip)}</title></rect>'
            )
            if x2 - x > 40:
                chars = int((x2 - x - 6) / 5.6)
                text = s.text if len(s.text) <= chars else s.text[: max(chars - 1, 1)] + "…"
                out.append(
                    f'<text x="{_num(x + 3)}" y="{y + lane * row + row * 0.68}" class="et">'
                    f'{escape(text)}</text>'
                )
        y += hgt + 6
    out.append("</svg>")
    return "".join(out)
