"""The CPU device on numpy, and simulated GPUs for testing placement and out-of-memory.

Buffers are 32-byte aligned numpy ``uint8`` arrays; kernels view them through each
:class:`~mlplug.device.TensorRef`'s strides (:mod:`mlplug_cpu.kernels.quant`).

Every device keeps the bytes it has allocated and not yet freed within an optional **memory
cap**; an allocation past it raises :class:`~mlplug.device.DeviceOutOfMemory`. Environment:

* ``MLPLUG_CPU_MEMORY_LIMIT=SIZE`` caps the CPU device (``512MiB``, ``2G``, ``1048576``).
* ``MLPLUG_CPU_SIMULATED_GPUS=COUNT:CAP`` adds ``COUNT`` simulated GPUs (kind ``"gpu"``, names
  ``SIM0``, ``SIM1``…, ids ``sim-0``…), each with ``CAP`` bytes of its own. They run the same
  numpy kernels in host memory, so multi-device graphs, partial offload and out-of-memory can be
  tested on any machine.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from threadpoolctl import ThreadpoolController

from mlplug.device import (
    BackendParams,
    CappedAllocator,
    HostBuffer,
    Node,
    Release,
    env_size,
    parse_size,
)
from mlplug_cpu.kernels import KERNELS, native

__all__ = [
    "ENV_MEMORY_LIMIT",
    "ENV_SIMULATED_GPUS",
    "CpuBuffer",
    "CpuDevice",
    "load",
    "simulated_gpus_from_env",
    "usable_threads",
]

ENV_MEMORY_LIMIT = "MLPLUG_CPU_MEMORY_LIMIT"
ENV_SIMULATED_GPUS = "MLPLUG_CPU_SIMULATED_GPUS"
ALIGNMENT = 32


class CpuBuffer(HostBuffer):
    """A block of host memory: a 32-byte aligned numpy ``uint8`` array (:attr:`data`).

    Reading, writing, range checks and giving the bytes back once (on ``free()`` or when
    collected unfreed) come from :class:`~mlplug.device.HostBuffer`.
    """

    __slots__ = ()
    data: np.ndarray

    def __init__(self, name: str, nbytes: int, release: Release) -> None:
        # Over-allocate by the alignment and start at the first aligned byte.
        try:
            base = np.zeros(nbytes + ALIGNMENT, np.uint8)
        except ValueError as err:  # past numpy's largest array: out of memory all the same
            raise MemoryError(str(err)) from err
        start = -base.ctypes.data % ALIGNMENT
        super().__init__(name, base[start : start + nbytes], release)

    def _drop(self) -> None:
        self.data = np.zeros(0, np.uint8)


class CpuDevice(CappedAllocator[CpuBuffer]):
    """A numpy device: the host CPU, or (``kind="gpu"``) a simulated GPU with its own budget.

    Memory accounting and the cap come from :class:`~mlplug.device.CappedAllocator`.

    Args:
        name: Display name and memory-report key.
        id: Stable identifier.
        kind: ``"cpu"`` or ``"gpu"``.
        memory_limit: Cap in bytes on memory allocated and not yet freed; ``None`` = RAM.
        num_threads: BLAS and native-kernel threads while executing; 0 = every CPU this process
            may run on (``os.sched_getaffinity``); larger requests are capped to that.
    """

    __slots__ = (
        "_last",
        "alignment",
        "id",
        "kind",
        "name",
        "num_threads",
    )

    def __init__(
        self,
        *,
        name: str = "CPU",
        id: str = "",
        kind: str = "cpu",
        memory_limit: int | None = None,
        num_threads: int = 0,
    ) -> None:
        self.name = name
        self.id = id
        self.kind = kind
        self.alignment = ALIGNMENT
        self.num_threads = usable_threads(num_threads)
        # The last tuple of nodes executed, the kernel table then, and its kernel calls.
        self._last: tuple[Sequence[Node], object, list[tuple[Callable[[Node], None], Node]]] | None
        self._last = None
        super().__init__(memory_limit)

    def __repr__(self) -> str:
        return f"CpuDevice(name={self.name!r}, kind={self.kind!r}, limit={self._memory_limit})"

    # -- memory (accounting and cap: CappedAllocator) ------------------------------------------

    def _alloc(self, nbytes: int, release: Release) -> CpuBuffer:
        return CpuBuffer(self.name, nbytes, release)

    # -- execution ------------------------------------------------------------------------------

    def unsupported(self, node: Node) -> str | None:
        """Return ``None`` for every op of the ops table (numpy runs them all)."""
        if node.op in KERNELS:
            return None
        return f"[{self.name}] unknown op {node.op!r}"

    def execute(self, nodes: Sequence[Node]) -> None:
        """Run each node's kernel in order (synchronously).

        IEEE semantics apply (``x/0`` is ±inf, NaN propagates), so numpy's floating-point
        warnings are silenced. The kernels of the last tuple of nodes executed are remembered:
        the engine hands the same tuple again for a graph computed again (a kept decode graph),
        and the loop is then one call per node.
        """
        last = self._last
        if last is not None and last[0] is nodes and last[1] is KERNELS:
            calls = last[2]
        else:
            calls = []
            for node in nodes:
                kernel = KERNELS.get(node.op)
                if kernel is None:
                    raise NotImplementedError(self.unsupported(node) or node.op)
                calls.append((kernel, node))
            if isinstance(nodes, tuple):  # immutable: the same object is the same work
                self._last = (nodes, KERNELS, calls)
        with (
            _thread_limit(1),  # products large enough get more: native.blas_threads
            native.thread_count(self.num_threads),
            np.errstate(all="ignore"),
        ):
            for kernel, node in calls:
                kernel(node)

    def synchronize(self) -> None:
        """Nothing to wait for: :meth:`execute` is synchronous."""

    def close(self) -> None:
        """Free every buffer still allocated on this device."""
        self._last = None
        self.close_buffers()


def usable_threads(requested: int) -> int:
    """Return the threads to run with: ``requested`` capped to the CPUs this process may use.

    ``requested <= 0`` means all of them. Native kernels and BLAS both get this count (they
    never run at the same time, and the native pool's idle workers sleep).
    """
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux: no affinity mask to read
        available = os.cpu_count() or 1
    available = max(1, available)
    return available if requested <= 0 else min(requested, available)


@functools.cache
def _blas_controller() -> ThreadpoolController:
    # Finding the loaded BLAS libraries is the slow part of threadpoolctl: do it once.
    return ThreadpoolController()


@contextmanager
def _thread_limit(num_threads: int) -> Iterator[None]:
    """Limit BLAS threads to ``num_threads`` while the block runs."""
    with _blas_controller().limit(limits=num_threads, user_api="blas"):
        yield


def simulated_gpus_from_env() -> tuple[int, int]:
    """Return ``(count, cap)`` from ``MLPLUG_CPU_SIMULATED_GPUS`` (``(0, 0)`` when unset).

    Raises:
        ValueError: The value is not ``COUNT:CAP`` with a count >= 0 and a size.
    """
    text = os.environ.get(ENV_SIMULATED_GPUS, "").strip()
    if not text:
        return 0, 0
    count_text, sep, cap_text = text.partition(":")
    try:
        if not sep or not count_text.strip().isdigit():
            raise ValueError("expected COUNT:CAP with a count >= 0, e.g. 2:512MiB")
        return int(count_text), parse_size(cap_text)
    except ValueError as err:
        raise ValueError(f"{ENV_SIMULATED_GPUS}={text!r}: {err}") from err


def load(params: BackendParams) -> list[CpuDevice]:
    """Return the CPU device, then the simulated GPUs the environment asks for."""
    count, cap = simulated_gpus_from_env()
    threads = params.num_threads
    native.configure_from_env()
    cpu = CpuDevice(memory_limit=env_size(ENV_MEMORY_LIMIT), num_threads=threads)
    sims = [
        CpuDevice(name=f"SIM{i}", id=f"sim-{i}", kind="gpu", memory_limit=cap, num_threads=threads)
        for i in range(count)
    ]
    return [cpu, *sims]
