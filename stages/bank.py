"""bank: CM2's memory — the train split's event sentences as CLIP text vectors → data/bank.zarr (vidmem/bank.py)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from vidmem.bank import bank_entries, write_bank
from vidmem.common import load_params, run_stage, section, write_json
from vidmem.manifest import Manifest
from vidmem.store import FeatureStore

log = logging.getLogger("stages.bank")
OUT = Path("data/bank.zarr")


def main() -> None:
    p = section(load_params(), "bank")
    manifest = Manifest.read("data/manifest", tables=("events",))
    entries = bank_entries(manifest, p["split"])
    shutil.rmtree(OUT, ignore_errors=True)
    n = write_bank(OUT, entries, FeatureStore("data/features/text.zarr"))
    log.info("%s: %d sentences from %d videos", OUT, n, len({v for v, _ in entries}))
    write_json("metrics/bank.json", {"sentences": n, "videos": len({v for v, _ in entries}),
                                      "distinct_sentences": len({s for _, s in entries})})


if __name__ == "__main__":
    run_stage(main)
