"""pluggy hook specifications for mlplug plugins (entry-point group ``mlplug.backends``).

A plugin module (the entry point's object) implements any of these with
``@mlplug.device.hookimpl``. Discovery registers each plugin with a
``pluggy.PluginManager("mlplug")`` that validates the implementations against these specs.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("mlplug")

__all__ = ["hookspec", "mlplug_add_commands", "mlplug_register_backends"]


@hookspec
def mlplug_register_backends(registry: Any) -> None:
    """Register this entry point's backend: call ``registry.register_backend(name, ...)`` once.

    Args:
        registry: Has ``register_backend(name, factory, *, priority, probe, install_hint)``;
            ``name`` must be the entry point's name.
    """


@hookspec
def mlplug_add_commands(subparsers: Any) -> None:
    """Add subcommands to the ``mlplug`` command line (an ``argparse`` subparsers object).

    Each subparser must set ``func=callable(args) -> int`` with ``set_defaults``.
    """
