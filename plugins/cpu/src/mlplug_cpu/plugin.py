"""The light descriptor of the ``cpu`` backend (entry point ``mlplug.backends: cpu``).

Importing this module must stay cheap: it imports no numpy. ``load`` imports the device
module, and with it numpy, only when a backend is built.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlplug.device import BackendParams, Device, EnginePlugin, Registrar, hookimpl

__all__ = ["PLUGIN", "mlplug_register_backends"]


def _probe() -> tuple[bool, str]:
    # numpy is a hard dependency of this distribution, so the CPU device is always there.
    return True, ""


def _load(params: BackendParams) -> Sequence[Device]:
    from mlplug_cpu.device import load

    return load(params)


PLUGIN = EnginePlugin(
    name="cpu",
    priority=0,
    probe=_probe,
    load=_load,
    install_hint='pip install "mlplug[cpu]"',
)
"""The ``cpu`` backend: one CPU device plus any simulated GPUs (see :mod:`mlplug_cpu.device`)."""


@hookimpl
def mlplug_register_backends(registry: Registrar) -> None:
    """Register the ``cpu`` backend."""
    PLUGIN.register(registry)


@hookimpl
def mlplug_memory_settings(
    backend: str, gpus: int, gpu_memory: int | None, cpu_memory: int | None
) -> dict[str, str] | None:
    """Present ``gpus`` simulated GPUs and caps through the plugin's environment variables."""
    if backend != PLUGIN.name:
        return None
    # Simulated GPUs always have a cap (it is their total memory); 1 TiB stands for "no cap".
    cap = gpu_memory if gpu_memory is not None else 1 << 40
    return {
        "MLPLUG_CPU_SIMULATED_GPUS": f"{gpus}:{cap}" if gpus else "",
        "MLPLUG_CPU_MEMORY_LIMIT": str(cpu_memory) if cpu_memory is not None else "",
    }
