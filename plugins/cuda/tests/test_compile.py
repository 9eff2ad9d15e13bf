"""Every CUDA C source compiles with NVRTC for sm_80 and sm_90 — no GPU needed.

NVRTC is a library (``pip install nvidia-cuda-nvrtc-cu12``, which CI installs through the
plugin's ``compile`` extra); it compiles without a driver or a device, so a syntax or type error
in a kernel fails here instead of on the first GPU that runs it.
"""

from __future__ import annotations

import pytest

from mlplug_cuda import compiler

ARCHS = ("sm_80", "sm_90")


@pytest.fixture(scope="module")
def nvrtc() -> str:
    path = compiler.find_nvrtc()
    if path is None:
        pytest.skip("NVRTC is not installed (pip install -e './plugins/cuda[compile]')")
    return path


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", sorted(compiler.SOURCES))
def test_source_compiles(nvrtc: str, name: str, arch: str) -> None:
    ok, log = compiler.compile_check(name, arch, nvrtc)
    assert ok, log


def test_a_broken_source_fails_with_the_compiler_log(
    nvrtc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compiler, "source", lambda name: "__global__ void k() { int x = ; }")
    ok, log = compiler.compile_check("mmvq.cu", "sm_80", nvrtc)
    assert not ok
    assert "error" in log


def test_every_kernel_the_plugin_launches_is_defined() -> None:
    from mlplug_cuda.kernels.mmvq import TYPES

    text = compiler.source("mmvq.cu")
    assert 'extern "C" __global__ void quantize_q8_1(' in text
    for kernel in TYPES.values():
        assert f"MMVQ_KERNEL({kernel}, " in text, kernel
    attention = compiler.source("attention.cu")
    for kernel in ("attn_partial", "attn_combine"):
        assert f'extern "C" __global__ void {kernel}(' in attention
