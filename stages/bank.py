"""bank: CM2's memory — the train split's event sentences as CLIP text vectors → data/bank.zarr (vidmem/bank.py)."""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import Literal

from vidmem.bank import bank_entries, write_bank
from vidmem.common import load_params, run_stage, write_json
from vidmem.manifest import Manifest
from vidmem.params import read
from vidmem.paths import Paths
from vidmem.store import FeatureStore

log = logging.getLogger("stages.bank")


@dataclass
class BankConfig:
    split: Literal["train", "val", "test"] = "train"  # whose event sentences the memory holds (CM2: train)


def main() -> None:
    cfg = read(BankConfig, load_params().get("bank"), "bank")
    paths = Paths()
    manifest = Manifest.read(paths.manifest, tables=("events",))
    entries = bank_entries(manifest, cfg.split)
    shutil.rmtree(paths.bank, ignore_errors=True)
    n = write_bank(paths.bank, entries, FeatureStore(paths.store("text")))
    log.info("%s: %d sentences from %d videos", paths.bank, n, len({v for v, _ in entries}))
    write_json(paths.metric("bank"), {"sentences": n, "videos": len({v for v, _ in entries}),
                                      "distinct_sentences": len({s for _, s in entries})})


if __name__ == "__main__":
    run_stage(main)
