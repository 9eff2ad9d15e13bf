"""``EngineFactory``: the backend factory of a device plugin (an ``EnginePlugin``).

The plugin API (:mod:`mlplug.device`) describes a plugin and never imports the engine; the
registry turns each registered ``EnginePlugin`` into this factory, which builds the core engine's
backend over the devices the plugin's ``load`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .graph_backend import GraphBackend

if TYPE_CHECKING:
    from mlplug.device import EnginePlugin
    from mlplug.params import BackendParams

__all__ = ["EngineFactory"]


@dataclass(frozen=True, slots=True)
class EngineFactory:
    """``factory(model_path, params) -> Backend`` for one device plugin.

    Two factories of the same plugin compare equal, so registering a plugin twice is a no-op.
    """

    plugin: EnginePlugin

    def __call__(self, model_path: str | None, params: BackendParams) -> GraphBackend:
        """Build a core-engine backend over the devices ``plugin.load(params)`` returns."""
        return GraphBackend(model_path, params, self.plugin.load(params), name=self.plugin.name)
