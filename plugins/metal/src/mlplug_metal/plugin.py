"""The light descriptor of the ``metal`` backend (entry point ``mlplug.backends: metal``).

Importing this module must stay cheap: it imports neither MLX nor numpy. :func:`probe` decides
from the platform and ``importlib.util.find_spec`` alone; ``load`` imports MLX.

Where the backend runs:

* macOS on Apple silicon with ``mlx`` installed (``pip install "mlplug[metal]"``): the Metal GPU.
* Anywhere else the backend is unavailable ("no Metal GPU"), unless ``MLPLUG_METAL_DEVICE=cpu``
  selects MLX's CPU device (``pip install "mlx[cpu]"`` on Linux). The same kernels then run on
  the CPU; this is how CI runs the conformance suite for this plugin.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from collections.abc import Sequence

from mlplug.device import BackendParams, Device, EnginePlugin, Registrar, hookimpl

__all__ = [
    "ENV_DEVICE",
    "PLUGIN",
    "mlplug_memory_settings",
    "mlplug_register_backends",
    "probe",
    "wanted_device",
]

ENV_DEVICE = "MLPLUG_METAL_DEVICE"
"""``gpu`` (default) or ``cpu``: which MLX device the ``Metal`` device computes on."""

INSTALL_HINT = 'pip install "mlplug[metal]"'
_LINUX_HINT = 'pip install "mlplug[metal]" "mlx[cpu]" and set MLPLUG_METAL_DEVICE=cpu'


def wanted_device() -> str:
    """Return ``"gpu"`` or ``"cpu"`` from ``MLPLUG_METAL_DEVICE`` (default ``"gpu"``).

    Raises:
        ValueError: The variable holds anything else.
    """
    text = os.environ.get(ENV_DEVICE, "").strip().lower() or "gpu"
    if text not in ("gpu", "cpu"):
        raise ValueError(f"{ENV_DEVICE}={text!r}: expected 'gpu' or 'cpu'")
    return text


def _apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def _mlx_installed() -> bool:
    try:
        return importlib.util.find_spec("mlx.core") is not None
    except (ImportError, ValueError):
        return False


def probe() -> tuple[bool, str]:
    """Tell cheaply whether the backend can run here, and if not why (never raises)."""
    try:
        device = wanted_device()
    except ValueError as err:
        return False, str(err)
    if device == "gpu" and not _apple_silicon():
        return False, (
            f"no Metal GPU on {sys.platform}/{platform.machine()} (MLX's Metal backend needs "
            f"macOS on Apple silicon; to run on MLX's CPU device: {_LINUX_HINT})"
        )
    if not _mlx_installed():
        hint = INSTALL_HINT if device == "gpu" else _LINUX_HINT
        return False, f"the mlx package is not installed ({hint})"
    return True, ""


def _load(params: BackendParams) -> Sequence[Device]:
    from mlplug_metal.device import load

    return load(params)


PLUGIN = EnginePlugin(
    name="metal",
    priority=90,
    probe=probe,
    load=_load,
    install_hint=INSTALL_HINT,
)
"""The ``metal`` backend: the host CPU device (``mlplug-cpu``) and the MLX device ``Metal``."""


@hookimpl
def mlplug_register_backends(registry: Registrar) -> None:
    """Register the ``metal`` backend."""
    PLUGIN.register(registry)


@hookimpl
def mlplug_memory_settings(
    backend: str, gpus: int, gpu_memory: int | None, cpu_memory: int | None
) -> dict[str, str] | None:
    """Set the memory caps for testing; the device count is fixed at one GPU (``Metal``)."""
    if backend != PLUGIN.name or gpus != 1:
        return None
    return {
        "MLPLUG_METAL_MEMORY_LIMIT": str(gpu_memory) if gpu_memory is not None else "",
        "MLPLUG_CPU_MEMORY_LIMIT": str(cpu_memory) if cpu_memory is not None else "",
    }
