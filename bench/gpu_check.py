"""The steps of ``bench/gpu_check.sh`` and the one JSON file they add up to (README, Performance: GPU check).

    python -m bench.gpu_check step NAME --part FILE [--fast]      run one measured step, write its part
    python -m bench.gpu_check record NAME --part FILE --rc RC --log LOG --seconds S [--junit XML]
    python -m bench.gpu_check skip NAME --part FILE --reason TEXT
    python -m bench.gpu_check assemble DIR OUT [--fast]            merge the parts into OUT

Measured steps (each a separate process, so the shell's ``timeout`` bounds it):

* ``msda_cpu`` / ``msda_gpu`` — bench.kernels' rows at PDVC's and Deformable DETR's shapes: the
  ``grid_sample`` reference on the CPU; on the GPU the CuPy kernel against the same reference, forward and
  forward+backward
  (goal: forward+backward >= 3x at every shape).
* ``topk_cpu`` / ``topk_gpu`` — cosine top-k (k=100): our tiled reference vs faiss-cpu on the CPU; the fused
  kernel vs normalise + matmul + ``torch.topk`` on the GPU (goal >= 1x).
* ``faiss_gpu`` — the fused kernel vs faiss-gpu's exact ``GpuIndexFlatIP``, only where a wheel installed.
* ``cm2_train_cpu`` / ``cm2_train_gpu`` — one epoch of CM2 training steps at the default config of
  params.yaml (``families.dense`` + ``train.cm2``) on synthetic features and a synthetic memory bank, so no
  pipeline output is needed: a warm-up step, then every step of the epoch timed (collate, forward, loss,
  backward, clipping, optimiser; bench.train's step).

``--fast`` (the CPU test) keeps every shape tiny; a fast run's numbers are a smoke test, not measurements.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

#: Every step, in the order the shell runs them; the JSON's ``steps`` has exactly these keys.
STEPS = ("install", "pytest_gpu", "msda_cpu", "msda_gpu", "topk_cpu", "topk_gpu", "faiss_gpu",
         "cm2_train_cpu", "cm2_train_gpu")
GPU_STEPS = ("pytest_gpu", "msda_gpu", "topk_gpu", "faiss_gpu", "cm2_train_gpu")
NO_GPU = "no CUDA GPU"
MSDA_GOAL, TOPK_GOAL = 3.0, 1.0
TOPK_K = 100


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- shapes
def msda_shapes(fast: bool):
    from bench.kernels import PDVC_LEVELS, msda_configs

    return [("1-D PDVC", 1, 10, PDVC_LEVELS, 64)] if fast else msda_configs(quick=False)


def topk_shapes(fast: bool):
    from bench.kernels import topk_configs

    return [(20, 2000, 64)] if fast else topk_configs(quick=False, large=False)[:1]


def _repeat(fast: bool) -> int:
    return 1 if fast else 3


# ---------------------------------------------------------------------------------------------- kernels
def msda_rows(on_gpu: bool, fast: bool) -> dict:
    from bench.kernels import msda_cpu_row, msda_gpu_row

    rows = []
    for name, N, Lq, levels, D in msda_shapes(fast):
        fn = msda_gpu_row if on_gpu else msda_cpu_row
        rows.append({"shape": name, "N": N, "Lq": Lq, "levels": [list(s) for s in levels], "M": 8, "D": D,
                     "P": 4, "dtype": "float32", **fn(N, Lq, levels, D, _repeat(fast))})
    out = {"rows": rows}
    if on_gpu:
        worst = min(r["speedup_fwd_bwd"] for r in rows)
        out.update(goal_fwd_bwd=MSDA_GOAL, min_speedup_fwd_bwd=worst, goal_met=worst >= MSDA_GOAL)
    return out


def topk_rows(on_gpu: bool, fast: bool) -> dict:
    from bench.kernels import topk_cpu_row, topk_gpu_row

    k = 10 if fast else TOPK_K
    rows = []
    for Q, N, D in topk_shapes(fast):
        fn = topk_gpu_row if on_gpu else topk_cpu_row
        rows.append({"Q": Q, "N": N, "D": D, "k": k, "dtype": "float32", **fn(Q, N, D, k, _repeat(fast))})
    out = {"rows": rows}
    if on_gpu:
        worst = min(r["speedup"] for r in rows)
        out.update(goal=TOPK_GOAL, min_speedup=worst, goal_met=worst >= TOPK_GOAL)
    return out


def faiss_gpu_rows(fast: bool) -> dict:
    """The fused kernel against faiss-gpu's exact flat inner-product index on L2-normalised vectors."""
    import faiss
    import torch

    from bench.kernels import overlap, timed, topk_inputs
    from kernels import topk

    k, rows = (10 if fast else TOPK_K), []
    dev = torch.device("cuda")
    res = faiss.StandardGpuResources()
    for Q, N, D in topk_shapes(fast):
        queries, bank = topk_inputs(Q, N, D)
        gq, gb = queries.to(dev), bank.to(dev)
        qn = torch.nn.functional.normalize(queries, dim=1).numpy()
        index = faiss.GpuIndexFlatIP(res, D)
        index.add(torch.nn.functional.normalize(bank, dim=1).numpy())
        result = {}

        def kernel():
            result["kernel"] = topk.cosine_topk(gq, gb, k, backend="cupy")

        def search():  # host queries in, host results out: faiss's numpy interface
            result["faiss"] = index.search(qn, k)

        t = timed({"kernel": kernel, "faiss": search}, _repeat(fast), dev)
        ov = overlap(result["kernel"][1].cpu(), torch.from_numpy(result["faiss"][1]))
        rows.append({"Q": Q, "N": N, "D": D, "k": k, "kernel_ms": t["kernel"], "faiss_gpu_ms": t["faiss"],
                     "speedup": t["faiss"] / t["kernel"], "overlap": ov})
    return {"faiss_version": faiss.__version__, "rows": rows}


# ---------------------------------------------------------------------------------------------- CM2 step
def synthetic_cm2_task(fast: bool, device):
    """CM2 at params.yaml's default config over synthetic videos and a synthetic memory bank."""
    import numpy as np
    import torch
    import yaml

    from models.dense import DenseCaptionDataset, InMemoryFeatures, VideoAnnotation
    from models.dense.task import DenseTask
    from stages.dispatch import task_for
    from vidmem.bank import TextBank
    from vidmem.formats.vocab import Vocab
    from vidmem.paths import Paths

    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    template = task_for("cm2", params)
    cfg, recipe = template.config, template.recipe
    n_videos, frames, bank_size = (3 * recipe.batch_size, 20, 200) if fast else \
        (16 * recipe.batch_size, 100, 5000)
    fps = 2.0
    rng = np.random.default_rng(0)
    words = ["<unk>"] + [f"w{i}" for i in range(300)]
    vocab = Vocab.from_json({"word_to_ix": {w: i + 1 for i, w in enumerate(words)},
                             "ix_to_word": {str(i + 1): w for i, w in enumerate(words)}})
    feats, times, videos = {}, {}, []
    for i in range(n_videos):
        vid = f"v{i:04d}"
        feats[vid] = rng.standard_normal((frames, cfg.feature_dim)).astype(np.float16)
        times[vid] = ((np.arange(frames) + 0.5) / fps).astype(np.float32)
        duration = frames / fps
        events, sentences = [], []
        for _ in range(int(rng.integers(2, 5))):
            a, b = sorted(rng.uniform(0, duration, 2).tolist())
            events.append((a, max(b, a + 1.0)))
            sentences.append(" ".join(rng.choice(words[1:], int(rng.integers(5, cfg.max_words)))))
        videos.append(VideoAnnotation(vid, duration, events, sentences))
    ds = DenseCaptionDataset(videos, InMemoryFeatures(feats, times), vocab, max_words=cfg.max_words)
    bank_ids = [f"v{int(i):04d}" for i in rng.integers(0, n_videos, bank_size)]
    vectors = rng.standard_normal((bank_size, cfg.bank_dim)).astype(np.float32)
    bank = TextBank(torch.from_numpy(vectors), bank_ids)
    task = DenseTask("cm2", recipe, cfg, Paths(), datasets={"train": ds}, bank=bank.to(device))
    task.device = device
    return task, {"videos": n_videos, "frames": frames, "feature_dim": cfg.feature_dim,
                  "bank_size": bank_size, "batch_size": recipe.batch_size}


def cm2_epoch(on_gpu: bool, fast: bool) -> dict:
    import torch

    from bench.train import time_steps
    from vidmem.training import EpochContext

    device = torch.device("cuda" if on_gpu else "cpu")
    task, shape = synthetic_cm2_task(fast, device)
    batches = [list(b) for b in task.batches(EpochContext(0, task.recipe.seed))]
    # the warm-up takes batches[0] and is not timed: the epoch is timed from its second batch, plus batch 0
    # again so every video of the epoch is counted once
    times, _ = time_steps(task, [batches[0], *batches], device,
                          sync=(lambda: torch.cuda.synchronize(device)) if on_gpu else (lambda: None))
    return {**shape, "steps": len(times), "threads": torch.get_num_threads(), "epoch_s": sum(times),
            "step_s": statistics.median(times), "samples_per_s": shape["videos"] / sum(times)}


MEASURED = {
    "msda_cpu": lambda fast: msda_rows(False, fast),
    "msda_gpu": lambda fast: msda_rows(True, fast),
    "topk_cpu": lambda fast: topk_rows(False, fast),
    "topk_gpu": lambda fast: topk_rows(True, fast),
    "faiss_gpu": faiss_gpu_rows,
    "cm2_train_cpu": lambda fast: cm2_epoch(False, fast),
    "cm2_train_gpu": lambda fast: cm2_epoch(True, fast),
}


def run_step(name: str, part: Path, fast: bool) -> None:
    if name in GPU_STEPS and not gpu_available():
        print(f"{name}: skipped: {NO_GPU}")
        _write(part, {"status": "skipped", "reason": NO_GPU})
        return
    result = MEASURED[name](fast)
    print(f"{name}: {json.dumps(result)}")
    _write(part, {"status": "ok", **result})


# ---------------------------------------------------------------------------------------------- recording
def error_line(log: Path) -> str:
    """The last informative line of a step's log (a traceback's exception line, pytest's summary)."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not set(ln) <= set("=-_ ")]
    return lines[-1][:500] if lines else "no output"


def junit_counts(path: Path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"],
            "failed": tot["failures"] + tot["errors"], "skipped": tot["skipped"]}


def record(name: str, part: Path, rc: int, log: Path, seconds: float, junit: Path | None,
           limit: float) -> None:
    """Finalise a step's part from its exit status: a step that exited 0 without a part (install, pytest) is
    ok; 124/137 is a timeout; any other failure keeps the log's last line."""
    out = json.loads(part.read_text(encoding="utf-8")) if part.exists() and rc == 0 else {}
    if rc == 0:
        out.setdefault("status", "ok")
    elif rc in (124, 137):
        out = {"status": "failed", "error": f"timed out after {limit:g} s"}
    else:
        out = {"status": "failed", "error": f"exit {rc}: {error_line(log)}"}
    if junit is not None and junit.exists():
        try:
            out.update(junit_counts(junit))
        except ET.ParseError:
            pass
        if out["status"] == "ok" and out.get("passed", 0) == 0:
            out = {"status": "failed", "error": f"no GPU test ran: {error_line(log)}"}
    out.update(seconds=round(seconds, 2), limit_s=limit)
    _write(part, out)
    print(f"gpu-check: {name}: {out['status']}" + (f" ({out.get('reason') or out.get('error')})"
                                                   if out["status"] != "ok" else ""))


def environment() -> dict:
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch": None, "cuda": None, "gpu": None,
           "cupy": None, "cupy_kernels_usable": False}
    try:
        import torch

        env.update(torch=torch.__version__, cuda=torch.version.cuda)
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
        import cupy

        from kernels._cupy import cupy_usable

        env.update(cupy=cupy.__version__, cupy_kernels_usable=bool(cupy_usable()))
    except Exception as e:  # an environment that failed to install still gets its JSON
        env["error"] = f"{type(e).__name__}: {e}"[:300]
    return env


def assemble(parts: Path, out: Path, fast: bool, started: float | None) -> dict:
    steps = {}
    for name in STEPS:
        p = parts / f"{name}.json"
        steps[name] = json.loads(p.read_text(encoding="utf-8")) if p.exists() else \
            {"status": "failed", "error": "step did not run (the script stopped before it)"}
    a, b = steps["cm2_train_cpu"], steps["cm2_train_gpu"]
    summary = {"gpu_steps_ok": all(steps[s]["status"] == "ok" for s in GPU_STEPS if s != "faiss_gpu"),
               "msda_goal_met": steps["msda_gpu"].get("goal_met"),
               "topk_goal_met": steps["topk_gpu"].get("goal_met"),
               "cm2_gpu_speedup": a["step_s"] / b["step_s"]
               if a["status"] == b["status"] == "ok" else None}
    result = {"format": 1, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "fast": fast,
              "wall_s": round(time.time() - started, 2) if started else None, "environment": environment(),
              "steps": steps, "summary": summary}
    _write(out, result)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step")
    s.add_argument("name", choices=sorted(MEASURED))
    s.add_argument("--part", type=Path, required=True)
    s.add_argument("--fast", action="store_true")
    r = sub.add_parser("record")
    r.add_argument("name", choices=STEPS)
    r.add_argument("--part", type=Path, required=True)
    r.add_argument("--rc", type=int, required=True)
    r.add_argument("--log", type=Path, required=True)
    r.add_argument("--seconds", type=float, required=True)
    r.add_argument("--limit", type=float, required=True)
    r.add_argument("--junit", type=Path)
    k = sub.add_parser("skip")
    k.add_argument("name", choices=STEPS)
    k.add_argument("--part", type=Path, required=True)
    k.add_argument("--reason", required=True)
    m = sub.add_parser("assemble")
    m.add_argument("parts", type=Path)
    m.add_argument("out", type=Path)
    m.add_argument("--fast", action="store_true")
    m.add_argument("--started", type=float)
    args = ap.parse_args(argv)
    if args.cmd == "step":
        run_step(args.name, args.part, args.fast)
    elif args.cmd == "record":
        record(args.name, args.part, args.rc, args.log, args.seconds, args.junit, args.limit)
    elif args.cmd == "skip":
        _write(args.part, {"status": "skipped", "reason": args.reason})
        print(f"gpu-check: {args.name}: skipped ({args.reason})")
    else:
        res = assemble(args.parts, args.out, args.fast, args.started)
        bad = [n for n, s in res["steps"].items() if s["status"] == "failed"]
        print(f"gpu-check: wrote {args.out}" + (f"; failed: {', '.join(bad)}" if bad else ""))
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
