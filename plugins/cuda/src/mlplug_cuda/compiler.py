"""The CUDA C sources of the plugin, compiled with NVRTC.

On a GPU, :func:`function` compiles a source once per process and device with
``cupy.RawModule`` (NVRTC; cupy also keeps compiled binaries in its on-disk kernel cache) and
returns the kernel. :func:`compile_check` compiles a source for a given architecture through
NVRTC's C API (ctypes), which needs no GPU and no driver: CI uses it for sm_80 and sm_90 so that
a syntax or type error in a kernel cannot land. The sources include no CUDA header (half
conversion and dp4a are inline PTX), so NVRTC alone suffices.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import importlib.util
import os
from importlib import resources
from typing import Any

__all__ = ["SOURCES", "compile_check", "find_nvrtc", "function", "source"]

SOURCES: dict[str, tuple[str, ...]] = {
    "mmvq.cu": ("common.cuh", "codes.cuh", "mmvq.cu"),
    "attention.cu": ("common.cuh", "attention.cu"),
}
"""The CUDA C sources (``kernels/cuda/``) and the files concatenated to compile each."""

_OPTIONS = ("--std=c++17",)


def source(name: str) -> str:
    """Return the full text NVRTC compiles for ``name`` (the shared helpers first)."""
    folder = resources.files("mlplug_cuda.kernels") / "cuda"
    return "\n".join((folder / part).read_text(encoding="utf-8") for part in SOURCES[name])


@functools.cache
def _module(name: str, device: int) -> Any:
    import cupy

    with cupy.cuda.Device(device):
        return cupy.RawModule(code=source(name), options=_OPTIONS)


def function(name: str, kernel: str, device: int) -> Any:
    """Return kernel ``kernel`` of source ``name`` compiled for GPU ``device`` (cached)."""
    return _module(name, device).get_function(kernel)


def find_nvrtc() -> str | None:
    """Return a path or soname of the NVRTC library, or ``None`` when none is found.

    Looks in the pip wheels (``nvidia-cuda-nvrtc-cu12``, CUDA 13's ``nvidia-cuda-nvrtc``),
    then ``$CUDA_PATH``/``$CUDA_HOME``, then the system library path. Never raises.
    """
    candidates: list[str] = []
    for package in ("nvidia.cuda_nvrtc", "nvidia.cu13", "nvidia"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        for root in (spec.submodule_search_locations or []) if spec else []:
            candidates += sorted(
                glob.glob(os.path.join(root, "**", "libnvrtc.so*"), recursive=True)
            )
    for variable in ("CUDA_PATH", "CUDA_HOME"):
        home = os.environ.get(variable)
        if home:
            candidates += sorted(glob.glob(os.path.join(home, "lib*", "libnvrtc.so*")))
    found = ctypes.util.find_library("nvrtc")
    if found:
        candidates.append(found)
    for path in candidates:
        if "builtins" not in os.path.basename(path) and ".alt." not in os.path.basename(path):
            return path
    return None


def compile_check(name: str, arch: str, library: str | None = None) -> tuple[bool, str]:
    """Compile source ``name`` for ``arch`` (``sm_80``) with NVRTC; return ``(ok, log)``.

    Raises:
        OSError: No NVRTC library could be loaded.
    """
    path = library or find_nvrtc()
    if path is None:
        raise OSError("NVRTC not found (pip install nvidia-cuda-nvrtc-cu12)")
    lib = ctypes.CDLL(path)
    prog = ctypes.c_void_p()
    text = source(name).encode()
    status = lib.nvrtcCreateProgram(ctypes.byref(prog), text, name.encode(), 0, None, None)
    if status != 0:
        return False, f"nvrtcCreateProgram failed with status {status}"
    try:
        options = [f"--gpu-architecture={arch}".encode(), *(o.encode() for o in _OPTIONS)]
        argv = (ctypes.c_char_p * len(options))(*options)
        status = lib.nvrtcCompileProgram(prog, len(options), argv)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        return status == 0, log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
