"""Kernels vs their baselines: ``python -m bench.kernels [--quick] [--large] [--repeat N] [--threads T]``.

* msda — the CuPy kernel against the ``grid_sample`` reference, forward and forward+backward, at PDVC's 1-D
  shapes (N=1..8, levels T=100/50/25/13, M=8, D=64, P=4, Lq=10..100) and Deformable DETR's 2-D shapes (levels
  100×150, 50×75, 25×38, 13×19, M=8, D=32, P=4, Lq=300..10k). Goal on a GPU: forward+backward ≥ 3× the
  reference.
* topk — the fused kernel against normalised matmul + ``torch.topk`` on the GPU (goal ≥ 1×), and on the CPU
  our tiled reference against faiss-cpu's exact ``IndexFlatIP`` on L2-normalised vectors (Q=1000, N=100k–1M,
  D=512/768, k=100), with the overlap of the two result sets.

Ratios are baseline time / our time (> 1: ours is faster). Without CUDA the GPU rows print "skipped: no CUDA".

Measured on the development machine: AMD EPYC, 2 cores shared with other jobs (load average 5-9), no GPU;
torch 2.14.1, faiss-cpu 1.15.1; ``--repeat 3 --threads 1 --large`` (one thread: with two, OpenMP on the busy
machine made the same rows up to 10x slower and erratic). Medians in ms:

    msda reference (grid_sample), float32       forward   fwd+bwd
      1-D PDVC N=1 Lq=10   D=64                    0.85      2.27
      1-D PDVC N=1 Lq=100  D=64                    5.45     14.6
      1-D PDVC N=8 Lq=10   D=64                    3.85     12.4
      1-D PDVC N=8 Lq=100  D=64                   24.4      71.8
      2-D DETR N=1 Lq=300  D=32                   11.3      77.0
      2-D DETR N=1 Lq=1000 D=32                   36.7     151
      2-D DETR N=2 Lq=10k  D=32                  631      1785

    cosine top-k, float32, k=100               ours   faiss IndexFlatIP   faiss/ours   overlap
      Q=1000 N=100k D=512                        1508        1498             0.99        1.0000
      Q=1000 N=100k D=768                        1940        1940             1.00        1.0000
      Q=1000 N=1M   D=768                       30776       40119             1.30        1.0000

The GPU rows (kernel vs reference, goal >= 3x for msda forward+backward and >= 1x for top-k) have not been
measured: no GPU was available while this was written.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from kernels import msda, topk
from kernels._cupy import cupy_usable

PDVC_LEVELS = [(1, 100), (1, 50), (1, 25), (1, 13)]
DETR_LEVELS = [(100, 150), (50, 75), (25, 38), (13, 19)]


# ------------------------------------------------------------------------------------------------ timing
def timed(fns: dict[str, Callable[[], object]], repeat: int, device: torch.device) -> dict[str, float]:
    """Median wall time of each function in ms, after one warm-up call each (which includes compilation).

    The functions run interleaved (a, b, a, b, ...) so that load from other processes hits them alike.
    """
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


# -------------------------------------------------------------------------------------------------- msda
def msda_inputs(N: int, Lq: int, levels, M: int, D: int, P: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.int64)
    areas = shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    S, L = int(areas.sum()), len(levels)
    value = torch.randn(N, S, M, D, generator=g)
    loc = torch.rand(N, Lq, M, L, P, 2, generator=g)
    if levels[0][0] == 1:  # 1-D: y = 0.5 as PDVC passes it
        loc[..., 1] = 0.5
    attn = torch.rand(N, Lq, M, L * P, generator=g).softmax(-1).view(N, Lq, M, L, P)
    return [t.to(device) for t in (value, shapes, starts, loc, attn)]


def msda_calls(backend: str, inputs) -> tuple[Callable[[], None], Callable[[], None]]:
    """(forward, forward+backward) closures for one backend."""
    value, shapes, starts, loc, attn = inputs
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]

    def forward():
        with torch.no_grad():
            msda.ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)

    def forward_backward():
        v, lc, a = leaves
        out = msda.ms_deform_attn(v, shapes, starts, lc, a, backend=backend)
        out.sum().backward()

    return forward, forward_backward


def msda_configs(quick: bool) -> list[tuple[str, int, int, list, int]]:
    """(name, N, Lq, levels, D) of each row: PDVC's 1-D shapes, then Deformable DETR's 2-D ones."""
    configs = [("1-D PDVC", N, Lq, PDVC_LEVELS, 64) for N in (1, 8) for Lq in (10, 100)]
    detr = [(1, 300), (1, 1000)] + ([] if quick else [(2, 10_000)])
    return configs + [("2-D DETR", N, Lq, DETR_LEVELS, 32) for N, Lq in detr]


def msda_cpu_row(N: int, Lq: int, levels, D: int, repeat: int) -> dict[str, float]:
    """The reference on the CPU: forward and forward+backward ms (M=8, P=4, float32)."""
    cpu = torch.device("cpu")
    f, fb = msda_calls("torch", msda_inputs(N, Lq, levels, 8, D, 4, cpu))
    t = timed({"f": f, "fb": fb}, repeat, cpu)
    return {"ref_fwd_ms": t["f"], "ref_fwd_bwd_ms": t["fb"]}


def msda_gpu_row(N: int, Lq: int, levels, D: int, repeat: int) -> dict[str, float]:
    """The CuPy kernel against the reference on the GPU; speedups are reference time / kernel time."""
    dev = torch.device("cuda")
    inputs = msda_inputs(N, Lq, levels, 8, D, 4, dev)
    ref_f, ref_fb = msda_calls("torch", inputs)
    ker_f, ker_fb = msda_calls("cupy", inputs)
    t = timed({"rf": ref_f, "kf": ker_f, "rfb": ref_fb, "kfb": ker_fb}, repeat, dev)
    return {"ref_fwd_ms": t["rf"], "kernel_fwd_ms": t["kf"], "speedup_fwd": t["rf"] / t["kf"],
            "ref_fwd_bwd_ms": t["rfb"], "kernel_fwd_bwd_ms": t["kfb"], "speedup_fwd_bwd": t["rfb"] / t["kfb"]}


def bench_msda(repeat: int, quick: bool) -> None:
    print("\nmsda, float32, M=8 P=4                         forward ms            fwd+bwd ms")
    cols = f"{'ref':>9} {'kernel':>9} {'ratio':>6}"
    print(f"{'shape':34} {'path':5} {cols} {cols}")
    gpu = cupy_usable() and torch.cuda.is_available()
    for name, N, Lq, levels, D in msda_configs(quick):
        label = f"{name} N={N} Lq={Lq} D={D}"
        c = msda_cpu_row(N, Lq, levels, D, repeat)
        f, fb = c["ref_fwd_ms"], c["ref_fwd_bwd_ms"]
        print(f"{label:34} {'cpu':5} {f:9.2f} {'-':>9} {'-':>6} {fb:9.2f} {'-':>9} {'-':>6}")
        if not gpu:
            print(f"{label:34} {'cuda':5} skipped: no CUDA")
            continue
        g = msda_gpu_row(N, Lq, levels, D, repeat)
        print(f"{label:34} {'cuda':5} {g['ref_fwd_ms']:9.3f} {g['kernel_fwd_ms']:9.3f} "
              f"{g['speedup_fwd']:6.2f} "
              f"{g['ref_fwd_bwd_ms']:9.3f} {g['kernel_fwd_bwd_ms']:9.3f} {g['speedup_fwd_bwd']:6.2f}")


# -------------------------------------------------------------------------------------------------- topk
def topk_inputs(Q: int, N: int, D: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(Q, D, generator=g), torch.randn(N, D, generator=g)


def faiss_topk(queries: torch.Tensor, bank: torch.Tensor, k: int):
    """Exact inner-product search on L2-normalised copies (= cosine), faiss's flat index."""
    import faiss

    q = torch.nn.functional.normalize(queries, dim=1).numpy()
    b = torch.nn.functional.normalize(bank, dim=1).numpy()
    index = faiss.IndexFlatIP(b.shape[1])
    index.add(b)
    return index.search(q, k)


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean fraction of shared indices per row (order ignored)."""
    shared = [len(set(x) & set(y)) / len(x) for x, y in zip(a.tolist(), b.tolist())]
    return sum(shared) / len(shared)


def topk_configs(quick: bool, large: bool) -> list[tuple[int, int, int]]:
    """(Q, N, D) of each row; k = 100."""
    if quick:
        return [(1000, 20_000, 512)]
    return [(1000, 100_000, 512), (1000, 100_000, 768)] + ([(1000, 1_000_000, 768)] if large else [])


def topk_cpu_row(Q: int, N: int, D: int, k: int, repeat: int) -> dict[str, float]:
    """Our tiled reference against faiss-cpu's exact IndexFlatIP; speedup = faiss time / ours."""
    queries, bank = topk_inputs(Q, N, D)
    result = {}

    def ours():
        result["ours"] = topk.cosine_topk(queries, bank, k)

    def base():
        result["faiss"] = faiss_topk(queries, bank, k)

    t = timed({"ours": ours, "faiss": base}, repeat, torch.device("cpu"))
    ov = overlap(result["ours"][1], torch.from_numpy(result["faiss"][1]))
    return {"ours_ms": t["ours"], "faiss_cpu_ms": t["faiss"], "speedup": t["faiss"] / t["ours"],
            "overlap": ov}


def topk_gpu_row(Q: int, N: int, D: int, k: int, repeat: int) -> dict[str, float]:
    """The fused kernel against normalise + matmul + torch.topk on the GPU; speedup = plain time / kernel."""
    queries, bank = topk_inputs(Q, N, D)
    dev = torch.device("cuda")
    gq, gb = queries.to(dev), bank.to(dev)
    result = {}

    def kernel():
        result["kernel"] = topk.cosine_topk(gq, gb, k, backend="cupy")

    def matmul_topk():
        sim = torch.nn.functional.normalize(gq, dim=1) @ torch.nn.functional.normalize(gb, dim=1).T
        result["plain"] = sim.topk(k, dim=1)

    t = timed({"kernel": kernel, "plain": matmul_topk}, repeat, dev)
    ov = overlap(result["kernel"][1].cpu(), result["plain"][1].cpu())
    return {"kernel_ms": t["kernel"], "matmul_topk_ms": t["plain"], "speedup": t["plain"] / t["kernel"],
            "overlap": ov}


def bench_topk(repeat: int, quick: bool, large: bool) -> None:
    k = 100
    print(f"\ncosine top-k, float32, k={k}")
    print(f"{'shape':28} {'path':5} {'ours ms':>9} {'base ms':>9} {'ratio':>6} {'overlap':>8}  baseline")
    gpu = cupy_usable() and torch.cuda.is_available()
    for Q, N, D in topk_configs(quick, large):
        label = f"Q={Q} N={N} D={D}"
        c = topk_cpu_row(Q, N, D, k, repeat)
        print(f"{label:28} {'cpu':5} {c['ours_ms']:9.1f} {c['faiss_cpu_ms']:9.1f} {c['speedup']:6.2f} "
              f"{c['overlap']:8.4f}  faiss IndexFlatIP")
        if not gpu:
            print(f"{label:28} {'cuda':5} skipped: no CUDA")
            continue
        g = topk_gpu_row(Q, N, D, k, repeat)
        print(f"{label:28} {'cuda':5} {g['kernel_ms']:9.2f} {g['matmul_topk_ms']:9.2f} {g['speedup']:6.2f} "
              f"{g['overlap']:8.4f}  normalise + matmul + torch.topk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions per row (median)")
    parser.add_argument("--quick", action="store_true", help="small shapes only (a smoke run)")
    parser.add_argument("--large", action="store_true", help="add the N=1M top-k row")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch and faiss alike (0: library defaults)")
    args = parser.parse_args()
    if args.threads:
        # numpy's OpenBLAS (the CPU top-k's matmul) reads its thread count at import: re-run with it pinned.
        want = str(args.threads)
        if os.environ.get("OPENBLAS_NUM_THREADS") != want:
            os.environ.update(OPENBLAS_NUM_THREADS=want, OMP_NUM_THREADS=want, MKL_NUM_THREADS=want)
            os.execv(sys.executable, [sys.executable, "-m", "bench.kernels", *sys.argv[1:]])
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, GPU: {gpu}, "
          f"CuPy kernels usable: {cupy_usable()}, load average {os.getloadavg()[0]:.1f}")
    bench_msda(args.repeat, args.quick)
    bench_topk(args.repeat, args.quick, args.large)


if __name__ == "__main__":
    main()
