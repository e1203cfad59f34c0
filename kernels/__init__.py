"""Custom ops as CuPy raw kernels with pure-torch references.

* :mod:`kernels.msda` — multi-scale deformable attention, 1-D and 2-D, forward and backward
  (``ms_deform_attn``, ``ms_deform_attn_1d``);
* :mod:`kernels.topk` — fused cosine similarity + top-k against a memory bank, with exclusions
  (``cosine_topk``).

Each op takes CUDA tensors to its CuPy kernel (compiled by NVRTC at first use, no build step) and everything
else to its reference, so model code imports one function per op and never cares about the device.
"""
