"""Multi-scale deformable attention (Deformable DETR's op; PDVC/CM2 use it in 1-D), forward and backward.

``ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)``

* ``value`` [N, S, M, D]: the L feature levels flattened and concatenated along S (level l occupies
  ``level_start_index[l] .. + H_l*W_l``, row-major), M heads of D channels;
* ``spatial_shapes`` [L, 2] integer (H_l, W_l); ``level_start_index`` [L] integer;
* ``sampling_locations`` [N, Lq, M, L, P, 2] as (x, y), normalised so that [0, 1] spans the level;
* ``attention_weights`` [N, Lq, M, L, P] (already softmax-ed by the caller);
* returns [N, Lq, M*D]: for every query and head, sum over levels and points of weight × bilinear sample.

Sampling convention (the one the CUDA kernels of the originals and ``grid_sample(align_corners=False,
padding_mode='zeros')`` share): pixel coordinates are h = y·H − 0.5, w = x·W − 0.5, so the centre of pixel i
sits at x = (i + 0.5)/W; each of the four bilinear corners outside the level reads **zero** (zero padding, on
every path — PDVC's CPU fallback used border padding and disagreed with its kernel). A sample with no corner
inside (h ≤ −1, h ≥ H, w ≤ −1 or w ≥ W) contributes nothing and gets zero gradient. The derivative at exact
integer pixel coordinates is the one-sided (floor) derivative, like grid_sample's.

1-D (temporal) use: :func:`ms_deform_attn_1d` stacks (H=1, W=T_l) and (x=t, y=0.5): h = 0 exactly, so only the
two horizontal neighbours of a 1-D sample are read. Times outside [0, 1] fade to zero over half a step.

Dtypes: value float32/float64/float16/bfloat16. Arithmetic is float64 for float64 values, float32 otherwise
(half-precision values are read and written in half, accumulated in float). Locations and weights must match a
float32/float64 value; with a half-precision value they may be half or float32 and are used in float32. The
output has the value's dtype, gradients the dtype of their input.

Paths: CUDA tensors run the CuPy kernels (``_cupy``: NVRTC at first use, cached per dtype and device, launched
on torch's current stream, zero-copy DLPack); everything else runs :func:`ms_deform_attn_reference` (per-level
``grid_sample``, batched over all N — no batch-size restriction on either path), which is also the test
oracle. ``backend="torch"`` forces the reference, ``backend="cupy"`` the kernel. The CUDA path checks shapes
and dtypes but, to avoid a host sync per call, not the *values* of spatial_shapes/level_start_index against S.

Kernels: forward = one thread per output element (n, q, m, d), grid-stride. Backward = one warp per (n, q, m):
lanes stride over D (any D, including D not a power of two and D > 1024), ``atomicAdd`` into grad_value
(accumulated in float for half-precision values; the summation order makes grad_value non-deterministic in its
last bits), and grad_attn / grad_loc for each (level, point) reduced over D with warp shuffles and written
once (deterministic). Double backward is not supported on the kernel path.

Measured (``python -m bench.kernels``; table in its docstring): the CPU reference takes 2.3 ms
forward+backward at PDVC's N=1, Lq=10 and 72 ms at N=8, Lq=100 (one core of an AMD EPYC). The kernels' GPU
speed has not been measured yet (no GPU was available); their correctness is checked on the CPU by running the
exact CUDA source under :mod:`kernels._emulate`, and on a GPU by the ``gpu``-marked tests.
"""
from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._cupy import KernelSource, Runner, acc_dtype, cupy_runner, grid_size

log = logging.getLogger(__name__)

Backend = Literal["auto", "cupy", "torch"]

_SOURCE = r"""
// value layout [N, S, M, D]: position s of head m in batch n starts at ((n*S + s)*M + m)*D, so neighbouring
// positions of one head are `stride` = M*D elements apart.

struct Footprint {          // the bilinear footprint of one sampling point on one level
  long long off[4];         // offsets of the corners (h0,w0) (h0,w1) (h1,w0) (h1,w1); -1 = outside (reads 0)
  acc_t w[4];               // their bilinear weights
  acc_t lh, lw, hh, hw;     // fractional parts and their complements
};

// Locate (x, y) in [0,1]-normalised coordinates on an H x W level; false when no corner is inside.
__device__ __forceinline__ bool footprint(acc_t x, acc_t y, long long H, long long W, long long stride,
                                          Footprint& f) {
  const acc_t h = y * (acc_t)H - (acc_t)0.5, w = x * (acc_t)W - (acc_t)0.5;
  if (!(h > (acc_t)-1 && w > (acc_t)-1 && h < (acc_t)H && w < (acc_t)W)) return false;
  const acc_t hf = vm_floor(h), wf = vm_floor(w);
  const long long h0 = (long long)hf, w0 = (long long)wf;
  f.lh = h - hf; f.lw = w - wf; f.hh = (acc_t)1 - f.lh; f.hw = (acc_t)1 - f.lw;
  const bool top = h0 >= 0, bottom = h0 + 1 < H, left = w0 >= 0, right = w0 + 1 < W;
  f.off[0] = (top && left) ? (h0 * W + w0) * stride : -1;
  f.off[1] = (top && right) ? (h0 * W + w0 + 1) * stride : -1;
  f.off[2] = (bottom && left) ? ((h0 + 1) * W + w0) * stride : -1;
  f.off[3] = (bottom && right) ? ((h0 + 1) * W + w0 + 1) * stride : -1;
  f.w[0] = f.hh * f.hw; f.w[1] = f.hh * f.lw; f.w[2] = f.lh * f.hw; f.w[3] = f.lh * f.lw;
  return true;
}

// One thread per output element (n, q, m, d).
extern "C" __global__ void msda_forward(
    const scalar_t* __restrict__ value, const long long* __restrict__ shapes,
    const long long* __restrict__ starts, const acc_t* __restrict__ loc, const acc_t* __restrict__ attn,
    scalar_t* __restrict__ out,
    long long N, long long S, long long M, long long D, long long Lq, long long L, long long P) {
  const long long total = N * Lq * M * D, stride = M * D;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    const long long d = i % D, g = i / D;  // g = (n*Lq + q)*M + m
    const long long m = g % M, n = g / (Lq * M);
    const scalar_t* v = value + n * S * stride + m * D + d;
    const acc_t* gl = loc + g * L * P * 2;
    const acc_t* ga = attn + g * L * P;
    acc_t acc = 0;
    for (long long l = 0; l < L; ++l) {
      const long long H = shapes[2 * l], W = shapes[2 * l + 1];
      const scalar_t* vl = v + starts[l] * stride;
      for (long long p = 0; p < P; ++p) {
        const long long j = l * P + p;
        Footprint f;
        if (!footprint(gl[2 * j], gl[2 * j + 1], H, W, stride, f)) continue;
        acc_t s = 0;
        for (int c = 0; c < 4; ++c)
          if (f.off[c] >= 0) s += f.w[c] * load(vl, f.off[c]);
        acc += ga[j] * s;
      }
    }
    store(out, i, acc);
  }
}

__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One warp per (n, q, m); blockDim.x must be a multiple of 32. Every branch below depends only on the warp's
// (n, q, m, l, p), so all 32 lanes reach each shuffle together.
extern "C" __global__ void msda_backward(
    const scalar_t* __restrict__ value, const long long* __restrict__ shapes,
    const long long* __restrict__ starts, const acc_t* __restrict__ loc, const acc_t* __restrict__ attn,
    const scalar_t* __restrict__ grad_out, acc_t* __restrict__ grad_value, acc_t* __restrict__ grad_loc,
    acc_t* __restrict__ grad_attn,
    long long N, long long S, long long M, long long D, long long Lq, long long L, long long P) {
  const long long lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const long long groups = N * Lq * M, stride = M * D;
  for (long long g = (long long)blockIdx.x * warps + (threadIdx.x >> 5); g < groups;
       g += (long long)gridDim.x * warps) {
    const long long m = g % M, n = g / (Lq * M);
    const long long base = n * S * stride + m * D;
    const scalar_t* go = grad_out + g * D;
    const acc_t* gl = loc + g * L * P * 2;
    const acc_t* ga = attn + g * L * P;
    for (long long l = 0; l < L; ++l) {
      const long long H = shapes[2 * l], W = shapes[2 * l + 1];
      const scalar_t* vl = value + base + starts[l] * stride;
      acc_t* gvl = grad_value + base + starts[l] * stride;
      for (long long p = 0; p < P; ++p) {
        const long long j = l * P + p, jj = g * L * P + j;
        Footprint f;
        if (!footprint(gl[2 * j], gl[2 * j + 1], H, W, stride, f)) {
          if (lane == 0) { grad_attn[jj] = 0; grad_loc[2 * jj] = 0; grad_loc[2 * jj + 1] = 0; }
          continue;
        }
        const acc_t a = ga[j];
        acc_t s_attn = 0, s_h = 0, s_w = 0;
        for (long long d = lane; d < D; d += 32) {
          const acc_t gd = load(go, d);
          acc_t v[4];
          for (int c = 0; c < 4; ++c) {
            v[c] = 0;
            if (f.off[c] >= 0) {
              v[c] = load(vl, f.off[c] + d);
              atomicAdd(gvl + f.off[c] + d, f.w[c] * a * gd);
            }
          }
          s_attn += gd * (f.w[0] * v[0] + f.w[1] * v[1] + f.w[2] * v[2] + f.w[3] * v[3]);
          s_h += gd * (f.hw * (v[2] - v[0]) + f.lw * (v[3] - v[1]));  // d(sample)/dh
          s_w += gd * (f.hh * (v[1] - v[0]) + f.lh * (v[3] - v[2]));  // d(sample)/dw
        }
        s_attn = warp_sum(s_attn);
        s_h = warp_sum(s_h);
        s_w = warp_sum(s_w);
        if (lane == 0) {
          grad_attn[jj] = s_attn;
          grad_loc[2 * jj] = a * s_w * (acc_t)W;      // dw/dx = W
          grad_loc[2 * jj + 1] = a * s_h * (acc_t)H;  // dh/dy = H
        }
      }
    }
  }
}
"""

SOURCE = KernelSource(
    name="msda",
    body=_SOURCE,
    kernels=("msda_forward", "msda_backward"),
    dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16),
)

_FLOATS = (torch.float32, torch.float64)
_HALVES = (torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------------------- checks
def _check_inputs(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                  sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> None:
    """Shape, dtype and device checks with messages that name the argument and the expected layout."""
    for name, t in (("value", value), ("spatial_shapes", spatial_shapes),
                    ("level_start_index", level_start_index), ("sampling_locations", sampling_locations),
                    ("attention_weights", attention_weights)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"ms_deform_attn: {name} must be a torch.Tensor, got {type(t).__name__}")
    if value.dim() != 4:
        raise ValueError(f"ms_deform_attn: value must be [N, S, M, D], got shape {tuple(value.shape)}")
    N, S, M, D = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"ms_deform_attn: spatial_shapes must be [L, 2], got {tuple(spatial_shapes.shape)}")
    L = spatial_shapes.shape[0]
    if level_start_index.shape != (L,):
        raise ValueError(f"ms_deform_attn: level_start_index must be [L={L}], got "
                         f"{tuple(level_start_index.shape)}")
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"ms_deform_attn: {name} must be an integer tensor, got {t.dtype}")
    loc, attn = sampling_locations, attention_weights
    if loc.dim() != 6 or loc.shape[0] != N or loc.shape[2] != M or loc.shape[3] != L or loc.shape[5] != 2:
        raise ValueError(f"ms_deform_attn: sampling_locations must be [N={N}, Lq, M={M}, L={L}, P, 2], got "
                         f"{tuple(loc.shape)}")
    Lq, P = loc.shape[1], loc.shape[4]
    if attn.shape != (N, Lq, M, L, P):
        raise ValueError(f"ms_deform_attn: attention_weights must be [N, Lq, M, L, P] = "
                         f"{(N, Lq, M, L, P)}, got {tuple(attn.shape)}")
    if value.dtype not in _FLOATS + _HALVES:
        raise TypeError(f"ms_deform_attn: value dtype {value.dtype} not supported "
                        f"(float32/64, float16, bfloat16)")
    for name, t in (("sampling_locations", loc), ("attention_weights", attn)):
        if value.dtype in _FLOATS and t.dtype != value.dtype:
            raise TypeError(f"ms_deform_attn: {name} is {t.dtype} but value is {value.dtype}; "
                            f"they must match")
        if value.dtype in _HALVES and t.dtype not in (torch.float32, *_HALVES):
            raise TypeError(f"ms_deform_attn: {name} is {t.dtype}; with a {value.dtype} value use float32 "
                            f"or half precision")
    for name, t in (("sampling_locations", loc), ("attention_weights", attn)):
        if t.device != value.device:
            raise ValueError(f"ms_deform_attn: {name} is on {t.device} but value is on {value.device}")


def _check_levels(S: int, shapes: list[list[int]], starts: list[int]) -> None:
    """Value-level checks (host values needed): every level lies inside the S positions of value."""
    for level, ((H, W), start) in enumerate(zip(shapes, starts)):
        if H <= 0 or W <= 0:
            raise ValueError(f"ms_deform_attn: spatial_shapes[{level}] = ({H}, {W}) must be positive")
        if start < 0 or start + H * W > S:
            raise ValueError(f"ms_deform_attn: level {level} spans positions {start}..{start + H * W} "
                             f"but value has S={S}")


# --------------------------------------------------------------------------------------------- reference
def ms_deform_attn_reference(value: torch.Tensor, spatial_shapes: torch.Tensor,
                             level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                             attention_weights: torch.Tensor) -> torch.Tensor:
    """Pure-torch MSDA via per-level ``grid_sample`` (bilinear, zeros, align_corners=False); differentiable.

    The CPU path and the oracle for the kernels. Half-precision values are computed in float32 and the result
    cast back, matching the kernels' float accumulation.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    _check_levels(S, shapes, starts)
    cdt = acc_dtype(value.dtype)
    v_all = value.to(cdt)
    grid = 2 * sampling_locations.to(cdt) - 1  # grid_sample's [-1, 1] coordinates
    weights = attention_weights.to(cdt)
    out = value.new_zeros((N * M, D, Lq), dtype=cdt)
    for level, ((H, W), start) in enumerate(zip(shapes, starts)):
        v = v_all[:, start:start + H * W].permute(0, 2, 3, 1).reshape(N * M, D, H, W)
        g = grid[:, :, :, level].permute(0, 2, 1, 3, 4).reshape(N * M, Lq, P, 2)
        # [N*M, D, Lq, P]
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        w = weights[:, :, :, level].permute(0, 2, 1, 3).reshape(N * M, 1, Lq, P)
        out = out + (sampled * w).sum(-1)
    return out.view(N, M, D, Lq).permute(0, 3, 1, 2).reshape(N, Lq, M * D).to(value.dtype)


# ------------------------------------------------------------------------------------------------ kernels
def _kernel_inputs(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor):
    """Contiguous tensors in the dtypes the kernels expect (locations/weights in the arithmetic dtype)."""
    acc = acc_dtype(value.dtype)
    dev = value.device
    return (value.contiguous(),
            spatial_shapes.to(device=dev, dtype=torch.int64).contiguous(),
            level_start_index.to(device=dev, dtype=torch.int64).contiguous(),
            sampling_locations.to(acc).contiguous(),
            attention_weights.to(acc).contiguous())


def _launch_forward(run: Runner, value, shapes, starts, loc, attn) -> torch.Tensor:
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = loc.shape
    out = value.new_empty((N, Lq, M, D))
    if out.numel():
        block = run.block
        run(SOURCE, value.dtype, "msda_forward", grid_size(out.numel(), block, run.max_blocks), block,
            (value, shapes, starts, loc, attn, out, N, S, M, D, Lq, L, P))
    return out.view(N, Lq, M * D)


def _launch_backward(run: Runner, value, shapes, starts, loc, attn, grad_out):
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = loc.shape
    acc = acc_dtype(value.dtype)
    grad_value = torch.zeros(value.shape, dtype=acc, device=value.device)
    grad_loc = torch.zeros(loc.shape, dtype=acc, device=value.device)
    grad_attn = torch.zeros(attn.shape, dtype=acc, device=value.device)
    groups = N * Lq * M
    if groups and D:
        block = run.block
        if block % 32:
            raise ValueError("msda_backward needs a block size that is a multiple of 32")
        run(SOURCE, value.dtype, "msda_backward", grid_size(groups, block // 32, run.max_blocks), block,
            (value, shapes, starts, loc, attn, grad_out, grad_value, grad_loc, grad_attn,
             N, S, M, D, Lq, L, P))
    return grad_value, grad_loc, grad_attn


class MSDeformAttnFunction(torch.autograd.Function):
    """Autograd wrapper around the kernels; ``runner`` decides where they run (GPU, or host emulation)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, runner):
        inputs = _kernel_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights)
        ctx.save_for_backward(*inputs)
        ctx.runner = runner
        ctx.grad_dtypes = (value.dtype, sampling_locations.dtype, attention_weights.dtype)
        return _launch_forward(runner, *inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, shapes, starts, loc, attn = ctx.saved_tensors
        N, S, M, D = value.shape
        grad_out = grad_output.to(value.dtype).reshape(N, -1, M, D).contiguous()
        gv, gl, ga = _launch_backward(ctx.runner, value, shapes, starts, loc, attn, grad_out)
        vdt, ldt, adt = ctx.grad_dtypes
        return gv.to(vdt), None, None, gl.to(ldt), ga.to(adt), None


def ms_deform_attn_kernel(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                          sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                          runner: Runner) -> torch.Tensor:
    """The kernel path with an explicit runner (:func:`kernels._cupy.cupy_runner` or the host emulation)."""
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if value.device.type == "cpu":  # host values are free here: check the level layout too
        _check_levels(value.shape[1], spatial_shapes.tolist(), level_start_index.tolist())
    return MSDeformAttnFunction.apply(value, spatial_shapes, level_start_index, sampling_locations,
                                      attention_weights, runner)


# ------------------------------------------------------------------------------------------------ public
def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                   backend: Backend = "auto") -> torch.Tensor:
    """Multi-scale deformable attention → [N, Lq, M*D]: CuPy kernel for CUDA tensors, else the reference."""
    if backend not in ("auto", "cupy", "torch"):
        raise ValueError(f"ms_deform_attn: backend must be 'auto', 'cupy' or 'torch', got {backend!r}")
    use_kernel = backend == "cupy" or (backend == "auto" and value.is_cuda)
    if not use_kernel:
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights)
    if not value.is_cuda:
        raise ValueError("ms_deform_attn: backend='cupy' needs CUDA tensors")
    return ms_deform_attn_kernel(value, spatial_shapes, level_start_index, sampling_locations,
                                 attention_weights, cupy_runner())


def stack_1d(lengths: torch.Tensor, locations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D → 2-D arguments: shapes (1, T_l) and locations (x = t, y = 0.5), as PDVC calls the 2-D op."""
    if lengths.dim() != 1:
        raise ValueError(f"ms_deform_attn_1d: lengths must be [L], got {tuple(lengths.shape)}")
    if locations.dim() != 5:
        raise ValueError(f"ms_deform_attn_1d: locations must be [N, Lq, M, L, P], "
                         f"got {tuple(locations.shape)}")
    shapes = torch.stack([torch.ones_like(lengths), lengths], dim=1)
    loc2 = torch.stack([locations, torch.full_like(locations, 0.5)], dim=-1)
    return shapes, loc2


def ms_deform_attn_1d(value: torch.Tensor, lengths: torch.Tensor, level_start_index: torch.Tensor,
                      locations: torch.Tensor, weights: torch.Tensor,
                      backend: Backend = "auto") -> torch.Tensor:
    """Temporal MSDA: value [N, S, M, D] with L levels of lengths T_l, locations/weights [N, Lq, M, L, P].

    A location t in [0, 1] samples between frames with centres at (i + 0.5)/T_l; zero outside the sequence.
    """
    shapes, loc2 = stack_1d(lengths, locations)
    return ms_deform_attn(value, shapes, level_start_index, loc2, weights, backend=backend)
