"""Run a stage as `python -m stages.<x>` in a subprocess, SIGKILL it at a chosen point of its computation, or
measure its peak memory.

The point is the N-th module forward of the process (a global torch forward hook), which every torch stage
passes through many times — while decoding and encoding (extract), in every training step and validation
(train, finetune_clip) and while generating captions; or, with `points="tools"`, the N-th subprocess it
launches (the report's ffmpeg thumbnail cuts). A counting run gives the uninterrupted total; a seeded
draw picks N inside it, so the kill lands mid-run, at a point that differs per seed yet repeats exactly.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

_BOOT = """
import atexit, os, resource, runpy, sys
calls = [0]
kill_at = int(os.environ.get("VIDMEM_TEST_KILL_AT", "0"))
count_to = os.environ.get("VIDMEM_TEST_COUNT_TO")
peak_to = os.environ.get("VIDMEM_TEST_PEAK_TO")
if kill_at or count_to:
    import signal
    def hook(*_):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("VIDMEM_TEST_POINTS") == "tools":  # a stage without torch: the N-th tool it launches
        import subprocess
        popen_init = subprocess.Popen.__init__
        def counted_init(self, *a, **k):
            hook()
            popen_init(self, *a, **k)
        subprocess.Popen.__init__ = counted_init
    else:
        import torch
        torch.nn.modules.module.register_module_forward_hook(hook)
if count_to:
    atexit.register(lambda: open(count_to, "w").write(str(calls[0])))
if peak_to:  # this process's peak resident memory, and the largest of its finished children's (ffmpeg ...)
    def peak():
        hwm = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")).split()[1]
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        open(peak_to, "w").write(f"{hwm} {children}")
    atexit.register(peak)
module, *args = sys.argv[1:]
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def stage(root: Path, module: str, *args: str, kill_at: int = 0, count: bool = False, timeout: float = 600,
          env: dict[str, str] | None = None,
          points: str = "forwards") -> tuple[subprocess.CompletedProcess, int | None]:
    """Run `python -m <module> <args>` in `root`; returns the process and (with `count`) its count of points
    (module forwards, or with `points="tools"` subprocess launches)."""
    counter = root / ".forward_count"
    counter.unlink(missing_ok=True)
    extra = {"VIDMEM_TEST_KILL_AT": str(kill_at), "VIDMEM_TEST_POINTS": points}
    if count:
        extra["VIDMEM_TEST_COUNT_TO"] = str(counter)
    full_env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
                "VIDMEM_LOG": "WARNING", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra,
                **(env or {})}
    proc = subprocess.run([sys.executable, "-c", _BOOT, module, *args], cwd=root, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    n = int(counter.read_text()) if count and counter.exists() else None
    counter.unlink(missing_ok=True)
    return proc, n


def peak_memory_mb(root: Path, module: str, *args: str, timeout: float = 1800) -> tuple[float, float]:
    """Run the stage; (its own peak resident MB, the largest peak of the child processes it waited for)."""
    out = root / ".peak_memory"
    proc, _ = stage(root, module, *args, timeout=timeout, env={"VIDMEM_TEST_PEAK_TO": str(out)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    own, children = (int(x) / 1024 for x in out.read_text().split())
    out.unlink()
    return own, children


def kill_point(total: int, seed: int, lo: float = 0.3, hi: float = 0.9) -> int:
    """A seeded forward index inside (lo, hi) of an uninterrupted run's `total` forwards."""
    assert total >= 10, f"only {total} forwards: too little work to kill mid-run"
    return random.Random(seed).randint(max(1, int(lo * total)), max(2, int(hi * total)))


def killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGKILL
