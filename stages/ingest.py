"""Stage `ingest`: the annotation files named in `params.ingest` → the canonical manifest in data/manifest/.

Writes the manifest tables, vocab.json, report.json (per source: counts, and every skipped entry with its
reason), answers.json (the closed QA answer set, when a QA source is ingested), and metrics/ingest.json.
"""

from __future__ import annotations

import logging

from vidmem.common import atomic_dir, load_params, run_stage, write_json
from vidmem.formats.assemble import ingest
from vidmem.formats.registry import ingest_config
from vidmem.paths import Paths

log = logging.getLogger("stages.ingest")


def main() -> None:
    cfg = ingest_config(load_params().get("ingest"))
    paths = Paths()
    result = ingest(cfg)
    with atomic_dir(paths.manifest) as tmp:
        result.manifest.write(tmp)
        write_json(tmp / "report.json", result.report)
        if result.answers is not None:
            write_json(tmp / "answers.json", result.answers)
    write_json(paths.metric("ingest"), result.metrics)
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
