"""Shared plumbing for the CuPy raw kernels: dtype preludes, lazy NVRTC compilation, zero-copy launches.

Why CuPy raw kernels: the original ops are a CUDA extension that needs a compile step and breaks on PyTorch 2
/ CUDA 12. Ours are plain CUDA C++ strings that NVRTC compiles at first use (CuPy caches the binary in memory
and on disk under ``CUPY_CACHE_DIR``), per (source, dtype, device).

Conventions every kernel source follows, so the same text compiles for every dtype and can also run under the
host emulation in :mod:`kernels._emulate`:

* a per-dtype *prelude* (:func:`prelude`) defines ``scalar_t`` (storage type of values and outputs), ``acc_t``
  (arithmetic type: ``double`` for float64, ``float`` otherwise), ``score_t`` (= ``acc_t``),
  ``load``/``store`` (convert storage <-> arithmetic), ``vm_floor`` and ``vm_neg_inf()``. float16/bfloat16 are
  stored as ``unsigned short`` and converted in registers, so no CUDA header is needed;
* every kernel is ``extern "C" __global__``, uses only pointers and ``long long`` scalars as parameters (the
  launcher passes every Python int as int64) and walks its work with grid-stride loops, so any grid size is
  correct and the grid can be capped;
* launches are 1-D: ``grid`` blocks of ``block`` threads (grid first, block second — the CuPy interoperability
  example swaps them, which breaks past 131,072 elements).

:class:`CupyRunner` launches on torch's current stream and hands tensors to CuPy through DLPack (zero-copy:
CuPy views torch's memory, torch's caching allocator keeps owning it). :func:`nvrtc_compile` calls NVRTC
directly for an explicit architecture, which works without a GPU or driver — the tests use it to compile every
source for sm_80 and sm_90.
"""
from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

log = logging.getLogger(__name__)

#: NVRTC options used for every kernel (CuPy adds ``-arch`` for the device it compiles for).
COMPILE_OPTIONS: tuple[str, ...] = ("-std=c++17",)
#: Architectures the tests compile every source for, without a GPU.
TEST_ARCHS: tuple[str, ...] = ("sm_80", "sm_90")

#: Storage dtypes the kernels are compiled for, and the short name used in caches and emulated symbol names.
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "f32",
    torch.float64: "f64",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The arithmetic dtype for storage dtype ``dtype``: float64 stays float64, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------------------------- preludes
_COMMON = r"""
typedef ACC score_t;
__device__ __forceinline__ float vm_floor(float x) { return floorf(x); }
__device__ __forceinline__ double vm_floor(double x) { return floor(x); }
"""

_FLOAT_PRELUDE = r"""
typedef float scalar_t;
typedef float acc_t;
__device__ __forceinline__ acc_t vm_neg_inf() { return __int_as_float((int)0xff800000u); }
__device__ __forceinline__ acc_t load(const scalar_t* p, long long i) { return p[i]; }
__device__ __forceinline__ void store(scalar_t* p, long long i, acc_t v) { p[i] = v; }
"""

_DOUBLE_PRELUDE = r"""
typedef double scalar_t;
typedef double acc_t;
__device__ __forceinline__ acc_t vm_neg_inf() {
  return __longlong_as_double((long long)0xfff0000000000000ULL);
}
__device__ __forceinline__ acc_t load(const scalar_t* p, long long i) { return p[i]; }
__device__ __forceinline__ void store(scalar_t* p, long long i, acc_t v) { p[i] = v; }
"""

# IEEE binary16 in an unsigned short. On the device the conversions are single PTX cvt instructions; the
# portable branch (host emulation) does the same rounding (to nearest, ties to even) with integer arithmetic.
_HALF_PRELUDE = r"""
typedef unsigned short scalar_t;
typedef float acc_t;
__device__ __forceinline__ acc_t vm_neg_inf() { return __int_as_float((int)0xff800000u); }
__device__ __forceinline__ acc_t load(const scalar_t* p, long long i) {
#ifdef __CUDA_ARCH__
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p[i]));
  return f;
#else
  const unsigned int h = p[i];
  const unsigned int sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float
    const float mag = (float)man * 5.9604644775390625e-8f;
    return __uint_as_float(__float_as_uint(mag) | sign);
  }
  if (exp == 31) return __uint_as_float(sign | 0x7f800000u | (man << 13));
  return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
#endif
}
__device__ __forceinline__ void store(scalar_t* p, long long i, acc_t v) {
#ifdef __CUDA_ARCH__
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
  p[i] = h;
#else
  const unsigned int x = __float_as_uint(v), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  unsigned int h;
  if (ax > 0x7f800000u) h = 0x7e00u;                     // NaN
  else if (ax >= 0x477ff000u) h = 0x7c00u;               // rounds to infinity
  else if (ax < 0x38800000u) h = (unsigned int)rintf(__uint_as_float(ax) * 16777216.0f);  // subnormal / zero
  else { const unsigned int r = ax - 0x38000000u; h = (r + 0x0fffu + ((r >> 13) & 1u)) >> 13; }
  p[i] = (unsigned short)(sign | h);
#endif
}
"""

# bfloat16 is the top half of a float: widening is a shift; narrowing rounds to nearest, ties to even.
_BF16_PRELUDE = r"""
typedef unsigned short scalar_t;
typedef float acc_t;
__device__ __forceinline__ acc_t vm_neg_inf() { return __int_as_float((int)0xff800000u); }
__device__ __forceinline__ acc_t load(const scalar_t* p, long long i) {
  return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void store(scalar_t* p, long long i, acc_t v) {
  unsigned int x = __float_as_uint(v);
  if ((x & 0x7fffffffu) > 0x7f800000u) { p[i] = (unsigned short)((x >> 16) | 0x40u); return; }
  x += 0x7fffu + ((x >> 16) & 1u);
  p[i] = (unsigned short)(x >> 16);
}
"""

_PRELUDES = {"f32": _FLOAT_PRELUDE, "f64": _DOUBLE_PRELUDE, "f16": _HALF_PRELUDE, "bf16": _BF16_PRELUDE}


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        supported = ", ".join(map(str, DTYPE_NAMES))
        raise TypeError(f"no kernel for dtype {dtype}; supported: {supported}") from None


def prelude(dtype: torch.dtype) -> str:
    """Typedefs and conversions that a kernel source expects, for storage dtype ``dtype``."""
    name = dtype_name(dtype)
    acc = "double" if name == "f64" else "float"
    return _PRELUDES[name] + _COMMON.replace("ACC", acc)


@dataclass(frozen=True)
class KernelSource:
    """One CUDA translation unit: the kernels it defines and the dtypes it is compiled for."""

    name: str
    body: str
    kernels: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]

    def code(self, dtype: torch.dtype) -> str:
        """The complete source NVRTC compiles for ``dtype``."""
        if dtype not in self.dtypes:
            raise TypeError(f"{self.name}: not compiled for {dtype}; supported: {self.dtypes}")
        return f"// {self.name} ({dtype_name(dtype)})\n" + prelude(dtype) + self.body


# ----------------------------------------------------------------------------------------------- launching
Arg = torch.Tensor | int


class Runner(Protocol):
    """Something that runs a kernel of a :class:`KernelSource` on tensors: the GPU, or the host emulation."""

    #: threads per block the host code should use, and the cap on blocks per launch (grid-stride loops cover
    #: the rest).
    block: int
    max_blocks: int

    def __call__(self, source: KernelSource, dtype: torch.dtype, kernel: str, grid: int, block: int,
                 args: Sequence[Arg]) -> None: ...


def grid_size(work: int, per_block: int, max_blocks: int) -> int:
    """Blocks for ``work`` items at ``per_block`` items per block, capped (kernels use grid-stride loops)."""
    return max(1, min(max_blocks, -(-work // per_block)))


def cupy_usable() -> bool:
    """True when CuPy imports and sees a GPU (the kernels can run)."""
    try:
        import cupy
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    try:
        return bool(cupy.is_available())
    except Exception:  # noqa: BLE001
        return False


def _cupy_stream(device: torch.device):
    """CuPy's view of torch's current stream on ``device``, so kernels order with torch's own work."""
    import cupy

    stream = torch.cuda.current_stream(device)
    try:
        return cupy.cuda.Stream.from_external(stream)
    except (AttributeError, TypeError):  # older torch without __cuda_stream__
        return cupy.cuda.ExternalStream(stream.cuda_stream, device.index)


def kernel_arg(t: torch.Tensor) -> torch.Tensor:
    """The tensor a kernel sees: detached (DLPack refuses tensors that require grad), contiguous."""
    if not t.is_contiguous():
        raise ValueError("kernel arguments must be contiguous tensors")
    return t.detach()


class CupyRunner:
    """Runs kernels on CUDA tensors through CuPy: lazy NVRTC compile, torch's stream, DLPack zero-copy."""

    block = 256
    max_blocks = 65535

    def __init__(self) -> None:
        self._functions: dict[tuple[str, str, int, str], object] = {}
        self._lock = threading.Lock()

    def _function(self, source: KernelSource, dtype: torch.dtype, kernel: str, device_index: int):
        """The compiled kernel, compiled once per (source, dtype, device) on first use."""
        import cupy

        key = (source.name, dtype_name(dtype), device_index, kernel)
        fn = self._functions.get(key)
        if fn is None:
            with self._lock:
                if key in self._functions:  # another thread compiled it meanwhile
                    return self._functions[key]
                log.debug("compiling %s for %s on cuda:%d", source.name, dtype, device_index)
                module = cupy.RawModule(code=source.code(dtype), options=COMPILE_OPTIONS)
                for name in source.kernels:
                    self._functions[key[:3] + (name,)] = module.get_function(name)
                fn = self._functions[key]
        return fn

    def __call__(self, source: KernelSource, dtype: torch.dtype, kernel: str, grid: int, block: int,
                 args: Sequence[Arg]) -> None:
        import cupy
        import numpy as np

        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        device = tensors[0].device
        if device.type != "cuda" or any(t.device != device for t in tensors):
            raise ValueError(f"{kernel}: every tensor argument must be on one CUDA device")
        with cupy.cuda.Device(device.index), _cupy_stream(device):
            fn = self._function(source, dtype, kernel, device.index)
            kargs = tuple(cupy.from_dlpack(kernel_arg(a)) if isinstance(a, torch.Tensor) else np.int64(a)
                          for a in args)
            fn((grid,), (block,), kargs)


@functools.cache
def cupy_runner() -> CupyRunner:
    """The process-wide runner (one module cache per process)."""
    return CupyRunner()


# ------------------------------------------------------------------------------------------ NVRTC directly
def nvrtc_compile(code: str, arch: str, name: str = "kernel.cu",
                  options: Sequence[str] = COMPILE_OPTIONS) -> tuple[bytes, str]:
    """Compile ``code`` with NVRTC for ``arch`` (e.g. ``"sm_80"``) → (CUBIN, compiler log).

    Works on machines without a GPU or driver (only the NVRTC library is needed). Raises RuntimeError with the
    compiler log when compilation fails.
    """
    from cupy_backends.cuda.libs import nvrtc

    prog = nvrtc.createProgram(code, name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"-arch={arch}", *options])
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"NVRTC failed to compile {name} for {arch}: {e}\n"
                               f"{nvrtc.getProgramLog(prog)}") from None
        return nvrtc.getCUBIN(prog), nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)


def nvrtc_info() -> dict[str, object]:
    """Which NVRTC library CuPy loaded (path from the process map), its version and target architectures."""
    from cupy_backends.cuda.libs import nvrtc

    version = nvrtc.getVersion()  # loads the library
    archs = nvrtc.getSupportedArchs()
    path = None
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            for line in f:
                tail = line.split()[-1]
                if tail.rsplit("/", 1)[-1].startswith("libnvrtc.so"):
                    path = tail
                    break
    except OSError:
        pass
    return {"path": path, "version": tuple(version), "archs": tuple(archs)}
