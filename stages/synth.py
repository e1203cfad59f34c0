"""Stage `synth`: render SynthVid into `params.synth.out` and write `metrics/synth.json`.

    python -m stages.synth
"""
from __future__ import annotations

import logging
import time

from vidmem.common import load_params, run_stage, section, write_json
from vidmem.synth import SynthConfig, generate

log = logging.getLogger("vidmem.synth")
METRICS = "metrics/synth.json"


def main() -> None:
    cfg = SynthConfig.from_params(section(load_params(), "synth"))
    t0 = time.perf_counter()
    m = generate(cfg)
    log.info("synth: wrote %s in %.1f s", cfg.out, time.perf_counter() - t0)
    write_json(METRICS, m)


if __name__ == "__main__":
    run_stage(main)
