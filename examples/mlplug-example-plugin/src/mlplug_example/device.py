"""The example device: host memory as numpy byte arrays, a memory cap, and the kernels.

This is everything the core engine asks of a device (the :class:`mlplug.device.Device`
protocol): memory (``alloc`` returning :class:`ExampleBuffer`, ``total_memory``,
``free_memory``), a say on what it can run (``unsupported``) and execution (``execute``,
``synchronize``, ``close``). Placement, scheduling, memory planning and the memory report are
the engine's job.

The memory books come from :class:`mlplug.device.CappedAllocator`: the device only says how to
make a buffer (``_alloc``) and how much memory the machine has (``_hardware_memory``).
``MLPLUG_EXAMPLE_MEMORY_LIMIT=SIZE`` caps the bytes allocated and not yet freed; past the cap
``alloc`` raises :class:`~mlplug.device.DeviceOutOfMemory`, which the engine turns into the
user's ``ErrNoMem`` with a memory report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from mlplug.device import CappedAllocator, Node, Release, parse_size

from mlplug_example.kernels import KERNELS
from mlplug_example.plugin import ENV_MEMORY_LIMIT

__all__ = ["ExampleBuffer", "ExampleDevice"]


class ExampleBuffer:
    """A block of device memory: a numpy ``uint8`` array (:attr:`data`) the kernels view."""

    __slots__ = ("__weakref__", "_release", "data", "nbytes")

    def __init__(self, nbytes: int, release: Release) -> None:
        self._release: Release | None = release  # gives the bytes back to the device, once
        self.data = np.zeros(nbytes, np.uint8)
        self.nbytes = nbytes

    def _check(self, offset: int, n: int) -> None:
        if self._release is None:
            raise ValueError("[example] buffer used after free()")
        if offset < 0 or n < 0 or offset + n > self.nbytes:
            raise ValueError(f"[example] bytes [{offset}, {offset + n}) outside {self.nbytes}")

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Copy host bytes into the buffer at ``offset``."""
        src = np.frombuffer(memoryview(data).cast("B"), np.uint8)
        self._check(offset, src.size)
        self.data[offset : offset + src.size] = src

    def read(self, offset: int, n: int) -> bytes:
        """Return ``n`` bytes starting at ``offset`` (execution is synchronous: nothing to wait)."""
        self._check(offset, n)
        return self.data[offset : offset + n].tobytes()

    def free(self) -> None:
        """Give the memory back to the device. Idempotent."""
        if self._release is not None:
            self._release()
            self._release = None
            self.data = np.zeros(0, np.uint8)


def _system_memory(pages: str) -> int:
    try:
        return int(os.sysconf(pages)) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError):
        return 0


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
        text = os.environ.get(ENV_MEMORY_LIMIT, "").strip()
        try:
            return cls(parse_size(text) if text else None)
        except ValueError as err:
            raise ValueError(f"{ENV_MEMORY_LIMIT}={text!r}: {err}") from err

    def __repr__(self) -> str:
        return f"ExampleDevice(limit={self.memory_limit}, allocated={self.allocated})"

    # -- memory: CappedAllocator keeps the books, the device makes the buffers ------------------

    def _alloc(self, nbytes: int, release: Release) -> ExampleBuffer:
        return ExampleBuffer(nbytes, release)

    def _hardware_memory(self) -> tuple[int, int]:
        return _system_memory("SC_PHYS_PAGES"), _system_memory("SC_AVPHYS_PAGES")

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
