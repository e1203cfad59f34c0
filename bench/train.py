"""Training throughput of every model in params.yaml `train`, one optimiser step at the default config.

    python -m bench.train [--models pdvc cm2 ...] [--steps 5] [--threads 2]

Run from a project whose pipeline has produced the features (`dvc repro` up to the train stages). For each
model: the family's task builds the model and the first epoch's batches exactly as `train@<model>` does; after
one warm-up step, `--steps` full steps (collate, forward, loss, backward, clipping, optimiser) are timed and
samples/s printed. Baseline in the same run: CM2's retrieval overhead is CM2's step time over PDVC's (the same
model with retrieval off). The kernels' share of a CM2 step is measured with torch.profiler: the forward time
inside `kernels.msda` / `kernels.topk` (record_function ranges) plus the backward of the deformable sampling
(GridSampler2DBackward, the reference path's only backward), over the step's total.
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch
import yaml

from stages.dispatch import task_for
from vidmem.common import seed_everything
from vidmem.paths import Paths
from vidmem.training import EpochContext, lr_at, make_optimizer


@contextmanager
def labelled_kernels():
    """Mark the kernels' forward calls for the profiler (the modules that call them bind the names)."""
    import kernels.msda as msda
    import kernels.topk as topk
    import models.dense.retrieval as retrieval
    import models.dense.sampling as sampling

    saved = []

    def wrap(mod, name, label):
        fn = getattr(mod, name)

        def inner(*a, **k):
            with torch.profiler.record_function(label):
                return fn(*a, **k)

        saved.append((mod, name, fn))
        setattr(mod, name, inner)

    wrap(msda, "ms_deform_attn_1d", "kernel:msda")
    if hasattr(sampling, "deform_attn_1d"):  # the dense model binds the kernel under this name
        wrap(sampling, "deform_attn_1d", "kernel:msda")
    for mod in (topk, retrieval):
        if hasattr(mod, "cosine_topk"):
            wrap(mod, "cosine_topk", "kernel:topk")
    try:
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def step_once(task, model, opt, batch_samples, step: int) -> None:
    """One optimiser step as `vidmem.training.fit` takes it (per-group lr_scale, grad clip, after_step)."""
    lr = lr_at(task.recipe, step, 0, None if task.recipe.schedule != "cosine" else 10**6)
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    batch = task.collate(batch_samples)
    loss, _ = task.step(model, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if task.recipe.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), task.recipe.grad_clip)
    opt.step()
    task.after_step(model)


def time_steps(task, batches: list[list], device: torch.device, sync=lambda: None) -> tuple[list[float], int]:
    """Build the task's model on `device`, take one warm-up step on batches[0] (CuPy compiles its kernels
    there), then time one step per remaining batch. Returns (seconds per step, samples timed)."""
    seed_everything(task.recipe.seed)
    model = task.build().to(device)
    model.train()
    opt = make_optimizer(task.param_groups(model), task.recipe)
    step_once(task, model, opt, batches[0], 0)
    sync()
    times, samples = [], 0
    for i, b in enumerate(batches[1:], 1):
        t = time.perf_counter()
        step_once(task, model, opt, b, i)
        sync()
        times.append(time.perf_counter() - t)
        samples += len(b)
    return times, samples


def bench_model(name: str, params: dict, steps: int) -> dict:
    task = task_for(name, params, Paths())
    task.device = torch.device("cpu")
    batches = [list(b) for _, b in zip(range(steps + 1), task.batches(EpochContext(0, task.recipe.seed)))]
    times, samples = time_steps(task, batches, task.device)
    return {"model": name, "family": task.family, "step_s": statistics.median(times),
            "samples_per_s": samples / sum(times), "batch": len(batches[1])}


def kernel_share(name: str, params: dict) -> float:
    task = task_for(name, params, Paths())
    seed_everything(task.recipe.seed)
    model = task.build()
    model.train()
    opt = make_optimizer(task.param_groups(model), task.recipe)
    b = next(iter(task.batches(EpochContext(0, task.recipe.seed))))
    step_once(task, model, opt, list(b), 0)
    with labelled_kernels(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.profiler.record_function("step"):
            step_once(task, model, opt, list(b), 1)
    total = kern = 0.0
    for e in prof.key_averages():
        if e.key == "step":
            total = e.cpu_time_total
        elif e.key.startswith("kernel:") or "GridSampler2DBackward" in e.key:
            kern += e.cpu_time_total
    return kern / total if total else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", help="default: every train.* model")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = yaml.safe_load(open("params.yaml", encoding="utf-8"))
    names = args.models or list(params.get("train") or {})
    rows = [bench_model(n, params, args.steps) for n in names]
    print(f"{'model':<16} {'family':<12} {'batch':>5} {'step s':>8} {'samples/s':>10}")
    for r in rows:
        print(f"{r['model']:<16} {r['family']:<12} {r['batch']:>5} {r['step_s']:>8.3f} {r['samples_per_s']:>10.2f}")
    by = {r["model"]: r for r in rows}
    if "pdvc" in by and "cm2" in by:
        print(f"CM2 retrieval overhead: step time CM2 / PDVC = {by['cm2']['step_s'] / by['pdvc']['step_s']:.3f}")
        print(f"kernels' share of a CM2 step (msda fwd+bwd, topk fwd; CPU reference path): "
              f"{kernel_share('cm2', params):.1%}")


if __name__ == "__main__":
    main()
