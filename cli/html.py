"""The small self-contained page of a `vidmem caption` run: per video a timeline of its dense events (lanes so
overlapping events stay readable), the event table, and the ReCap hierarchy of long videos. No scripts, no
network: one HTML file with inline CSS."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
.meta{color:#666} .tl{position:relative;background:#f4f4f4;border-radius:4px;margin:.5em 0}
.ev{position:absolute;height:18px;background:#4a7fd0;color:#fff;font-size:11px;overflow:hidden;white-space:nowrap;
border-radius:3px;padding:0 3px;box-sizing:border-box}
.axis{position:relative;height:16px;font-size:11px;color:#888} .axis span{position:absolute}
table{border-collapse:collapse;margin:.5em 0}
td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.sum{background:#fffbe6;padding:.5em;border-radius:4px}
.bad{color:#a00}
"""


def lanes(events: list[dict[str, Any]]) -> list[int]:
    """Greedy lane per event (events sorted by start): the first lane whose last event ended before it."""
    ends: list[float] = []
    out = []
    for e in events:
        s, t = e["timestamp"]
        for i, end in enumerate(ends):
            if s >= end:
                ends[i] = t
                out.append(i)
                break
        else:
            ends.append(t)
            out.append(len(ends) - 1)
    return out


def timeline(events: list[dict[str, Any]], duration: float) -> str:
    dur = max(duration, 1e-6)
    lane = lanes(events)
    n = max(lane, default=0) + 1
    bars = []
    for e, k in zip(events, lane):
        s, t = e["timestamp"]
        left, width = 100 * max(0.0, s) / dur, max(0.4, 100 * (min(t, dur) - max(0.0, s)) / dur)
        tip = f"{s:.1f}–{t:.1f} s: {e['sentence']}"
        bars.append(
            f'<div class="ev" style="left:{left:.2f}%;width:{width:.2f}%;top:{3 + 21 * k}px" '
            f'title="{escape(tip)}">{escape(e["sentence"])}</div>'
        )
    ticks = "".join(
        f'<span style="left:{100 * i / 5:.0f}%">{duration * i / 5:.0f} s</span>' for i in range(5)
    )
    return (
        f'<div class="tl" style="height:{6 + 21 * n}px">{"".join(bars)}</div><div class="axis">{ticks}</div>'
    )


def caption_page(
    videos: dict[str, dict[str, Any]],
    results: dict[str, list[dict[str, Any]]],
    levels: dict[str, list[Any]],
    failed: dict[str, str],
) -> str:
    summaries = {e["vid"]: e["video_summary"] for e in levels.get("videos", [])}
    segments: dict[str, list[dict]] = {}
    for e in levels.get("segments", []):
        segments.setdefault(e["vid"], []).append(e)
    clips: dict[str, list] = {}
    for vid, s, t, c in levels.get("clips", []):
        clips.setdefault(vid, []).append((s, t, c))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>vidmem captions</title>"
        f"<style>{CSS}</style></head><body><h1>vidmem captions</h1>"
        f"<p class='meta'>{len(videos)} video(s) captioned by CM2"
        f"{f', {len(summaries)} with the ReCap hierarchy' if summaries else ''}"
        f"{f', {len(failed)} failed' if failed else ''}.</p>"
    ]
    for vid, v in videos.items():
        events = results.get(vid, [])
        parts.append(
            f"<h2 id='{escape(vid)}'>{escape(Path(v['path']).name)}</h2>"
            f"<p class='meta'>{escape(v['path'])} · {v['duration']:.1f} s · {len(events)} events</p>"
        )
        if vid in summaries:
            parts.append(f"<p class='sum'><b>Summary.</b> {escape(summaries[vid])}</p>")
        parts.append(timeline(events, float(v["duration"])))
        rows = "".join(
            f"<tr><td class='n'>{e['timestamp'][0]:.1f}</td><td class='n'>{e['timestamp'][1]:.1f}</td>"
            f"<td>{escape(e['sentence'])}</td><td class='n'>{float(e.get('proposal_score', 0)):.3f}</td></tr>"
            for e in events
        )
        parts.append(
            f"<table><tr><th>start (s)</th><th>end (s)</th><th>caption</th><th>score</th></tr>{rows}</table>"
        )
        if vid in segments:
            seg = "".join(
                f"<tr><td class='n'>{e['start_sec']:.0f}</td><td class='n'>{e['end_sec']:.0f}</td>"
                f"<td>{escape(e['segment_description'])}</td></tr>"
                for e in segments[vid]
            )
            parts.append(
                f"<h3>Segments</h3><table><tr><th>start</th><th>end</th><th>description</th></tr>{seg}</table>"
            )
        if vid in clips:
            cl = "".join(
                f"<tr><td class='n'>{s:.0f}</td><td class='n'>{t:.0f}</td><td>{escape(c)}</td></tr>"
                for s, t, c in clips[vid]
            )
            parts.append(
                f"<details><summary>{len(clips[vid])} clip captions</summary><table>{cl}</table></details>"
            )
    if failed:
        items = "".join(f"<li><b>{escape(p)}</b>: {escape(r)}</li>" for p, r in sorted(failed.items()))
        parts.append(f"<h2 class='bad'>Not captioned</h2><ul>{items}</ul>")
    parts.append("</body></html>\n")
    return "".join(parts)
