"""Stage `report`: one self-contained page, reports/index.html, from what the pipeline computed.

    python -m stages.report

Reads metrics/*.json (every family's table: vidmem/report/families.py), dvclive/<model>/plots/metrics/**.tsv
(every training curve), the evaluate stages' predictions (data/predictions/), the manifest (ground truth) and
data/compressed/ (thumbnails, cut by ffmpeg). Writes reports/index.html with every image inline (JPEG data
URIs) and nothing fetched from the network; a section whose inputs are absent says "not computed".
"""

from __future__ import annotations

import base64
import csv
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidmem.common import UserError, atomic_dir, load_params, read_json, read_jsonl, run_stage, write_text
from vidmem.manifest import Manifest
from vidmem.params import bounded, read
from vidmem.paths import Paths
from vidmem.report.families import FAMILIES, load_tables
from vidmem.report.page import (
    Candidate,
    Curves,
    GroundingExample,
    HierarchyExample,
    HierarchyLevel,
    ReportData,
    RetrievalExample,
    Thumb,
    VideoTimeline,
    render,
)
from vidmem.report.svg import Series, Span, Track

log = logging.getLogger("stages.report")

OUT = Path("reports")


@dataclass
class ReportConfig:
    title: str = "vidmem report"
    videos: int = bounded(4, lo=0)  # test videos with a dense-caption timeline
    thumbs: int = bounded(6, lo=0)  # thumbnails per timeline (evenly spaced)
    thumb_width: int = bounded(112, lo=16)  # px
    grounding: int = bounded(5, lo=0)  # grounding examples (first query of that many test videos)
    retrieval: int = bounded(4, lo=0)  # retrieval examples (queries spread over the test captions)
    top_k: int = bounded(5, lo=1)  # candidates shown per retrieval query
    hierarchy_video: str = ""  # the long test video whose hierarchy is shown ("": the first)
    dense_models: tuple[str, ...] = ("cm2", "pdvc", "dense_trivial")  # timeline tracks, contribution first
    grounding_models: tuple[str, ...] = ("mrnet", "mmn", "mrnet_speech", "grounding_prior")
    retrieval_models: tuple[str, ...] = ("emcl", "meanp", "retrieval_chance")  # the first ranks the top k


# ------------------------------------------------------------------------------------------------- thumbnails
class Thumbnails:
    """JPEG frames of data/compressed/<video>.mp4 at given times, cut by ffmpeg, as data URIs (cached)."""

    def __init__(self, paths: Paths, width: int):
        self.paths, self.width = paths, width
        self.cache: dict[tuple[str, float], Thumb | None] = {}
        self.failed: list[str] = []
        if shutil.which("ffmpeg") is None:
            raise UserError("ffmpeg not found; run `make install` (it installs ffmpeg)")

    def _uri(self, jpeg: bytes, t: float) -> Thumb:
        return Thumb(t, "data:image/jpeg;base64," + base64.b64encode(jpeg).decode())

    def _cmd(self, path: Path, seeks: Sequence[float], outs: Sequence[str]) -> list[str]:
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
        for t in seeks:
            cmd += ["-ss", f"{t:.3f}", "-i", f"file:{path}"]
        for i, out in enumerate(outs):
            cmd += ["-map", f"{i}:v:0", "-frames:v", "1", "-vf", f"scale={self.width}:-2", "-q:v", "6", out]
        return cmd

    def _cut(self, video_id: str, times: Sequence[float]) -> dict[float, Thumb | None]:
        """Every frame of one video in one ffmpeg run (one seeking input per time); a time that yields no
        frame (a seek at the very end) is retried 1 s earlier, then at 0."""
        path = self.paths.compressed_video(video_id)
        if not path.is_file():
            self.failed.append(f"{path}: not found")
            return dict.fromkeys(times)
        got: dict[float, Thumb | None] = {}
        with tempfile.TemporaryDirectory(prefix="vidmem-thumbs-") as tmp:
            outs = [str(Path(tmp) / f"{i}.jpg") for i in range(len(times))]
            proc = subprocess.run(self._cmd(path, times, outs), capture_output=True, timeout=300, check=False)
            for t, out in zip(times, outs):
                if Path(out).is_file() and Path(out).stat().st_size:
                    got[t] = self._uri(Path(out).read_bytes(), t)
            for t in (t for t in times if t not in got):
                for seek in (max(t - 1.0, 0.0), 0.0):
                    one = str(Path(tmp) / "retry.jpg")
                    retry = subprocess.run(
                        self._cmd(path, [seek], [one]), capture_output=True, timeout=60, check=False
                    )
                    if retry.returncode == 0 and Path(one).is_file() and Path(one).stat().st_size:
                        got[t] = self._uri(Path(one).read_bytes(), t)
                        break
                else:
                    got[t] = None
                    self.failed.append(
                        f"{path} at {t:.1f} s: "
                        f"{proc.stderr.decode(errors='replace').strip()[-200:] or 'no frame'}"
                    )
        return got

    def get(self, wanted: Sequence[tuple[str, float]]) -> list[Thumb | None]:
        """Thumbnails at (video, time) pairs, in order (None where ffmpeg found no frame)."""
        keys = [(v, round(float(t), 2)) for v, t in wanted]
        todo: dict[str, list[float]] = {}
        for v, t in dict.fromkeys(keys):
            if (v, t) not in self.cache:
                todo.setdefault(v, []).append(t)
        with ThreadPoolExecutor(2) as pool:
            for v, got in zip(todo, pool.map(lambda v: self._cut(v, todo[v]), todo)):
                self.cache.update({(v, t): th for t, th in got.items()})
        return [self.cache[k] for k in keys]

    def strip(self, video_id: str, duration: float, n: int) -> list[Thumb]:
        times = [(i + 0.5) * duration / n for i in range(n)] if n and duration > 0 else []
        return [t for t in self.get([(video_id, x) for x in times]) if t is not None]


# ---------------------------------------------------------------------------------------------------- curves
def read_tsv(path: Path) -> Series | None:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if len(rows) < 2 or len(rows[0]) < 2:
        return None
    head = rows[0]
    xi, yi = (head.index("step") if "step" in head else 0), len(head) - 1
    xs, ys = [], []
    for r in rows[1:]:
        try:
            xs.append(float(r[xi]))
            ys.append(float(r[yi]))
        except (ValueError, IndexError):
            continue
    return Series(path.parent.name, xs, ys)


def collect_curves(dvclive: Path) -> list[Curves]:
    """Per model folder under dvclive/, one chart per metric name: its train/, val/ ... series together."""
    out = []
    for model_dir in sorted(p for p in dvclive.glob("*") if (p / "plots" / "metrics").is_dir()):
        root = model_dir / "plots" / "metrics"
        charts: dict[str, list[Series]] = {}
        for tsv in sorted(root.rglob("*.tsv")):
            s = read_tsv(tsv)
            if s is None:
                continue
            rel = tsv.relative_to(root)
            s.name = rel.parent.as_posix() if rel.parent.as_posix() != "." else tsv.stem
            charts.setdefault(tsv.stem, []).append(s)
        if charts:
            out.append(
                Curves(model_dir.name, sorted(charts.items(), key=lambda kv: (kv[0] != "loss", kv[0])))
            )
    return out


# --------------------------------------------------------------------------------------------------- sections
def _durations(manifest: Manifest) -> dict[str, float]:
    return {v.video_id: float(v.duration or 0.0) for v in manifest.videos}


def dense_timelines(
    cfg: ReportConfig, paths: Paths, manifest: Manifest, thumbs: Thumbnails
) -> list[VideoTimeline]:
    preds = {}
    for m in cfg.dense_models:
        p = paths.predictions / f"{m}.json"
        if p.is_file():
            preds[m] = read_json(p).get("results", {})
    truth: dict[str, dict[int, list[Span]]] = {}
    for e in manifest.events:
        if e.split == "test":
            truth.setdefault(e.video_id, {}).setdefault(e.annotator, []).append(
                Span(e.start, e.end, e.sentence)
            )
    if not truth and not preds:
        return []
    durations = _durations(manifest)
    vids = sorted(truth or next(iter(preds.values()), {}))[: cfg.videos]
    out = []
    for vid in vids:
        tracks = [
            Track(f"truth (ref {a + 1})", spans, "truth") for a, spans in sorted(truth.get(vid, {}).items())
        ]
        for i, (m, res) in enumerate(preds.items()):
            spans = [
                Span(
                    float(r["timestamp"][0]),
                    float(r["timestamp"][1]),
                    str(r.get("sentence", "")),
                    r.get("proposal_score"),
                )
                for r in res.get(vid, [])
            ]
            tracks.append(Track(m, spans, "best" if i == 0 else ("base" if i == 1 else "pred")))
        dur = durations.get(vid) or max((s.end for t in tracks for s in t.spans), default=1.0)
        out.append(VideoTimeline(vid, dur, thumbs.strip(vid, dur, cfg.thumbs), tracks))
    return out


def grounding_examples(
    cfg: ReportConfig, paths: Paths, manifest: Manifest, thumbs: Thumbnails
) -> list[GroundingExample]:
    from models.grounding.data import manifest_queries  # the family's own reading of the query table

    root = paths.predictions / "grounding"
    # keyed by (video, query text): a spoken-query model numbers its queries in its own source's order
    preds: dict[str, dict[tuple[str, str], tuple[float, float, float]]] = {}
    for m in cfg.grounding_models:
        p = root / f"{m}.jsonl"
        if p.is_file():
            preds[m] = {}
            for r in read_jsonl(p):
                if r.get("pred_relevant_windows"):
                    preds[m].setdefault((r["vid"], r["query"]), tuple(r["pred_relevant_windows"][0]))
    if not preds:
        return []
    queries = manifest_queries(manifest, "test", speech=False)
    durations = _durations(manifest)
    out = []
    for vid in sorted(queries)[: cfg.grounding]:
        q = queries[vid][0]
        got = {m: p[(vid, q.query)] for m, p in preds.items() if (vid, q.query) in p}
        if not got:
            continue
        dur = durations.get(vid) or max(q.end, *(e for _, e, _ in got.values()))
        out.append(
            GroundingExample(
                vid,
                dur,
                q.query,
                (q.start, q.end),
                got,
                thumbs.strip(vid, dur, max(cfg.thumbs - 2, 1) if cfg.thumbs else 0),
            )
        )
    return out


def retrieval_examples(
    cfg: ReportConfig, paths: Paths, manifest: Manifest, thumbs: Thumbnails
) -> list[RetrievalExample]:
    root = paths.predictions / "retrieval"
    models = [m for m in cfg.retrieval_models if (root / f"{m}.npy").is_file()]
    if not models or cfg.retrieval == 0:
        return []
    sims = {m: np.load(root / f"{m}.npy") for m in models}
    rows = read_json(root / f"{models[0]}.rows.json")
    cols = read_json(root / f"{models[0]}.cols.json")
    col_of = {v: j for j, v in enumerate(cols)}
    durations = _durations(manifest)
    picks = (
        sorted(set(np.linspace(0, len(rows) - 1, cfg.retrieval).round().astype(int).tolist())) if rows else []
    )
    out = []
    for i in picks:
        row = rows[i]
        true = row["video_id"]
        ranks = {}
        for m, s in sims.items():
            if true in col_of and s.shape == (len(rows), len(cols)):
                ranks[m] = int((s[i] > s[i, col_of[true]]).sum()) + 1
        order = np.argsort(-sims[models[0]][i], kind="stable")[: cfg.top_k]
        got = thumbs.get([(cols[j], durations.get(cols[j], 2.0) / 2) for j in order])  # the middle frame
        top = [
            Candidate(cols[j], float(sims[models[0]][i, j]), cols[j] == true, t) for j, t in zip(order, got)
        ]
        out.append(RetrievalExample(row.get("sentence", ""), true, models[0], top, ranks))
    return out


def _recap_level(path: Path, level: str) -> dict[str, str]:
    return dict(read_json(path).get(level, {})) if path.is_file() else {}


def hierarchy_example(
    cfg: ReportConfig, paths: Paths, manifest: Manifest, thumbs: Thumbnails
) -> HierarchyExample | None:
    from models.recap.data import key_of  # the family's window key: "<vid>@<start>-<end>"

    root = paths.predictions / "recap"
    levels = {
        "clip": ("recap_clip", "clip"),
        "segment": ("recap_segment", "segment"),
        "video": ("recap_video", "video"),
    }
    pred = {lv: _recap_level(root / f"{m}.json", key) for lv, (m, key) in levels.items()}
    truth: dict[str, dict[str, tuple[float, float, str]]] = {lv: {} for lv in levels}
    for h in manifest.hierarchy:
        if h.split == "test" and h.level in truth:
            truth[h.level][key_of(h.video_id, h.start, h.end)] = (h.start, h.end, h.text)
    vids = sorted({k.rsplit("@", 1)[0] for lv in ("video", "segment") for k in (pred[lv] or truth[lv])})
    if not vids or not any(pred.values()):
        return None
    vid = cfg.hierarchy_video or vids[0]
    if vid not in vids:
        raise UserError(
            f"params.yaml report.hierarchy_video: '{vid}' has no test hierarchy (one of: "
            f"{', '.join(vids[:5])}{' …' if len(vids) > 5 else ''})"
        )

    def windows(level: str) -> list[HierarchyLevel]:
        keys = {k for k in (*pred[level], *truth[level]) if k.rsplit("@", 1)[0] == vid}
        out = []
        for k in keys:
            if k in truth[level]:
                s, e, t = truth[level][k]
            else:
                s, e = (float(x) for x in k.rsplit("@", 1)[1].split("-"))
                t = None
            out.append(HierarchyLevel(s, e, pred[level].get(k), t))
        return sorted(out, key=lambda w: w.start)

    truths = [w.truth for w in windows("video") if w.truth]
    summaries = {"ground truth": truths[0]} if truths else {}
    for m in ("recap_video", "recapu", "recap_flat"):
        for k, text in _recap_level(root / f"{m}.json", "video").items():
            if k.rsplit("@", 1)[0] == vid:
                summaries[m] = text
    duration = _durations(manifest).get(vid) or max((w.end for w in windows("clip")), default=0.0)
    segs = windows("segment")
    strip = thumbs.get([(vid, (w.start + w.end) / 2) for w in segs]) if cfg.thumbs else []
    return HierarchyExample(
        vid,
        duration,
        summaries,
        segs,
        windows("clip"),
        [t for t in strip if t],
        {lv: m for lv, (m, _) in levels.items() if pred[lv]},
    )


# ---------------------------------------------------------------------------------------------------- main
def build(cfg: ReportConfig, paths: Paths) -> ReportData:
    tables = load_tables(paths.metrics, FAMILIES)
    notes: dict[str, str] = {}
    manifest_dir = paths.manifest
    if (manifest_dir / "videos.jsonl").is_file():
        manifest = Manifest.read(manifest_dir)
    else:
        manifest = Manifest()
        for s in ("timelines", "grounding", "hierarchy"):
            notes[s] = f"not computed: {manifest_dir} (the ground truth) is absent"
    thumbs = Thumbnails(paths, cfg.thumb_width)
    data = ReportData(
        cfg.title,
        tables,
        collect_curves(paths.dvclive),
        dense_timelines(cfg, paths, manifest, thumbs),
        grounding_examples(cfg, paths, manifest, thumbs) if manifest.queries else [],
        retrieval_examples(cfg, paths, manifest, thumbs),
        hierarchy_example(cfg, paths, manifest, thumbs) if manifest.hierarchy else None,
        notes,
    )
    done = sum(t.computed for t in tables)
    data.footer = (
        f"{done} of {len(tables)} families computed; {len(data.curves)} models with training curves; "
        "test split"
    )
    for f in thumbs.failed:
        log.warning("thumbnail: %s", f)
    return data


def main() -> None:
    params = load_params()
    cfg = read(ReportConfig, params.get("report"), "report")
    paths = Paths()
    data = build(cfg, paths)
    html = render(data)
    with atomic_dir(OUT) as tmp:
        write_text(tmp / "index.html", html)
    log.info("report: %s (%.0f kB): %s", OUT / "index.html", len(html) / 1024, data.footer)


if __name__ == "__main__":
    run_stage(main)
