"""The core graph engine: placement, scheduling across devices, memory planning, bookkeeping."""

from __future__ import annotations

from .graph_backend import GraphBackend

__all__ = ["GraphBackend"]
