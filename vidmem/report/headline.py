"""The end-of-repro table: every family's headline metric against its baseline, from metrics/*.json.

    python -m vidmem.report.headline [METRICS_DIR]

A family whose metrics file is absent reads "not computed". Called by `make repro` after `dvc repro`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vidmem.report.families import fmt, headlines, load_tables


def table(metrics_dir: Path) -> str:
    rows = [("family", "metric", "model", "value", "baseline", "value", "Δ")]
    for h in headlines(load_tables(metrics_dir)):
        if h.status and h.method_value is None and h.baseline_value is None and not h.metric:
            rows.append((h.family, h.status, "", "", "", "", ""))
            continue
        delta = (h.method_value - h.baseline_value) if not h.status else None
        rows.append(
            (
                h.family,
                h.metric,
                h.method,
                fmt(h.method_value) if h.method_value is not None else h.status,
                h.baseline,
                fmt(h.baseline_value) if h.baseline_value is not None else h.status,
                "" if delta is None else f"{delta:+.2f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    metrics_dir = Path(argv[0]) if argv else Path("metrics")
    try:
        text = table(metrics_dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Headline metrics (test split; {metrics_dir}/*.json; the report: reports/index.html)")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
