"""The example device: host memory as numpy byte arrays, a memory cap, and the kernels.

This is everything the core engine asks of a device (the :class:`mlplug.device.Device`
protocol): memory (``alloc`` returning :class:`ExampleBuffer`, ``total_memory``,
``free_memory``), a say on what it can run (``unsupported``) and execution (``execute``,
``synchronize``, ``close``). Placement, scheduling, memory planning and the memory report are
the engine's job.

The memory books come from :class:`mlplug.device.CappedAllocator`: the device only says how to
make a buffer (``_alloc``); without a cap, total and free memory are the host's.
``MLPLUG_EXAMPLE_MEMORY_LIMIT=SIZE`` caps the bytes allocated and not yet freed; past the cap
``alloc`` raises :class:`~mlplug.device.DeviceOutOfMemory`, which the engine turns into the
user's ``ErrNoMem`` with a memory report.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mlplug.device import CappedAllocator, HostBuffer, Node, Release, env_size

from mlplug_example.kernels import KERNELS
from mlplug_example.plugin import ENV_MEMORY_LIMIT

__all__ = ["ExampleBuffer", "ExampleDevice"]


class ExampleBuffer(HostBuffer):
    """A block of device memory: a numpy ``uint8`` array (:attr:`data`) the kernels view.

    ``write``, ``read``, range checks and ``free`` (giving the bytes back to the device once)
    come from :class:`mlplug.device.HostBuffer`.
    """

    __slots__ = ()
    data: np.ndarray

    def __init__(self, nbytes: int, release: Release) -> None:
        super().__init__("example", np.zeros(nbytes, np.uint8), release)

    def _drop(self) -> None:
        self.data = np.zeros(0, np.uint8)


class ExampleDevice(CappedAllocator[ExampleBuffer]):
    """The host CPU, running :data:`~mlplug_example.kernels.KERNELS` with numpy.

    Args:
        memory_limit: Cap in bytes on memory allocated and not yet freed; ``None``: no cap.
    """

    # A plugin returns exactly one device of kind "cpu" (first); by convention it is "CPU".
    name = "CPU"
    id = "example-cpu"
    kind = "cpu"
    alignment = 64  # the engine rounds every accounted size up to this

    def __init__(self, memory_limit: int | None = None) -> None:
        # The books (allocated bytes, the cap, a lock: backends on several threads may share
        # nothing else) are CappedAllocator's.
        super().__init__(memory_limit)

    @classmethod
    def from_env(cls) -> ExampleDevice:
        """Return the device with the cap that ``MLPLUG_EXAMPLE_MEMORY_LIMIT`` asks for."""
        return cls(env_size(ENV_MEMORY_LIMIT))

    def __repr__(self) -> str:
        return f"ExampleDevice(limit={self.memory_limit}, allocated={self.allocated})"

    # -- memory: CappedAllocator keeps the books, the device makes the buffers ------------------

    def _alloc(self, nbytes: int, release: Release) -> ExampleBuffer:
        return ExampleBuffer(nbytes, release)

    # -- execution ------------------------------------------------------------------------------

    def unsupported(self, node: Node) -> str | None:
        """Return ``None`` if a kernel handles ``node``'s op and dtypes, else why not.

        Called when the engine schedules a graph (in ``compute`` or ``reserve``) with refs that
        have no buffer: only the op, dtypes, extents, strides and params can be looked at. On
        the CPU device a refusal makes ``compute`` raise ``UnsupportedOpError`` with this
        reason (a GPU device's refusal would move the node to the CPU device instead); the
        conformance suite reports the case as "unsupported" with it.
        """
        kernel = KERNELS.get(node.op)
        if kernel is None:
            return f"[example] {node.op}: op not implemented by mlplug-example"
        for ref in (node.out, *node.srcs):
            if ref is not None and ref.dtype not in kernel.dtypes:
                accepted = ", ".join(sorted(d.name for d in kernel.dtypes))
                return (
                    f"[example] {node.op}: {ref.dtype.name} not implemented by "
                    f"mlplug-example (only {accepted})"
                )
        return None

    def execute(self, nodes: Sequence[Node]) -> None:
        """Run each node's kernel, in order, before returning.

        IEEE rules apply (``x/0`` is ±inf, NaN propagates), so numpy's floating-point warnings
        are silenced.
        """
        with np.errstate(all="ignore"):
            for node in nodes:
                KERNELS[node.op].run(node)

    def synchronize(self) -> None:
        """Nothing to wait for: :meth:`execute` is synchronous."""

    def close(self) -> None:
        """Free any buffer still allocated (the engine has normally freed them all)."""
        self.close_buffers()
