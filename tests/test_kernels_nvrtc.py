"""Every CUDA source compiles with NVRTC for explicit architectures, without a GPU and without warnings.

NVRTC missing is a failure, not a skip: CuPy (pinned in requirements.txt) brings it, and without it no kernel
can run on any machine.
"""
from __future__ import annotations

import logging

import pytest

from kernels import msda, topk
from kernels._cupy import TEST_ARCHS, dtype_name, nvrtc_compile, nvrtc_info

log = logging.getLogger(__name__)

SOURCES = [msda.SOURCE, topk.SOURCE]
COMBOS = [(s, d, a) for s in SOURCES for d in s.dtypes for a in TEST_ARCHS]


def test_nvrtc_library_is_loaded():
    info = nvrtc_info()  # raises if CuPy's NVRTC binding or the library is missing
    log.info("NVRTC %s.%s from %s", *info["version"], info["path"])
    assert info["path"], "could not tell which libnvrtc CuPy loaded"
    assert {80, 90} <= set(info["archs"]), f"NVRTC {info['version']} cannot target sm_80/90: {info['archs']}"


@pytest.mark.parametrize("source, dtype, arch", COMBOS,
                         ids=[f"{s.name}-{dtype_name(d)}-{a}" for s, d, a in COMBOS])
def test_source_compiles_without_warnings(source, dtype, arch):
    cubin, compile_log = nvrtc_compile(source.code(dtype), arch, name=f"{source.name}.cu")
    assert compile_log.strip() == "", f"NVRTC warnings for {source.name}/{dtype}/{arch}:\n{compile_log}"
    assert cubin[:4] == b"\x7fELF", "NVRTC did not return a CUBIN"
    for kernel in source.kernels:  # extern "C": the symbol is the plain name
        assert kernel.encode() in cubin, f"{kernel} missing from the {arch} binary"


def test_compile_errors_are_reported_with_the_log():
    with pytest.raises(RuntimeError, match="NVRTC failed to compile broken.cu for sm_80"):
        nvrtc_compile('extern "C" __global__ void k() { undefined_name(); }', "sm_80", name="broken.cu")
