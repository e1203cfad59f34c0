"""The dtype preludes' half-precision conversions (used by the host emulation, and for bfloat16 also on the
device) agree bit-for-bit with torch; the emulated runner rejects mis-typed arguments."""
from __future__ import annotations

import pytest
import torch

from kernels import _emulate
from kernels._cupy import TEST_ARCHS, KernelSource, nvrtc_compile

needs_cxx = pytest.mark.skipif(_emulate.compiler() is None,
                               reason="no C++ compiler for the CUDA host emulation")

CONVERT = KernelSource(
    name="convert",
    body=r"""
extern "C" __global__ void widen(const scalar_t* __restrict__ x, acc_t* __restrict__ y, long long n) {
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
    y[i] = load(x, i);
}
extern "C" __global__ void narrow(const acc_t* __restrict__ x, scalar_t* __restrict__ y, long long n) {
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
    store(y, i, x[i]);
}
""",
    kernels=("widen", "narrow"),
    dtypes=(torch.float16, torch.bfloat16),
)


def all_bit_patterns(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)


def tricky_floats() -> torch.Tensor:
    """Random floats over the half range and beyond, plus exact rounding midpoints and the special values."""
    g = torch.Generator().manual_seed(0)
    mags = torch.exp2(torch.rand(20000, generator=g) * 50 - 30)  # 2^-30 .. 2^20
    signs = torch.where(torch.rand(20000, generator=g) < 0.5, -1.0, 1.0)
    halves = all_bit_patterns(torch.float16).float()
    halves = halves[torch.isfinite(halves)]
    h_mid = (halves[:-1] + halves[1:]) / 2  # ties between neighbouring halves (and their subnormals)
    bf = all_bit_patterns(torch.bfloat16).float()
    bf = bf[torch.isfinite(bf)]
    b_mid = (bf[:-1] + bf[1:]) / 2
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 65504.0, 65519.9, 65520.0,
                            6.1035156e-05, 5.9604645e-08, 2.9802322e-08, 2.9802326e-08, 3.4028235e38])
    return torch.cat([mags * signs, h_mid, b_mid, special])


@needs_cxx
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_widen_every_bit_pattern(dtype):
    x = all_bit_patterns(dtype)
    y = torch.empty(65536, dtype=torch.float32)
    _emulate.EmulatedRunner(block=64, max_blocks=4)(CONVERT, dtype, "widen", 4, 64, (x, y, 65536))
    want = x.float()
    ok = (y.view(torch.int32) == want.view(torch.int32)) | (torch.isnan(y) & torch.isnan(want))
    assert ok.all(), f"first mismatch at bits {int((~ok).nonzero()[0])}"


@needs_cxx
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_narrow_rounds_to_nearest_even(dtype):
    x = tricky_floats()
    y = torch.empty(x.numel(), dtype=dtype)
    _emulate.EmulatedRunner(block=64, max_blocks=4)(CONVERT, dtype, "narrow", 4, 64, (x, y, x.numel()))
    want = x.to(dtype)
    ok = (y.view(torch.int16) == want.view(torch.int16)) | (torch.isnan(y) & torch.isnan(want))
    bad = (~ok).nonzero().flatten()
    assert bad.numel() == 0, f"{bad.numel()} mismatches, e.g. {x[bad[:5]].tolist()} -> {y[bad[:5]].tolist()}"


@pytest.mark.parametrize("arch", TEST_ARCHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conversion_kernels_compile_for_the_device(dtype, arch):
    _, compile_log = nvrtc_compile(CONVERT.code(dtype), arch)
    assert compile_log.strip() == ""


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_device_conversions_match_torch(dtype):
    from kernels._cupy import cupy_runner

    run = cupy_runner()
    x = all_bit_patterns(dtype).cuda()
    y = torch.empty(65536, dtype=torch.float32, device="cuda")
    run(CONVERT, dtype, "widen", 256, 256, (x, y, 65536))
    assert ((y == x.float()) | torch.isnan(y)).all()
    f = tricky_floats().cuda()
    h = torch.empty(f.numel(), dtype=dtype, device="cuda")
    run(CONVERT, dtype, "narrow", 256, 256, (f, h, f.numel()))
    assert ((h == f.to(dtype)) | (torch.isnan(h) & torch.isnan(f))).all()


@needs_cxx
def test_emulated_runner_checks_arguments():
    run = _emulate.EmulatedRunner(block=32, max_blocks=2)
    x = all_bit_patterns(torch.float16)
    y = torch.empty(65536, dtype=torch.float32)
    with pytest.raises(TypeError, match="parameter y wants a contiguous CPU torch.float32 tensor"):
        run(CONVERT, torch.float16, "widen", 1, 32, (x, y.double(), 65536))
    with pytest.raises(TypeError, match="parameter n is a long long"):
        run(CONVERT, torch.float16, "widen", 1, 32, (x, y, y))
    with pytest.raises(TypeError, match="2 arguments for 3 parameters"):
        run(CONVERT, torch.float16, "widen", 1, 32, (x, y))
    with pytest.raises(ValueError, match="outside 1..2"):
        run(CONVERT, torch.float16, "widen", 3, 32, (x, y, 65536))
