"""``GraphExecutor``: the boundary between the lazy graph and whatever executes it (DESIGN §3).

``Context`` and ``Tensor`` only record: buffers, nodes, the family's graph. Everything that
touches memory or runs kernels goes through the family's executor, and only through the members
declared here. The core engine's ``GraphBackend`` is one executor (placement, scheduling across
devices, memory planning over a plugin's devices); a plugin that wraps a foreign engine may be
another, and reuses the whole graph-building API (validation, views, readability rules) as is.

What an executor may read and write on the graph's objects (they are the engine-side fields of
:class:`~mlplug.tensor.Tensor`, :class:`~mlplug.tensor.Storage` and
:class:`~mlplug.context.Family`):

* ``Family.graph`` (nodes in execution order: operands before dependents), ``Family.in_graph``
  (their ids), ``Family.buffers`` (what ``create_buffer`` appended), ``Family.results``
  (retained results, by id), ``Family.closed``, and ``Family.memo`` (the executor's own state
  for the family's graph, e.g. its plan; ``None`` at creation);
* a node's ``_op`` (a name of :data:`mlplug.ops.OPS`; ``None`` for a buffer tensor), ``_srcs``,
  ``_params``, ``_meta`` (:class:`~mlplug.ops.Meta`: dtype, extents, byte strides, offset),
  ``_root`` (the buffer or node whose storage a view or ``copy`` result lies in);
* a buffer tensor's ``_storage`` (set by ``create_buffer``);
* after a compute, a listed node's ``_result`` (its bytes in logical order) and ``_readable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mlplug.context import Family
    from mlplug.ops import Meta
    from mlplug.params import CacheConfig
    from mlplug.tensor import Tensor

__all__ = ["GraphExecutor", "Role"]

Role = Literal["root", "input", "layer"]
"""Which member of a family a context is: the root, ``ctx.input()`` or ``ctx.layer(i)``."""


@runtime_checkable
class GraphExecutor(Protocol):
    """What a context family hands its buffers and graphs to (SEMANTICS §2, §4, §6)."""

    @property
    def closed(self) -> bool:
        """Whether the executor (its backend) has been closed."""
        ...

    @property
    def blocks(self) -> int:
        """The model's block count: ``ctx.layer(i)`` accepts ``0 ≤ i ≤ blocks``."""
        ...

    def cache_config(self) -> CacheConfig:
        """Return the KV-cache layout the executor's attention expects (§8.1)."""
        ...

    def create_buffer(self, family: Family, role: Role, layer: int | None, meta: Meta) -> Tensor:
        """Allocate a buffer tensor of ``meta`` for ``family`` and return it.

        ``role`` ``"input"`` buffers live on the CPU and are not accounted; ``"layer"`` buffers
        live on layer ``layer``'s device and are counted as its cache. The executor appends what
        it allocated to ``family.buffers`` so that ``close_family`` frees it.

        Raises:
            ErrNoMem: The device cannot hold the buffer (the books mark it failed).
        """
        ...

    def fill(self, t: Tensor, data: bytes | None) -> None:
        """Write ``data`` (packed, logical order) into buffer tensor ``t``; ``None``: zeros."""
        ...

    def read_bytes(self, t: Tensor) -> bytes:
        """Return ``t``'s values in logical order, following the readability rules of §2.4.

        Raises:
            NotComputedError: ``t`` is a node not listed in the last compute, or a weight read
                before ``load()``.
            ContextError: Its context or the backend has been closed.
        """
        ...

    def compute(self, family: Family, listed: Sequence[Tensor]) -> None:
        """Execute every node of ``family.graph``; make the listed nodes readable (§4.5).

        Raises:
            UnsupportedOpError: No device can execute a node.
            ErrNoMem: The graph memory does not fit.
            ConcurrentUseError: Another compute/reserve/load/close is running.
        """
        ...

    def reserve(self, family: Family) -> None:
        """Plan and allocate the memory ``family.graph`` needs, executing nothing (§4.6)."""
        ...

    def close_family(self, family: Family) -> None:
        """Free every buffer and retained result of ``family``; mark it closed. Idempotent."""
        ...
