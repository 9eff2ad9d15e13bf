"""The light descriptor of the ``ray`` backend (entry point ``mlplug.backends: ray``).

Importing this module must stay cheap: it does not import Ray. :func:`probe` decides with
``importlib.util.find_spec`` alone; ``load`` imports Ray and starts the node actors.

Configuration (environment, read by ``load``):

* ``MLPLUG_RAY_ADDRESS``: the cluster to join (``ray.init(address=...)``). Unset: a Ray already
  initialised in this process is used, else a local one is started bound to 127.0.0.1 and
  shut down when the backend closes.
* ``MLPLUG_RAY_NODES``: how many node actors (devices ``RAY0``…) to start; default one per
  alive Ray node. Actors are placed on the alive nodes in turn.
* ``MLPLUG_RAY_MEMORY_LIMIT``: a cap (e.g. ``512MiB``) on each node device's allocations.
* ``MLPLUG_RAY_MODEL_PATHS``: where the nodes find their copy of the model file (one path, or
  ``RAY0=PATH,RAY1=PATH``; default the coordinator's path).
* ``MLPLUG_RAY_WEIGHTS``: ``file`` (nodes read their copy; default) or ``push``.
* ``MLPLUG_RAY_TIMEOUT``: seconds to wait for an actor to start or answer (default 120).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mlplug.device import BackendParams, Device, EnginePlugin, hookimpl

if TYPE_CHECKING:
    from mlplug.registry import Registry

__all__ = ["INSTALL_HINT", "PLUGIN", "mlplug_memory_settings", "mlplug_register_backends", "probe"]

INSTALL_HINT = 'pip install "mlplug[ray]"'


def probe() -> tuple[bool, str]:
    """Tell cheaply whether Ray is installed (never raises; does not import Ray)."""
    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return False, f"the ray package is not installed ({INSTALL_HINT})"
    return True, ""


def _load(params: BackendParams) -> Sequence[Device]:
    from mlplug_ray.device import load

    return load(params)


PLUGIN = EnginePlugin(
    name="ray",
    # Below cpu (0): an installed Ray never makes this the default backend; it is chosen by name.
    priority=-10,
    probe=probe,
    load=_load,
    install_hint=INSTALL_HINT,
)
"""The ``ray`` backend: the host CPU device (``mlplug-cpu``), then one device per node actor."""


@hookimpl
def mlplug_register_backends(registry: Registry) -> None:
    """Register the ``ray`` backend."""
    PLUGIN.register(registry)


@hookimpl
def mlplug_memory_settings(
    backend: str, gpus: int, gpu_memory: int | None, cpu_memory: int | None
) -> dict[str, str] | None:
    """Start ``gpus`` node actors (at least one) with the given caps, for tests."""
    if backend != PLUGIN.name or gpus < 1:
        return None
    return {
        "MLPLUG_RAY_NODES": str(gpus),
        "MLPLUG_RAY_MEMORY_LIMIT": str(gpu_memory) if gpu_memory is not None else "",
        "MLPLUG_CPU_MEMORY_LIMIT": str(cpu_memory) if cpu_memory is not None else "",
    }
