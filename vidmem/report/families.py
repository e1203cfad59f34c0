"""What the report and the end-of-repro table show per method family: the metrics file(s) its evaluate stages
write, the rows (model, baseline, floor) and columns of its table, its headline metric, and the papers'
numbers for scale.

A new family plugs in with one `Family` entry in `FAMILIES` (and its paper rows in `PAPERS`); a family whose
metrics files are absent is shown as "not computed". A family may leave `rows` / `columns` empty: then every
top-level entry of its one metrics file is a row and every number in it a column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOT_COMPUTED = "not computed"


@dataclass(frozen=True)
class Column:
    key: str  # a key of the row ("clip/CIDEr" flat, or "t2v/R1" nested: the flat key is tried first)
    label: str
    scale: float = 100.0  # display = value × scale (fractions → ×100, as the papers print them)
    digits: int = 2
    lower_is_better: bool = False


@dataclass(frozen=True)
class Row:
    name: str  # the model / baseline name (its key in a family file, or the file's stem)
    label: str
    role: str  # method | baseline | floor | variant
    file: str  # metrics/<file>.json
    path: str | None = None  # the row inside the file ("/"-separated); None: the name, or the whole file
    #                          when the file is named after the row
    # Column.key → the key this row reads it from (None: the row has no such value)
    keys: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Headline:
    column: str  # a Column.key
    method: str  # Row.name of the family's contribution
    baseline: str  # Row.name of the baseline it must beat
    label: str = ""  # the metric's name in the headline table (default: the column's label)


@dataclass(frozen=True)
class Family:
    key: str
    title: str
    files: tuple[str, ...]
    rows: tuple[Row, ...] = ()
    columns: tuple[Column, ...] = ()
    headline: Headline | None = None
    note: str = ""
    in_summary: bool = True  # a row in the end-of-repro headline table (False: no baseline to compare)


@dataclass(frozen=True)
class Paper:
    family: str
    label: str
    dataset: str
    values: Mapping[str, float]  # Column.key → the number as the paper prints it (display units)
    source: str  # where the number is recorded (/work/shared/reference notes name the paper)


_DENSE_COLS = tuple(
    Column(k, lab)
    for k, lab in (
        ("METEOR", "METEOR"),
        ("METEOR_2021", "METEOR 2021"),
        ("CIDEr", "CIDEr"),
        ("Bleu_4", "BLEU-4"),
        ("ROUGE_L", "ROUGE-L"),
        ("SODA_c", "SODA_c"),
        ("Precision", "Precision"),
        ("Recall", "Recall"),
        ("F1", "F1"),
    )
)
_RET_COLS = (
    Column("t2v/R1", "t2v R@1", 1),
    Column("t2v/R5", "t2v R@5", 1),
    Column("t2v/R10", "t2v R@10", 1),
    Column("t2v/MedianR", "t2v MdR", 1, 1, True),
    Column("t2v/MeanR", "t2v MnR", 1, 1, True),
    Column("v2t/R1", "v2t R@1", 1),
    Column("v2t/R5", "v2t R@5", 1),
    Column("v2t/R10", "v2t R@10", 1),
)
_GRD_COLS = tuple(
    Column(k, k.replace(",", " "))
    for k in (
        "R@1,IoU@0.3",
        "R@1,IoU@0.5",
        "R@1,IoU@0.7",
        "R@5,IoU@0.3",
        "R@5,IoU@0.5",
        "R@5,IoU@0.7",
        "mIoU",
    )
)
_RECAP_COLS = tuple(
    Column(f"{lv}/{m}", f"{lv} {lab}")
    for lv in ("clip", "segment", "video")
    for m, lab in (("CIDEr", "C"), ("ROUGE_L", "R"), ("METEOR", "M"))
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "dense",
        "Dense video captioning: CM2 vs PDVC",
        ("cm2", "pdvc", "dense_trivial"),
        (
            Row("cm2", "CM2 (memory retrieval)", "method", "cm2"),
            Row("pdvc", "PDVC", "baseline", "pdvc"),
            Row("dense_trivial", "trivial (one whole-video event)", "floor", "dense_trivial"),
        ),
        _DENSE_COLS,
        Headline("METEOR", "cm2", "pdvc"),
        "densevid_eval at tIoU 0.3/0.5/0.7/0.9, ×100; METEOR = evaluate2018, METEOR 2021 = evaluate2021.",
    ),
    Family(
        "retrieval",
        "Text-video retrieval: EMCL vs CLIP4Clip meanP",
        ("retrieval",),
        (
            Row("emcl", "EMCL", "method", "retrieval"),
            Row("meanp", "CLIP4Clip meanP", "baseline", "retrieval"),
            Row("retrieval_chance", "chance", "floor", "retrieval"),
        ),
        _RET_COLS,
        Headline("t2v/R1", "emcl", "meanp"),
        "Recall in %, ranks: lower is better.",
    ),
    Family(
        "grounding",
        "Moment retrieval: MRNet vs MMN (text and speech queries)",
        ("grounding",),
        (
            Row("mrnet", "MRNet (text)", "method", "grounding"),
            Row("mmn", "MMN (text)", "baseline", "grounding"),
            Row("mrnet_speech", "MRNet (speech)", "variant", "grounding"),
            Row("grounding_prior", "prior only", "floor", "grounding"),
        ),
        _GRD_COLS,
        Headline("R@1,IoU@0.5", "mrnet", "mmn"),
        "R@k at IoU thresholds and mIoU, ×100.",
    ),
    Family(
        "recap",
        "Hierarchical captions of long videos: Video ReCap vs flat",
        ("recap",),
        (
            Row("recap_clip", "ReCap clip level", "method", "recap"),
            Row("recap_segment", "ReCap segment level", "method", "recap"),
            Row("recap_video", "ReCap video level", "method", "recap"),
            Row("recapu", "ReCap-U (one model)", "variant", "recap"),
            Row("recap_flat", "flat (features only)", "baseline", "recap"),
            Row("recap_trivial", "trivial (top train caption)", "floor", "recap"),
        ),
        _RECAP_COLS,
        Headline("video/CIDEr", "recap_video", "recap_flat", "video CIDEr"),
        "CIDEr (C), ROUGE-L (R), METEOR (M) per level, ×100.",
    ),
    Family(
        "clip",
        "CLIP tuning (val frame → sentence retrieval)",
        ("clip",),
        (
            Row("tuned", "tuned CLIP", "method", "clip", "val_tuned"),
            Row("untuned", "untuned CLIP", "baseline", "clip", "val_untuned"),
            Row("chance", "chance", "floor", "clip", "val_tuned", {"r1": "chance_r1", "r5": None}),
        ),
        (Column("r1", "R@1"), Column("r5", "R@5")),
        Headline("r1", "tuned", "untuned", "val R@1"),
        "Recall ×100 on the val split.",
    ),
    Family(
        "window",
        "Window tuning (val window → sentence retrieval)",
        ("window",),
        (
            Row("window", "window encoder", "method", "window", "val/window"),
            Row("frame_mean", "frame mean (= untrained)", "baseline", "window", "val/frame_mean"),
            Row("frame", "middle frame", "variant", "window", "val/frame"),
            Row("oracle", "colour+shape oracle", "variant", "window", "val/oracle_colour_shape"),
            Row("chance", "chance", "floor", "window", "val/chance"),
        ),
        (Column("r1", "R@1"), Column("r5", "R@5")),
        Headline("r1", "window", "frame_mean", "val R@1"),
        "Recall ×100 on the val split; the oracle reads only each event's colour and shape.",
    ),
    Family(
        "bank_precision",
        "CM2 memory: precision of what val windows retrieve (same meaning as an overlapping event)",
        ("bank",),
        (
            Row("frames", "frame-mean query (CM2)", "method", "bank", "precision/frames/meaning"),
            Row("window", "window-encoder query", "variant", "bank", "precision/window/meaning"),
            Row("random", "random draw of the bank", "floor", "bank", "precision/random/meaning"),
        ),
        (Column("p@1", "p@1"), Column("p@5", "p@5"), Column("p@20", "p@20")),
        note="Precision ×100 over CM2's 20 windows of each val video.",
        in_summary=False,
    ),
    Family(
        "bank",
        "CM2 memory bank",
        ("bank",),
        (Row("bank", "train event sentences", "method", "bank"),),
        (
            Column("sentences", "sentences", 1, 0),
            Column("distinct_sentences", "distinct", 1, 0),
            Column("videos", "videos", 1, 0),
        ),
        in_summary=False,
    ),
    # MemBridge: one metrics file (metrics/membridge.json), a table per downstream task.
    Family(
        "membridge_ret",
        "MemBridge retrieval: re-ranking the dual encoder's top 10 (bridges vs full attention)",
        ("membridge",),
        (
            Row("membridge_ret", "MemBridge (bridge tokens)", "method", "membridge"),
            Row("membridge_ret_base", "full attention, no bridge", "baseline", "membridge"),
            Row("membridge_dual", "dual encoder alone", "variant", "membridge"),
            Row("membridge_chance", "chance", "floor", "membridge"),
        ),
        _RET_COLS,
        Headline("t2v/R1", "membridge_ret", "membridge_ret_base", "re-rank t2v R@1"),
        "Recall in %, ranks: lower is better.",
    ),
    Family(
        "membridge_cap",
        "MemBridge captioning: prefix-LM beam search (bridges vs full attention)",
        ("membridge",),
        (
            Row("membridge_cap", "MemBridge (bridge tokens)", "method", "membridge", "membridge_cap/beam"),
            Row("membridge_cap_base", "full attention, no bridge", "baseline", "membridge", "membridge_cap_base/beam"),
            Row("membridge_top_caption", "top train caption", "floor", "membridge", "membridge_top_caption/beam"),
        ),
        tuple(Column(k, lab) for k, lab in (("CIDEr", "CIDEr"), ("METEOR", "METEOR"), ("Bleu_4", "BLEU-4"),
                                            ("ROUGE_L", "ROUGE-L"))),
        Headline("CIDEr", "membridge_cap", "membridge_cap_base", "caption CIDEr"),
        "×100, one video caption per test video (beam search).",
    ),
    Family(
        "membridge_qa",
        "MemBridge QA: answer classification over the closed answer set",
        ("membridge",),
        (
            Row("membridge_qa", "MemBridge (bridge tokens)", "method", "membridge"),
            Row("membridge_qa_base", "full attention, no bridge", "baseline", "membridge"),
            Row("membridge_top_answer", "most frequent answer", "floor", "membridge"),
        ),
        (Column("accuracy", "accuracy", 1),),
        Headline("accuracy", "membridge_qa", "membridge_qa_base", "QA accuracy"),
        "Accuracy in %.",
    ),
)

# The papers' numbers, for scale (different data, features and model sizes: not a comparison). Sources are the
# project's reference notes, which cite the papers and repositories they come from.
PAPERS: tuple[Paper, ...] = (
    Paper(
        "dense",
        "CM2 (paper, CLIP ViT-L/14)",
        "ActivityNet Captions val",
        {
            "METEOR": 8.55,
            "CIDEr": 33.01,
            "Bleu_4": 2.38,
            "SODA_c": 6.18,
            "Precision": 56.81,
            "Recall": 53.71,
            "F1": 55.21,
        },
        "reference/cm2_pdvc.md §5 (CM2, CVPR 2024, Tables 1–2)",
    ),
    Paper(
        "dense",
        "PDVC (README, TSP features)",
        "ActivityNet Captions val",
        {
            "METEOR": 8.37,
            "METEOR_2021": 9.03,
            "CIDEr": 31.14,
            "Bleu_4": 2.17,
            "SODA_c": 6.05,
            "Precision": 57.39,
            "Recall": 55.79,
        },
        "reference/cm2_pdvc.md §5 (PDVC README table)",
    ),
    Paper(
        "retrieval",
        "EMCL-Net (paper)",
        "MSR-VTT 1k-A",
        {
            "t2v/R1": 46.8,
            "t2v/R5": 73.1,
            "t2v/R10": 83.1,
            "t2v/MedianR": 2.0,
            "t2v/MeanR": 12.8,
            "v2t/R1": 46.5,
            "v2t/R5": 73.5,
            "v2t/R10": 83.5,
        },
        "reference/mrnet_emcl_membridge.md §2.4",
    ),
    Paper(
        "retrieval",
        "CLIP4Clip meanP",
        "MSR-VTT 1k-A",
        {
            "t2v/R1": 43.1,
            "t2v/R5": 70.4,
            "t2v/R10": 80.8,
            "t2v/MedianR": 2.0,
            "t2v/MeanR": 16.2,
            "v2t/R1": 43.1,
            "v2t/R5": 70.5,
            "v2t/R10": 81.2,
        },
        "reference/mrnet_emcl_membridge.md §2.4",
    ),
    Paper(
        "grounding",
        "UniSDNet (MRNet's sibling; MRNet's own table is not verified)",
        "Charades-STA (I3D)",
        {
            "R@1,IoU@0.5": 61.02,
            "R@1,IoU@0.7": 39.70,
            "R@5,IoU@0.5": 89.97,
            "R@5,IoU@0.7": 73.20,
            "mIoU": 52.69,
        },
        "reference/mrnet_emcl_membridge.md §1.4",
    ),
    Paper(
        "grounding",
        "UniSDNet, spoken queries",
        "ActivityNet Speech",
        {
            "R@1,IoU@0.3": 72.27,
            "R@1,IoU@0.5": 56.29,
            "R@1,IoU@0.7": 33.29,
            "R@5,IoU@0.5": 84.28,
            "R@5,IoU@0.7": 72.42,
            "mIoU": 52.22,
        },
        "reference/mrnet_emcl_membridge.md §1.4",
    ),
    Paper(
        "recap",
        "Video ReCap (paper)",
        "Ego4D-HCap",
        {
            "clip/CIDEr": 98.35,
            "clip/ROUGE_L": 48.77,
            "clip/METEOR": 28.28,
            "segment/CIDEr": 46.88,
            "segment/ROUGE_L": 39.73,
            "segment/METEOR": 18.55,
            "video/CIDEr": 29.34,
            "video/ROUGE_L": 32.64,
            "video/METEOR": 14.45,
        },
        "reference/recap_lavila.md (Video ReCap, CVPR 2024, Table 2)",
    ),
    Paper(
        "recap",
        "Video ReCap-U (paper)",
        "Ego4D-HCap",
        {
            "clip/CIDEr": 92.67,
            "clip/ROUGE_L": 47.90,
            "clip/METEOR": 28.08,
            "segment/CIDEr": 45.60,
            "segment/ROUGE_L": 39.33,
            "segment/METEOR": 18.17,
            "video/CIDEr": 31.06,
            "video/ROUGE_L": 33.32,
            "video/METEOR": 14.16,
        },
        "reference/recap_lavila.md (Video ReCap, CVPR 2024, Table 2)",
    ),
)


# ---------------------------------------------------------------------------------------------------- loading
@dataclass
class TableRow:
    name: str
    label: str
    role: str
    values: dict[str, float | None]  # Column.key → display value (None: not in the file)
    present: bool = True  # False: its metrics file (or its entry) is absent


@dataclass
class FamilyTable:
    family: Family
    columns: list[Column]
    rows: list[TableRow]
    missing: list[str]  # metrics files not found
    papers: list[Paper] = field(default_factory=list)

    @property
    def computed(self) -> bool:
        return any(r.present for r in self.rows)

    def row(self, name: str) -> TableRow | None:
        return next((r for r in self.rows if r.name == name), None)


def lookup(node: Any, key: str) -> Any:
    """`node[key]` for a flat key, else the nested path `key.split('/')`; None when absent."""
    if isinstance(node, Mapping) and key in node:
        return node[key]
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def numeric_leaves(node: Mapping[str, Any], prefix: str = "", depth: int = 2) -> dict[str, float]:
    """Every finite number of a row, nested keys joined with '/' (at most `depth` levels)."""
    out: dict[str, float] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and depth > 1:
            out.update(numeric_leaves(v, key + "/", depth - 1))
        elif (x := _number(v)) is not None:
            out[key] = x
    return out


def read_metrics(metrics_dir: Path, stem: str) -> Any | None:
    """metrics/<stem>.json, or None when it does not exist; unreadable JSON is an error naming the file."""
    path = Path(metrics_dir) / f"{stem}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_table(family: Family, metrics_dir: Path) -> FamilyTable:
    files = {stem: read_metrics(metrics_dir, stem) for stem in family.files}
    missing = [f"{Path(metrics_dir) / s}.json" for s, d in files.items() if d is None]
    specs: Sequence[Row] = family.rows
    if not specs:  # every entry of the family's one file is a row
        data = files.get(family.files[0]) if family.files else None
        specs = [
            Row(k, k, "method", family.files[0])
            for k, v in (data or {}).items()
            if isinstance(v, Mapping) and k != "toolchain"
        ]
    picked: list[tuple[Row, Mapping[str, Any] | None]] = []
    for spec in specs:
        data = files.get(spec.file)
        if data is None:
            picked.append((spec, None))
            continue
        path = spec.path if spec.path is not None else (spec.name if spec.name != spec.file else "")
        node = data if path == "" else lookup(data, path)
        picked.append((spec, node if isinstance(node, Mapping) else None))
    columns = list(family.columns)
    if not columns:
        keys: dict[str, None] = {}
        for _, node in picked:
            keys.update(dict.fromkeys(numeric_leaves(node or {})))
        columns = [Column(k, k, 1.0, 3) for k in keys]
    rows = []
    for spec, node in picked:
        values = {}
        for c in columns:
            key = spec.keys.get(c.key, c.key)
            v = _number(lookup(node, key)) if node is not None and key is not None else None
            values[c.key] = None if v is None else v * c.scale
        rows.append(TableRow(spec.name, spec.label, spec.role, values, present=node is not None))
    papers = [p for p in PAPERS if p.family == family.key]
    return FamilyTable(family, columns, rows, missing, papers)


def load_tables(metrics_dir: Path, families: Sequence[Family] = FAMILIES) -> list[FamilyTable]:
    return [load_table(f, metrics_dir) for f in families]


# --------------------------------------------------------------------------------------------------- headline
@dataclass
class HeadlineRow:
    family: str
    metric: str
    method: str
    method_value: float | None
    baseline: str
    baseline_value: float | None
    status: str  # "" when both values are there, else why not (NOT_COMPUTED, ...)


def headlines(tables: Sequence[FamilyTable]) -> list[HeadlineRow]:
    """One row per family: its headline metric for the contribution and for the baseline."""
    out = []
    for t in tables:
        if not t.family.in_summary:
            continue
        h = t.family.headline
        if h is None:
            status = (
                NOT_COMPUTED if not t.computed else "no headline metric declared (vidmem/report/families.py)"
            )
            out.append(HeadlineRow(t.family.key, "", "", None, "", None, status))
            continue
        col = next(c for c in t.columns if c.key == h.column)
        m, b = t.row(h.method), t.row(h.baseline)
        mv = m.values.get(h.column) if m and m.present else None
        bv = b.values.get(h.column) if b and b.present else None
        status = "" if mv is not None and bv is not None else NOT_COMPUTED
        out.append(
            HeadlineRow(
                t.family.key,
                h.label or col.label,
                m.label if m else h.method,
                mv,
                b.label if b else h.baseline,
                bv,
                status,
            )
        )
    return out


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
