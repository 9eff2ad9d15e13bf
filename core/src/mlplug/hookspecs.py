"""pluggy hook specifications for mlplug plugins (entry-point group ``mlplug.backends``).

A plugin module (the entry point's object) implements any of these with
``@mlplug.device.hookimpl``. Discovery registers each plugin with a
``pluggy.PluginManager("mlplug")`` that validates the implementations against these specs, and
then checks that every implementation names one of them (``check_pending``): a plugin with a
misspelt hook is listed as unavailable, with the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from mlplug.device import Registrar

hookspec = pluggy.HookspecMarker("mlplug")

__all__ = [
    "hookspec",
    "mlplug_add_commands",
    "mlplug_memory_settings",
    "mlplug_register_backends",
]


@hookspec
def mlplug_register_backends(registry: Registrar) -> None:
    """Register this entry point's backend once (``name`` must be the entry point's name).

    Args:
        registry: ``register_engine_plugin(plugin)`` for a device plugin (what
            ``EnginePlugin.register`` calls), or
            ``register_backend(name, factory, *, priority, probe, install_hint)`` for a plugin
            that brings its own ``Backend``.
    """


@hookspec
def mlplug_add_commands(subparsers: Any) -> None:
    """Add subcommands to the ``mlplug`` command line (an ``argparse`` subparsers object).

    Each subparser must set ``func=callable(args) -> int`` with ``set_defaults``.
    """


@hookspec(firstresult=True)
def mlplug_memory_settings(
    backend: str, gpus: int, gpu_memory: int | None, cpu_memory: int | None
) -> dict[str, str] | None:
    """Say how to make ``backend`` present ``gpus`` GPUs and memory caps, for testing.

    The conformance suite's memory mode uses this to test placement with 0..3 GPUs and
    out-of-memory behaviour on any plugin. Return ``None`` for another plugin's backend, or when
    the plugin cannot present that configuration (e.g. real hardware with a fixed GPU count).

    Args:
        backend: The backend name.
        gpus: How many GPUs the backend should present (simulated where need be).
        gpu_memory: Cap in bytes for each GPU, or ``None`` for no cap.
        cpu_memory: Cap in bytes for the CPU device, or ``None`` for no cap.

    Returns:
        Environment variables to set (an empty value means unset) before creating the backend.
    """
