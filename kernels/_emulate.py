"""Run the CUDA kernel sources on the CPU: a small host emulation of CUDA's execution model.

Why: CI and most development machines have no GPU, yet the kernels' index arithmetic, launch configuration,
warp reductions, block-wide sorts and argument marshalling are exactly where bugs hide. This module compiles
the *same* kernel text (the same prelude and body NVRTC gets) with the host C++ compiler, next to a header
that provides what the kernels use from CUDA:

* ``threadIdx``/``blockIdx``/``blockDim``/``gridDim``; each block runs as ``blockDim.x`` OS threads (blocks
  one after another, so ``__shared__`` becomes a function-level ``static`` shared by the block's threads);
* ``__syncthreads`` and ``__syncthreads_count`` as a block barrier (a thread that returns drops out of it, as
  on the GPU), ``__shfl_xor_sync`` through a per-warp barrier (all 32 lanes must take part, like a full mask);
* ``atomicAdd`` under a mutex; the bit-cast intrinsics; the portable branch of the float16 conversions.

The harness checks every argument against the kernel's parameter list (pointer vs ``long long``, and the
pointee dtype), so a wrong argument order on the host side fails here instead of silently on a GPU. What it
cannot show: GPU memory-model races that real threads here happen to serialise, resource limits (registers,
shared memory per block), and CuPy's own marshalling. Needs a C++20 compiler (``g++``; override with ``CXX``).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ._cupy import Arg, KernelSource, acc_dtype, dtype_name, kernel_arg, prelude

log = logging.getLogger(__name__)

_HEADER = r"""
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 { unsigned int x, y, z; };
static thread_local dim3 threadIdx;
static thread_local dim3 blockIdx;
static dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

namespace emu {
using Barrier = std::barrier<>;
static std::unique_ptr<Barrier> block_barrier;
static std::vector<std::unique_ptr<Barrier>> warp_barriers;
static std::vector<unsigned long long> lanes;  // one exchange slot per thread for warp shuffles
static std::atomic<int> counts[3];              // __syncthreads_count, rotating so no reset races a reader
static thread_local unsigned int count_calls;
static std::mutex atomic_mutex;
}  // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

inline int __syncthreads_count(int predicate) {
  const unsigned int slot = emu::count_calls++ % 3;
  if (predicate) emu::counts[slot].fetch_add(1);
  emu::block_barrier->arrive_and_wait();
  const int n = emu::counts[slot].load();
  // Slot (slot + 2) % 3 was last read before this barrier and is next written after the following one.
  if (threadIdx.x == 0) emu::counts[(slot + 2) % 3].store(0);
  return n;
}

template <class T>
inline T __shfl_xor_sync(unsigned int, T value, int lane_mask) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  const unsigned int t = threadIdx.x, warp = t / 32;
  unsigned long long bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  emu::lanes[t] = bits;
  emu::warp_barriers[warp]->arrive_and_wait();
  const unsigned long long got = emu::lanes[warp * 32 + ((t % 32) ^ (unsigned int)lane_mask)];
  emu::warp_barriers[warp]->arrive_and_wait();
  T out;
  std::memcpy(&out, &got, sizeof(T));
  return out;
}

template <class T>
inline T atomicAdd(T* address, T value) {
  std::lock_guard<std::mutex> guard(emu::atomic_mutex);
  const T old = *address;
  *address = old + value;
  return old;
}

inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }

namespace emu {
inline void begin_block(unsigned int block) {
  block_barrier = std::make_unique<Barrier>(block);
  warp_barriers.clear();
  for (unsigned int w = 0; w * 32 < block; ++w)
    warp_barriers.push_back(std::make_unique<Barrier>(std::min(32u, block - w * 32)));
  lanes.assign(warp_barriers.size() * 32, 0);
  for (auto& c : counts) c.store(0);
}

inline void end_thread() {  // a finished thread no longer holds up barriers
  block_barrier->arrive_and_drop();
  warp_barriers[threadIdx.x / 32]->arrive_and_drop();
}

template <class... P, class... A>
void launch(void (*kernel)(P...), unsigned int grid, unsigned int block, A... args) {
  gridDim = dim3{grid, 1, 1};
  blockDim = dim3{block, 1, 1};
  for (unsigned int b = 0; b < grid; ++b) {
    begin_block(block);
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned int t = 0; t < block; ++t)
      threads.emplace_back([=] {
        threadIdx = dim3{t, 0, 0};
        blockIdx = dim3{b, 0, 0};
        kernel(args...);
        end_thread();
      });
    for (auto& th : threads) th.join();
  }
}
}  // namespace emu
"""

_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
_SCALAR_CTYPES = {"long long": ctypes.c_longlong}


@dataclass(frozen=True)
class Param:
    """One kernel parameter as declared in the source."""

    name: str
    base: str  # type without const/__restrict__/'*'
    pointer: bool


def kernel_params(source: KernelSource) -> dict[str, list[Param]]:
    """Parse the parameter list of every ``extern "C" __global__`` kernel in ``source``."""
    found: dict[str, list[Param]] = {}
    for name, params in _KERNEL_RE.findall(source.body):
        parsed = []
        for decl in params.split(","):
            words = decl.replace("*", " * ").split()
            pname = words[-1]
            pointer = "*" in words
            base = " ".join(w for w in words[:-1] if w not in ("const", "__restrict__", "*"))
            parsed.append(Param(pname, base, pointer))
        found[name] = parsed
    missing = set(source.kernels) - set(found)
    if missing:
        raise ValueError(f"{source.name}: kernels {sorted(missing)} not found in the source")
    return found


def _pointee_dtype(base: str, dtype: torch.dtype) -> torch.dtype:
    table = {
        "scalar_t": dtype, "acc_t": acc_dtype(dtype), "score_t": acc_dtype(dtype),
        "long long": torch.int64, "int": torch.int32, "float": torch.float32, "double": torch.float64,
    }
    return table[base]


def _translation_unit(source: KernelSource) -> str:
    """All dtype variants of ``source`` in one C++ file, each in its own namespace, plus C launch wrappers."""
    params = kernel_params(source)
    body = re.sub(r'extern\s+"C"\s+__global__', "__global__", source.body)
    parts = [_HEADER]
    for dtype in source.dtypes:
        ns = f"vm_{dtype_name(dtype)}"
        parts.append(f"namespace {ns} {{\n{prelude(dtype)}\n{body}\n")
        for kernel in source.kernels:
            decls = ", ".join(f"{p.base}{'*' if p.pointer else ''} {p.name}" for p in params[kernel])
            names = ", ".join(p.name for p in params[kernel])
            parts.append(
                f'extern "C" void {ns}__{kernel}(unsigned int grid, unsigned int block, {decls}) '
                f"{{ emu::launch(&{kernel}, grid, block, {names}); }}\n")
        parts.append(f"}}  // namespace {ns}\n")
    return "\n".join(parts)


def _cache_dir() -> Path:
    root = os.environ.get("VIDMEM_EMU_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vidmem", "cuda-emu")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def compiler() -> str | None:
    """The host C++ compiler the emulation uses, or None if there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


_LIBS: dict[str, ctypes.CDLL] = {}
_LIBS_LOCK = threading.Lock()


def build(source: KernelSource) -> ctypes.CDLL:
    """Compile (or reuse from the cache) the emulated library for ``source``."""
    code = _translation_unit(source)
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found for the CUDA host emulation (install g++ or set CXX)")
    flags = ["-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
             "-Wno-unused-parameter", "-Wno-unknown-pragmas"]
    key = hashlib.sha256((code + cxx + " ".join(flags)).encode()).hexdigest()[:20]
    with _LIBS_LOCK:
        if key in _LIBS:
            return _LIBS[key]
        lib_path = _cache_dir() / f"{source.name}-{key}.so"
        if not lib_path.exists():
            with tempfile.TemporaryDirectory(dir=lib_path.parent) as tmp:
                src = Path(tmp) / f"{source.name}.cpp"
                src.write_text(code, encoding="utf-8")
                out = Path(tmp) / lib_path.name
                proc = subprocess.run([cxx, *flags, "-o", str(out), str(src)], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"host compile of {source.name} failed:\n{proc.stderr[:6000]}")
                os.replace(out, lib_path)  # atomic: concurrent test runs never load a half-written library
            log.debug("built %s", lib_path)
        lib = ctypes.CDLL(str(lib_path))
        _LIBS[key] = lib
        return lib


class EmulatedRunner:
    """A :class:`kernels._cupy.Runner` that runs kernels on CPU tensors through the host emulation."""

    def __init__(self, block: int = 64, max_blocks: int = 3) -> None:
        if block % 32:
            raise ValueError("block must be a multiple of the warp size (32)")
        self.block = block
        self.max_blocks = max_blocks
        self.launches: list[tuple[str, int, int]] = []

    def __call__(self, source: KernelSource, dtype: torch.dtype, kernel: str, grid: int, block: int,
                 args: Sequence[Arg]) -> None:
        params = kernel_params(source)[kernel]
        if len(args) != len(params):
            raise TypeError(f"{kernel}: {len(args)} arguments for {len(params)} parameters")
        if not (1 <= grid <= self.max_blocks) or block <= 0:
            raise ValueError(f"{kernel}: launch grid={grid} block={block} outside 1..{self.max_blocks}")
        cargs: list[object] = []
        for p, a in zip(params, args):
            if p.pointer:
                if not isinstance(a, torch.Tensor):
                    raise TypeError(f"{kernel}: parameter {p.name} is a pointer, got {type(a).__name__}")
                want = _pointee_dtype(p.base, dtype)
                if a.dtype != want or a.device.type != "cpu" or not a.is_contiguous():
                    raise TypeError(f"{kernel}: parameter {p.name} wants a contiguous CPU {want} tensor, "
                                    f"got {a.dtype} on {a.device} (contiguous={a.is_contiguous()})")
                view = kernel_arg(a)
                view.__dlpack__()  # what the GPU runner hands to CuPy must be exportable
                cargs.append(ctypes.c_void_p(view.data_ptr()))
            else:
                if isinstance(a, torch.Tensor) or not isinstance(a, int):
                    raise TypeError(f"{kernel}: parameter {p.name} is a {p.base}, got {type(a).__name__}")
                cargs.append(_SCALAR_CTYPES[p.base](a))
        fn = getattr(build(source), f"vm_{dtype_name(dtype)}__{kernel}")
        fn.restype = None
        self.launches.append((kernel, grid, block))
        fn(ctypes.c_uint(grid), ctypes.c_uint(block), *cargs)
