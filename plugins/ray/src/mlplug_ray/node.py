"""The node actor: one mlplug device on a Ray node, driven by the coordinator's RayDevice.

:class:`MlplugNode` is a plain class; :mod:`mlplug_ray.device` makes it a Ray actor class
(``ray.remote(MlplugNode)``). It owns the host device of the node's local plugin (``mlplug-cpu``,
loaded through its public :data:`~mlplug_cpu.plugin.PLUGIN`, never its internals) and the
buffers allocated on it, named by integer handles. Nodes arrive in a wire form (:data:`WireRef`
tuples instead of buffer objects) and a whole segment runs in one call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from mlplug.device import BackendParams, Buffer, Device, DType, Node, TensorRef
from mlplug_cpu.plugin import PLUGIN as CPU_PLUGIN

__all__ = ["MlplugNode", "WireNode", "WireRef"]

WireRef = tuple[int | None, int, tuple[int, int, int, int], tuple[int, int, int, int], DType]
"""A :class:`~mlplug.device.TensorRef` on the wire: (handle or None, offset, ne, nb, dtype)."""

WireNode = tuple[str, WireRef, tuple[WireRef | None, ...], dict[str, Any]]
"""A :class:`~mlplug.device.Node` on the wire: (op, out, srcs, params)."""


class MlplugNode:
    """The device of one Ray node (runs inside the actor process).

    Args:
        params: The backend parameters (threads) for the local device.
    """

    def __init__(self, params: BackendParams) -> None:
        self._device: Device = CPU_PLUGIN.load(params)[0]
        self._buffers: dict[int, Buffer] = {}
        self._next = 0

    def info(self) -> dict[str, Any]:
        """Return the node's identity and memory figures (also a liveness check)."""
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "device": self._device.name,
            "alignment": self._device.alignment,
            "total": self._device.total_memory(),
            "free": self._device.free_memory(),
        }

    def free_memory(self) -> int:
        """Return the local device's free bytes."""
        return self._device.free_memory()

    def alloc(self, nbytes: int) -> tuple[int, int]:
        """Allocate on the local device; return ``(handle, nbytes held)``.

        Raises:
            DeviceOutOfMemory: The local device cannot hold it.
        """
        buffer = self._device.alloc(nbytes)
        self._next += 1
        self._buffers[self._next] = buffer
        return self._next, buffer.nbytes

    def free(self, handle: int) -> None:
        """Free a buffer (idempotent)."""
        buffer = self._buffers.pop(handle, None)
        if buffer is not None:
            buffer.free()

    def write(self, handle: int, offset: int, data: bytes) -> None:
        """Copy bytes into a buffer."""
        self._buffers[handle].write(offset, data)

    def read(self, handle: int, offset: int, n: int) -> bytes:
        """Return bytes of a buffer (after everything submitted before)."""
        return self._buffers[handle].read(offset, n)

    def unsupported(self, node: WireNode) -> str | None:
        """Ask the local device whether it runs the node (refs carry no buffer)."""
        return self._device.unsupported(self._node(node))

    def execute(self, nodes: Sequence[WireNode]) -> None:
        """Execute a whole segment on the local device and wait for it."""
        self._device.execute([self._node(n) for n in nodes])
        self._device.synchronize()

    def close(self) -> None:
        """Free every buffer and close the local device."""
        for handle in list(self._buffers):
            self.free(handle)
        self._device.close()

    def _ref(self, ref: WireRef) -> TensorRef:
        handle, offset, ne, nb, dtype = ref
        buffer = None if handle is None else self._buffers[handle]
        return TensorRef(buffer, offset, ne, nb, dtype)

    def _node(self, node: WireNode) -> Node:
        op, out, srcs, params = node
        refs = tuple(None if s is None else self._ref(s) for s in srcs)
        return Node(op, self._ref(out), refs, params)
