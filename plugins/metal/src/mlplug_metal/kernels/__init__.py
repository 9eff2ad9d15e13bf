"""The MLX kernels, one module per op family (the same file names in every plugin).

:data:`KERNELS` maps every op name of :data:`mlplug.device.OPS` to ``kernel(node) -> None``,
which reads ``node.srcs`` and writes ``node.out`` through their strides. Kernels only build
MLX's lazy graph; the device evaluates it (``MlxDevice.execute`` / ``synchronize``).
"""

from __future__ import annotations

from collections.abc import Callable

from mlplug.device import Node
from mlplug_metal.kernels import attention, conv, elementwise, matmul, movement, reduce

__all__ = ["KERNELS"]

KERNELS: dict[str, Callable[[Node], None]] = {
    **elementwise.KERNELS,
    **reduce.KERNELS,
    **movement.KERNELS,
    **matmul.KERNELS,
    **attention.KERNELS,
    **conv.KERNELS,
}
"""Kernel of every op, by op name."""
