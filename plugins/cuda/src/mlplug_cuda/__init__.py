"""The ``cuda`` backend: mlplug's core engine on NVIDIA GPUs through cupy (DESIGN §5)."""

from __future__ import annotations

__all__: list[str] = []
