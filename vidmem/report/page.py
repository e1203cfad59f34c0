"""The report page: one self-contained HTML file (CSS, SVG and JPEG thumbnails inline; a
Content-Security-Policy forbids every network fetch). `render(ReportData)` → HTML text; every section says
"not computed" when its inputs are absent, so a partial pipeline still gets a page.

The page's only script marks the body when it has loaded (`data-report="loaded"`) and counts script errors
(`data-errors`), so a headless browser's `--dump-dom` can check both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from vidmem.report.families import NOT_COMPUTED, FamilyTable, fmt
from vidmem.report.svg import PALETTE, Series, Span, Track, line_chart, timeline

SECTIONS = ("metrics", "curves", "timelines", "grounding", "retrieval", "hierarchy")


@dataclass
class Thumb:
    time: float
    uri: str  # data:image/jpeg;base64,...


@dataclass
class Curves:
    model: str
    charts: list[tuple[str, list[Series]]]  # (metric, its series: train / val / ...)


@dataclass
class VideoTimeline:
    video_id: str
    duration: float
    thumbs: list[Thumb]
    tracks: list[Track]


@dataclass
class GroundingExample:
    video_id: str
    duration: float
    query: str
    truth: tuple[float, float]
    predictions: dict[str, tuple[float, float, float]]  # model → top-1 (start, end, score)
    thumbs: list[Thumb] = field(default_factory=list)


@dataclass
class Candidate:
    video_id: str
    score: float
    is_true: bool
    thumb: Thumb | None


@dataclass
class RetrievalExample:
    query: str
    true_video: str
    model: str
    top: list[Candidate]
    ranks: dict[str, int]  # model → rank of the true video (1 = first)


@dataclass
class HierarchyLevel:
    start: float
    end: float
    predicted: str | None
    truth: str | None


@dataclass
class HierarchyExample:
    video_id: str
    duration: float
    summaries: dict[str, str]  # source (model or "ground truth") → summary
    segments: list[HierarchyLevel]
    clips: list[HierarchyLevel]
    thumbs: list[Thumb] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)  # level → model that wrote its predictions


@dataclass
class ReportData:
    title: str
    tables: list[FamilyTable]
    curves: list[Curves] = field(default_factory=list)
    videos: list[VideoTimeline] = field(default_factory=list)
    grounding: list[GroundingExample] = field(default_factory=list)
    retrieval: list[RetrievalExample] = field(default_factory=list)
    hierarchy: HierarchyExample | None = None
    notes: dict[str, str] = field(default_factory=dict)  # section → why it is empty or partial
    footer: str = ""


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:14px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b8c0cc}nav a{color:#9cc3ff;margin-right:14px;text-decoration:none}
main{padding:8px 28px 40px;max-width:1280px}section{background:#fff;border-radius:8px;padding:12px 18px;
margin:16px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}h2{font-size:18px;margin:4px 0 10px}h3{font-size:15px;
margin:14px 0 6px}table{border-collapse:collapse;margin:6px 0 4px;font-variant-numeric:tabular-nums}
th,td{padding:3px 9px;border-bottom:1px solid #e3e6ea;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{background:#f0f2f5;font-weight:600}
tr.method td:first-child{font-weight:600}tr.baseline td{color:#34495e}tr.floor td{color:#7a8594}
tr.paper td{color:#6d5d2a;background:#fffbea;font-style:italic}td.best{font-weight:700;color:#0b6b2e}
.na{color:#a33;font-style:italic}.note{color:#667;font-size:12.5px;margin:2px 0 8px}
.charts{display:flex;flex-wrap:wrap;gap:6px}.chart{background:#fff}
.ct{font-size:11.5px;font-weight:600;fill:#333}.cx,.cy{font-size:9.5px;fill:#666}.cy{text-anchor:end}
.cx{text-anchor:middle}.cl{font-size:9.5px}.cn{font-size:11px;fill:#a33}.cf{fill:#fafbfc;stroke:#dde}
.cg{stroke:#e8e8ee;stroke-width:1}.tl{font-size:11px;fill:#333}.tb{fill:#f7f8fa}.tm{stroke:#555;stroke-width:1.5}
.ev{stroke:rgba(0,0,0,.25)}.ev.truth{fill:#7fb8e6}.ev.pred{fill:#f2a65a}.ev.best{fill:#8fd19e}
.ev.base{fill:#c9a3e6}.et{font-size:9.5px;fill:#1d2330;pointer-events:none}
.thumbs{display:flex;gap:4px;margin:4px 0 2px 150px;width:740px}.thumbs figure{flex:1;margin:0;min-width:0;
text-align:center;font-size:10px;color:#666}.thumbs img{display:block;width:100%;height:72px;
object-fit:contain;background:#222;border-radius:3px}.thumbs.free{margin-left:0;width:auto}
.thumbs.free figure{flex:none;width:120px}
.cands{display:flex;gap:8px;flex-wrap:wrap;align-items:flex-start}.cand{text-align:center;font-size:11px;
border:3px solid transparent;border-radius:6px;padding:2px}.cand.true{border-color:#1a9e3f}
.cand img{display:block;width:120px;height:84px;object-fit:contain;background:#222;border-radius:3px}
.cand .t{color:#1a9e3f;font-weight:700}tr.paper td:first-child{white-space:normal;max-width:330px}
.q{font-weight:600}.tree{margin:4px 0 0 0;padding-left:0;list-style:none}.tree li{margin:3px 0}
.tree ul{list-style:none;padding-left:22px;border-left:2px solid #dfe3ea;margin:4px 0 8px 6px}
.time{color:#667;font-variant-numeric:tabular-nums;margin-right:6px}.gt{color:#2a6f9e}.pr{color:#b35c00}
.legend span{display:inline-block;padding:0 8px;border-radius:3px;margin-right:6px;font-size:12px}
"""

# In <head>, before anything else runs: counts every script error of the page, marks the body on load.
SCRIPT = """
(function(){var errors=0;function mark(){var b=document.body;if(b){b.dataset.errors=String(errors);}}
window.addEventListener("error",function(){errors+=1;mark();},true);
window.addEventListener("load",function(){var b=document.body;mark();b.dataset.report="loaded";
b.dataset.sections=String(document.querySelectorAll("section[id]").length);});})();
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _na(what: str) -> str:
    return f'<p class="na">{escape(what)}</p>'


def _time(s: float, e: float) -> str:
    return f'<span class="time">{s:.1f}–{e:.1f} s</span>'


def _thumbs(thumbs: Sequence[Thumb], offset: bool = True) -> str:
    """A strip of frames; `offset`: aligned under a timeline (evenly spaced frames sit above their times)."""
    if not thumbs:
        return ""
    figs = "".join(
        f'<figure><img src="{t.uri}" alt="frame at {t.time:.1f} s">{t.time:.1f} s</figure>' for t in thumbs
    )
    return f'<div class="thumbs{"" if offset else " free"}">{figs}</div>'


def _is_best(value: float | None, best: float | None) -> bool:
    return value is not None and value == best


def metrics_section(tables: Sequence[FamilyTable]) -> str:
    out = [
        '<section id="metrics"><h2>Metrics (test split)</h2>',
        (
            '<p class="note">Each family: its contribution, the baseline it must beat and a floor, then the '
            "papers' numbers on their datasets for scale (italic; different data, features and model sizes: "
            "not a comparison).</p>"
        ),
    ]
    for t in tables:
        fam = t.family
        out.append(f'<h3 id="family-{escape(fam.key)}">{escape(fam.title)}</h3>')
        if not t.computed:
            out.append(
                _na(f"{NOT_COMPUTED}: " + ", ".join(t.missing or [f"metrics/{s}.json" for s in fam.files]))
            )
            continue
        if fam.note:
            out.append(f'<p class="note">{escape(fam.note)}</p>')
        best = {}
        for c in t.columns:
            vals = [r.values[c.key] for r in t.rows if r.present and r.values.get(c.key) is not None]
            if len(vals) > 1:
                best[c.key] = min(vals) if c.lower_is_better else max(vals)
        head = "".join(f"<th>{escape(c.label)}</th>" for c in t.columns)
        out.append(
            f'<table class="family" data-family="{escape(fam.key)}"><tr><th>model</th>{head}'
            "<th>role</th></tr>"
        )
        for r in t.rows:
            if not r.present:
                cells = f'<td colspan="{len(t.columns)}" class="na">{NOT_COMPUTED}</td>'
            else:
                cells = "".join(
                    f'<td{" class=best" if _is_best(r.values[c.key], best.get(c.key)) else ""}>'
                    f"{fmt(r.values[c.key], c.digits)}</td>"
                    for c in t.columns
                )
            out.append(
                f'<tr class="{escape(r.role)}" data-row="{escape(r.name)}"><td>{escape(r.label)}</td>'
                f"{cells}<td>{escape(r.role)}</td></tr>"
            )
        for p in t.papers:
            cells = "".join(f"<td>{fmt(p.values.get(c.key), c.digits)}</td>" for c in t.columns)
            out.append(
                f'<tr class="paper"><td title="{escape(p.source)}">{escape(p.label)}, '
                f"{escape(p.dataset)}</td>{cells}<td>paper</td></tr>"
            )
        out.append("</table>")
        if t.papers:
            out.append(
                '<p class="note">Paper rows from: '
                + "; ".join(dict.fromkeys(escape(p.source) for p in t.papers))
                + "</p>"
            )
        if t.missing:
            out.append(_na(f"{NOT_COMPUTED}: " + ", ".join(t.missing)))
    out.append("</section>")
    return "".join(out)


def curves_section(curves: Sequence[Curves], note: str = "") -> str:
    out = ['<section id="curves"><h2>Training curves (DVCLive)</h2>']
    if not curves:
        out.append(_na(note or f"{NOT_COMPUTED}: no dvclive/<model>/plots/metrics"))
    for c in curves:
        out.append(f'<h3 data-model="{escape(c.model)}">{escape(c.model)}</h3><div class="charts">')
        out += [line_chart(title, series) for title, series in c.charts]
        out.append("</div>")
    out.append("</section>")
    return "".join(out)


LEGEND = (
    '<p class="legend"><span class="ev truth" style="background:#7fb8e6">ground truth</span>'
    '<span style="background:#f2a65a">prediction</span><span style="background:#8fd19e">the family\'s '
    'contribution</span><span style="background:#c9a3e6">baseline</span> (hover a bar for its text)</p>'
)


def timelines_section(videos: Sequence[VideoTimeline], note: str = "") -> str:
    out = ['<section id="timelines"><h2>Dense captions: true vs predicted events per test video</h2>', LEGEND]
    if not videos:
        out.append(_na(note or f"{NOT_COMPUTED}: no dense-captioning predictions"))
    for v in videos:
        out.append(
            f'<h3 data-video="{escape(v.video_id)}">{escape(v.video_id)} '
            f'<span class="time">{v.duration:.1f} s</span></h3>'
        )
        out.append(_thumbs(v.thumbs))
        out.append(timeline(v.duration, v.tracks, marks=[t.time for t in v.thumbs]))
        rows = []
        for t in v.tracks:
            for s in sorted(t.spans, key=lambda s: s.start):
                cls = "gt" if t.kind == "truth" else "pr"
                rows.append(
                    f'<tr><td>{escape(t.label)}</td><td>{s.start:.1f}</td><td>{s.end:.1f}</td>'
                    f'<td style="text-align:left" class="{cls}">{escape(s.text)}</td></tr>'
                )
        out.append(
            "<details><summary>every event as text</summary><table><tr><th>track</th><th>start</th>"
            "<th>end</th><th>sentence</th></tr>" + "".join(rows) + "</table></details>"
        )
    out.append("</section>")
    return "".join(out)


def grounding_section(examples: Sequence[GroundingExample], note: str = "") -> str:
    out = ['<section id="grounding"><h2>Moment retrieval: query → predicted vs true moment</h2>', LEGEND]
    if not examples:
        out.append(_na(note or f"{NOT_COMPUTED}: no grounding predictions"))
    for ex in examples:
        tracks = [Track("ground truth", [Span(*ex.truth, ex.query)], "truth")]
        for i, (model, (s, e, score)) in enumerate(ex.predictions.items()):
            tracks.append(
                Track(f"{model} (top 1)", [Span(s, e, ex.query, score)], "best" if i == 0 else "base")
            )
        preds = "; ".join(f"{escape(m)} {s:.1f}–{e:.1f} s" for m, (s, e, _) in ex.predictions.items())
        out.append(
            f'<h3 class="q" data-video="{escape(ex.video_id)}">“{escape(ex.query)}”</h3>'
            f'<p class="note">{escape(ex.video_id)}: true {ex.truth[0]:.1f}–{ex.truth[1]:.1f} s; {preds}</p>'
        )
        out.append(_thumbs(ex.thumbs))
        out.append(timeline(ex.duration, tracks, marks=[t.time for t in ex.thumbs]))
    out.append("</section>")
    return "".join(out)


def retrieval_section(examples: Sequence[RetrievalExample], note: str = "") -> str:
    out = ['<section id="retrieval"><h2>Text → video retrieval: top 5 (the true video framed green)</h2>']
    if not examples:
        out.append(_na(note or f"{NOT_COMPUTED}: no retrieval predictions"))
    for ex in examples:
        ranks = ", ".join(f"{escape(m)}: rank {r}" for m, r in ex.ranks.items())
        out.append(
            f'<h3 class="q">“{escape(ex.query)}”</h3><p class="note">true video {escape(ex.true_video)} — '
            f"{ranks}; candidates ranked by {escape(ex.model)}</p><div class=\"cands\">"
        )
        for i, c in enumerate(ex.top, 1):
            img = f'<img src="{c.thumb.uri}" alt="{escape(c.video_id)}">' if c.thumb else ""
            mark = ' <span class="t">✔ true</span>' if c.is_true else ""
            out.append(
                f'<div class="cand{" true" if c.is_true else ""}" data-video="{escape(c.video_id)}">{img}'
                f"#{i} {escape(c.video_id)}{mark}<br>{c.score:.3f}</div>"
            )
        out.append("</div>")
    out.append("</section>")
    return "".join(out)


def _level(text: str | None, truth: str | None) -> str:
    p = f'<span class="pr">{escape(text)}</span>' if text else '<span class="na">no prediction</span>'
    t = f' <br><span class="gt">truth: {escape(truth)}</span>' if truth else ""
    return p + t


def hierarchy_section(ex: HierarchyExample | None, note: str = "") -> str:
    out = ['<section id="hierarchy"><h2>One long video\'s hierarchy: clip captions → segments → summary</h2>']
    if ex is None:
        out.append(_na(note or f"{NOT_COMPUTED}: no ReCap predictions"))
        out.append("</section>")
        return "".join(out)
    models = ", ".join(f"{lv}: {m}" for lv, m in ex.models.items())
    out.append(
        f'<h3 data-video="{escape(ex.video_id)}">{escape(ex.video_id)} '
        f'<span class="time">{ex.duration:.0f} s</span></h3>'
        f'<p class="note">predicted (orange) by {escape(models)}; '
        "ground truth in blue</p>"
    )
    out.append(_thumbs(ex.thumbs, offset=False))
    out.append('<ul class="tree"><li><b>summary</b><ul>')
    for src, text in ex.summaries.items():
        cls = "gt" if src == "ground truth" else "pr"
        out.append(
            f'<li><span class="time">{escape(src)}</span><span class="{cls}">{escape(text)}</span></li>'
        )
    out.append("</ul></li>")
    for seg in ex.segments:
        out.append(f"<li>{_time(seg.start, seg.end)}<b>segment</b> {_level(seg.predicted, seg.truth)}<ul>")
        for c in ex.clips:
            if seg.start - 1e-6 <= c.start < seg.end - 1e-6:
                out.append(f"<li>{_time(c.start, c.end)}{_level(c.predicted, c.truth)}</li>")
        out.append("</ul></li>")
    out.append("</ul></section>")
    return "".join(out)


def render(data: ReportData) -> str:
    nav = "".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS)
    body = [
        metrics_section(data.tables),
        curves_section(data.curves, data.notes.get("curves", "")),
        timelines_section(data.videos, data.notes.get("timelines", "")),
        grounding_section(data.grounding, data.notes.get("grounding", "")),
        retrieval_section(data.retrieval, data.notes.get("retrieval", "")),
        hierarchy_section(data.hierarchy, data.notes.get("hierarchy", "")),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{escape(data.title)}</title><script>{SCRIPT}</script><style>{CSS}</style></head>"
        f'<body data-report="loading"><header><h1>{escape(data.title)}</h1><p>{escape(data.footer)}</p>'
        f"<nav>{nav}</nav></header><main>{''.join(body)}</main></body></html>\n"
    )


__all__ = [
    "PALETTE",
    "SECTIONS",
    "Candidate",
    "Curves",
    "GroundingExample",
    "HierarchyExample",
    "HierarchyLevel",
    "ReportData",
    "RetrievalExample",
    "Thumb",
    "VideoTimeline",
    "render",
]
