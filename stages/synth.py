"""Stage `synth`: render SynthVid into `params.synth.out` and write `metrics/synth.json`.

    python -m stages.synth
"""
from __future__ import annotations

import logging
import time

from vidmem.common import load_params, run_stage, write_json
from vidmem.params import read
from vidmem.paths import Paths
from vidmem.synth import SynthConfig, generate
from vidmem.toolchain import versions

log = logging.getLogger("stages.synth")


def main() -> None:
    cfg = read(SynthConfig, load_params().get("synth"), "synth")
    t0 = time.perf_counter()
    m = generate(cfg)
    log.info("synth: wrote %s in %.1f s", cfg.out, time.perf_counter() - t0)
    write_json(Paths().metric("synth"), {**m, "toolchain": versions("ffmpeg", "libx264", "espeak-ng", "cpu")})


if __name__ == "__main__":
    run_stage(main)
