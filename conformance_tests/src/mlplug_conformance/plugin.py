"""The ``reference`` backend descriptor and the ``mlplug conformance`` subcommand hook.

Light to import (no numpy): the entry point ``reference = "mlplug_conformance.plugin"`` in the
group ``mlplug.backends`` makes ``mlplug.new_backend(None, BackendParams(),
backend="reference")`` run graphs on the float64 reference (:mod:`.device`) through the core
engine, with no device plugin installed. Its priority (-100) keeps it from ever being chosen
unless asked for by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mlplug.device import EnginePlugin, hookimpl

if TYPE_CHECKING:
    from mlplug.device import BackendParams, Device

__all__ = ["PLUGIN", "mlplug_add_commands", "mlplug_memory_settings", "mlplug_register_backends"]


def _load(params: BackendParams) -> Sequence[Device]:
    from mlplug_conformance.device import ReferenceDevice

    return [ReferenceDevice.from_env()]


PLUGIN = EnginePlugin(
    name="reference",
    load=_load,
    priority=-100,
    install_hint='pip install "mlplug[conformance]"',
)
"""The ``reference`` backend: one CPU device computing in float64."""


@hookimpl
def mlplug_register_backends(registry: Any) -> None:
    """Register the ``reference`` backend."""
    PLUGIN.register(registry)


@hookimpl
def mlplug_add_commands(subparsers: Any) -> None:
    """Add ``mlplug conformance`` to the core command line."""
    from mlplug_conformance.runner import add_command

    add_command(subparsers)


@hookimpl
def mlplug_memory_settings(
    backend: str, gpus: int, gpu_memory: int | None, cpu_memory: int | None
) -> dict[str, str] | None:
    """Cap the reference's CPU device for the memory mode; it has no GPUs to present."""
    if backend != PLUGIN.name or gpus:
        return None
    return {"MLPLUG_REFERENCE_MEMORY_LIMIT": "" if cpu_memory is None else str(cpu_memory)}
