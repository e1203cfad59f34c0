"""Stage `ingest`: the annotation files named in `params.ingest` → the canonical manifest in data/manifest/.

Writes the manifest tables, vocab.json, report.json (per source: counts, and every skipped entry with its
reason), answers.json (the closed QA answer set, when a QA source is ingested), and metrics/ingest.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vidmem.common import atomic_dir, load_params, run_stage, section, write_json
from vidmem.formats.assemble import ingest

log = logging.getLogger("vidmem.ingest")

MANIFEST_DIR = Path("data/manifest")
METRICS = Path("metrics/ingest.json")


def main() -> None:
    cfg = section(load_params(), "ingest")
    result = ingest(cfg)
    with atomic_dir(MANIFEST_DIR) as tmp:
        result.manifest.write(tmp)
        write_json(tmp / "report.json", result.report)
        if result.answers is not None:
            write_json(tmp / "answers.json", result.answers)
    write_json(METRICS, result.metrics)
    m = result.metrics
    log.info(
        "manifest: %d videos, %d events, %d queries, %d captions, %d hierarchy texts, %d QA; "
        "vocabulary %d words; %d entries skipped",
        m["videos"],
        m["events"]["total"],
        m["queries"]["total"],
        m["captions"]["total"],
        m["hierarchy"]["total"],
        m["qa"]["total"],
        m["vocab_size"],
        m["skipped"],
    )


if __name__ == "__main__":
    run_stage(main)
