"""The plugin descriptor: what the entry point ``mlplug.backends: example`` loads.

mlplug imports this module while discovering backends (``mlplug backends``, ``new_backend``), so
it must stay cheap and must not fail: it imports only ``mlplug.device`` and the standard library.
numpy is imported by ``_load``, when a backend is actually built.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from mlplug.device import BackendParams, Device, EnginePlugin, Registrar, hookimpl

__all__ = ["ENV_MEMORY_LIMIT", "PLUGIN", "mlplug_memory_settings", "mlplug_register_backends"]

ENV_MEMORY_LIMIT = "MLPLUG_EXAMPLE_MEMORY_LIMIT"
"""Environment variable capping the device's memory (``512MiB``, ``2G``, ``1048576``)."""


def _probe() -> tuple[bool, str]:
    # Cheap and never raising: is the library this plugin needs importable? (find_spec looks for
    # the module without importing it.) A GPU plugin would check for its driver here and say why
    # it is unavailable ("no CUDA device found").
    if importlib.util.find_spec("numpy") is None:
        return False, "numpy is not installed"
    return True, ""


def _load(params: BackendParams) -> Sequence[Device]:
    from mlplug_example.device import ExampleDevice

    return [ExampleDevice.from_env()]


PLUGIN = EnginePlugin(
    name="example",
    load=_load,
    # Below the cpu plugin's 0: installing the example never changes which backend a user gets
    # by default. It is used when asked for by name (backend="example", MLPLUG_BACKEND=example).
    priority=-10,
    probe=_probe,
    install_hint="pip install -e examples/mlplug-example-plugin",
    # The device API this plugin was written against; core refuses a plugin for another one.
    api_version=1,
)
"""The ``example`` backend: the core engine on one :class:`~mlplug_example.device.ExampleDevice`."""


@hookimpl
def mlplug_register_backends(registry: Registrar) -> None:
    """Register the ``example`` backend (called once, at discovery)."""
    PLUGIN.register(registry)


@hookimpl
def mlplug_memory_settings(
    backend: str, gpus: int, gpu_memory: int | None, cpu_memory: int | None
) -> dict[str, str] | None:
    """Tell the conformance memory mode how to cap this backend's memory (it has no GPUs)."""
    if backend != PLUGIN.name or gpus != 0:
        return None
    return {ENV_MEMORY_LIMIT: "" if cpu_memory is None else str(cpu_memory)}
