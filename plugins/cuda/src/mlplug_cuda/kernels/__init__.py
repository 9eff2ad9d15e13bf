"""The CUDA kernels, one module per op family (the same file names in every plugin).

:data:`KERNELS` maps every op name of :data:`mlplug.device.OPS` to ``kernel(node) -> None``,
which reads ``node.srcs`` and writes ``node.out`` through their strides, on ``api.xp`` (cupy, or
numpy under emulation). The hot paths are CUDA C (``cuda/*.cu``): quantised mat-vec
(:mod:`.mmvq`) and flash-decoding attention (:mod:`.attention`).
"""

from __future__ import annotations

from collections.abc import Callable

from mlplug.device import Node
from mlplug_cuda.kernels import attention, conv, elementwise, matmul, movement, reduce

__all__ = ["HOST_SYNC", "KERNELS"]

KERNELS: dict[str, Callable[[Node], None]] = {
    **elementwise.KERNELS,
    **reduce.KERNELS,
    **movement.KERNELS,
    **matmul.KERNELS,
    **attention.KERNELS,
    **conv.KERNELS,
}
"""Kernel of every op, by op name."""

HOST_SYNC: frozenset[str] = frozenset({"rows", "set_rows", "mulmat_id", "arange"})
"""Ops whose kernels read back from or upload to the host (never captured in a CUDA graph)."""
