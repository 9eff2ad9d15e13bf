"""The light descriptor of the ``cuda`` backend (entry point ``mlplug.backends: cuda``).

Importing this module must stay cheap: it imports neither cupy nor numpy. :func:`probe` answers
``mlplug backends`` from the standard library alone, each failure with its own reason:

* ``MLPLUG_CUDA_EMULATE=N`` (N >= 0): available, ``N`` emulated GPUs computing with numpy;
* cupy not installed → the pip command (CUDA 12: ``mlplug[cuda]``; CUDA 13: ``mlplug[cuda13]``);
* no NVIDIA driver (``libcuda.so.1`` cannot be loaded);
* the driver reports no CUDA device (``cuInit``/``cuDeviceGetCount``);
* the driver is older than the CUDA major version of the installed cupy wheel;
* no NVRTC library (the kernels are compiled at run time).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mlplug.device import BackendParams, Device, EnginePlugin, hookimpl
from mlplug_cuda.compiler import find_nvrtc

if TYPE_CHECKING:
    from mlplug.registry import Registry

__all__ = [
    "ENV_EMULATE",
    "INSTALL_HINT",
    "PLUGIN",
    "emulated_gpus",
    "mlplug_memory_settings",
    "mlplug_register_backends",
    "probe",
]

INSTALL_HINT = 'pip install "mlplug[cuda]" (CUDA 12) or "mlplug[cuda13]" (CUDA 13)'
_NVRTC_HINT = "pip install nvidia-cuda-nvrtc-cu12 (CUDA 12) or nvidia-cuda-nvrtc (CUDA 13)"
_CUPY_WHEELS = {"cupy-cuda12x": 12, "cupy-cuda13x": 13, "cupy-cuda11x": 11}
_CUDA_ERROR_NO_DEVICE = 100

ENV_EMULATE = "MLPLUG_CUDA_EMULATE"
"""``N`` (>= 0): present ``N`` emulated GPUs computing with numpy instead of cupy (unset or empty:
real GPUs; ``0``: the host CPU device only, as the memory tests need)."""


def emulated_gpus() -> int | None:
    """Return ``N`` from ``MLPLUG_CUDA_EMULATE``, or ``None`` when unset or empty.

    Raises:
        ValueError: The value is not a whole number >= 0.
    """
    text = os.environ.get(ENV_EMULATE, "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"{ENV_EMULATE}={text!r}: expected a GPU count >= 0, e.g. 2")
    return int(text)


def _cupy_installed() -> bool:
    try:
        return importlib.util.find_spec("cupy") is not None
    except (ImportError, ValueError):
        return False


def _cupy_cuda_major() -> int | None:
    """Return the CUDA major version the installed cupy wheel is built for (None: unknown)."""
    for name, major in _CUPY_WHEELS.items():
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return major
    return None


def _load_driver() -> ctypes.CDLL | None:
    """Return the CUDA driver library, or None when it cannot be loaded."""
    for name in ("libcuda.so.1", ctypes.util.find_library("cuda")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _driver_state(driver: ctypes.CDLL) -> tuple[int, int, int]:
    """Return ``(cuInit status, device count, driver version)`` (version as 12040 for 12.4)."""
    status = int(driver.cuInit(0))
    count, version = ctypes.c_int(0), ctypes.c_int(0)
    if status == 0:
        driver.cuDeviceGetCount(ctypes.byref(count))
    driver.cuDriverGetVersion(ctypes.byref(version))
    return status, count.value, version.value


def probe() -> tuple[bool, str]:
    """Tell cheaply whether the backend can run here, and if not why (never raises)."""
    try:
        if emulated_gpus() is not None:
            return True, ""
    except ValueError as err:
        return False, str(err)
    if not _cupy_installed():
        return False, f"cupy is not installed ({INSTALL_HINT})"
    driver = _load_driver()
    if driver is None:
        return False, (
            "no NVIDIA driver: libcuda.so.1 cannot be loaded (install the NVIDIA driver; "
            f"{ENV_EMULATE}=N emulates N GPUs with numpy for testing)"
        )
    try:
        status, count, version = _driver_state(driver)
    except (AttributeError, OSError) as err:
        return False, f"the CUDA driver library is unusable: {err}"
    if status == _CUDA_ERROR_NO_DEVICE or (status == 0 and count == 0):
        return False, "no CUDA device: the NVIDIA driver reports no GPU"
    if status != 0:
        return False, f"the CUDA driver failed to initialise (cuInit error {status})"
    needed = _cupy_cuda_major()
    if needed is not None and version // 1000 < needed:
        supported = f"{version // 1000}.{version % 1000 // 10}"
        return False, (
            f"the NVIDIA driver is too old: it supports CUDA {supported}, the installed cupy "
            f"needs CUDA {needed} (update the driver, or install the cupy wheel of an older CUDA)"
        )
    if find_nvrtc() is None:
        return False, f"NVRTC (libnvrtc) not found: the kernels compile at run time ({_NVRTC_HINT})"
    return True, ""


def _load(params: BackendParams) -> Sequence[Device]:
    from mlplug_cuda.device import load

    return load(params)


PLUGIN = EnginePlugin(
    name="cuda",
    priority=100,
    probe=probe,
    load=_load,
    install_hint=INSTALL_HINT,
)
"""The ``cuda`` backend: the host CPU device (``mlplug-cpu``) and one device per GPU."""


@hookimpl
def mlplug_register_backends(registry: Registry) -> None:
    """Register the ``cuda`` backend."""
    PLUGIN.register(registry)


@hookimpl
def mlplug_memory_settings(
    backend: str, gpus: int, gpu_memory: int | None, cpu_memory: int | None
) -> dict[str, str] | None:
    """Present ``gpus`` GPUs (with their cap) for the suite's memory mode.

    The machine's real GPUs when it has at least ``gpus`` (>= 1) and emulation is off;
    otherwise ``gpus`` emulated ones (their count is free to choose).
    """
    if backend != PLUGIN.name:
        return None
    real = 0
    if gpus >= 1 and os.environ.get(ENV_EMULATE, "").strip() == "" and probe()[0]:
        driver = _load_driver()
        real = _driver_state(driver)[1] if driver is not None else 0
    return {
        ENV_EMULATE: "" if 1 <= gpus <= real else str(gpus),
        "MLPLUG_CUDA_MEMORY_LIMIT": str(gpu_memory) if gpu_memory is not None else "",
        "MLPLUG_CPU_MEMORY_LIMIT": str(cpu_memory) if cpu_memory is not None else "",
    }
