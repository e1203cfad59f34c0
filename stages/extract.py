"""extract@{clip,lavila,text,audio}: features of every compressed video / manifest sentence / query WAV into a zarr store.

    python -m stages.extract clip|lavila|text|audio
    torchrun --nproc_per_node=2 -m stages.extract clip     # same store, each rank writing whole shards

Reads the manifest, the compressed videos and the tuned CLIP checkpoint; writes `data/features/<kind>.zarr`
(see vidmem/store.py for the layout; `ledger.jsonl` inside lists every video as done or failed with the
reason) and `metrics/features_<kind>.json`. Resumable: a killed run, rerun, finishes the missing shards and the
store is byte-identical to an uninterrupted run.
"""
from __future__ import annotations

import os
import sys

# Videos are decoded in a thread beside torch's OpenMP workers; idle workers should sleep rather than spin on
# the core the decoder needs (about +8% frames/s on 2 cores, `python -m bench.extract`). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from vidmem.common import UserError, load_params, run_stage  # noqa: E402
from models.encoders.extract import KINDS, extract_store  # noqa: E402


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in KINDS:
        raise UserError(f"usage: python -m stages.extract {{{'|'.join(KINDS)}}}")
    extract_store(sys.argv[1], load_params())


if __name__ == "__main__":
    run_stage(main)
