"""The core graph engine: placement, scheduling across devices, memory planning, bookkeeping.

:class:`GraphBackend` implements both ``mlplug.Backend`` (for users) and
``mlplug.executor.GraphExecutor`` (for the contexts and tensors it makes).
"""

from __future__ import annotations

from .factory import EngineFactory
from .graph_backend import GraphBackend

__all__ = ["EngineFactory", "GraphBackend"]
