"""The engine's memory bookkeeping, from which ``BackendMemory`` snapshots are taken (§7).

Sizes are what devices really reserve, rounded up to each device's alignment. Entries move
between ``UNALLOCATED``, ``ALLOCATED`` and ``FAILED`` exactly as SEMANTICS §7.2 prescribes; the
engine calls these methods at each allocation it attempts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlplug.memory import AllocationStatus, BackendMemory, DeviceMemory, Memory

__all__ = ["Books", "round_up"]

_A, _F, _U = AllocationStatus.ALLOCATED, AllocationStatus.FAILED, AllocationStatus.UNALLOCATED


def round_up(n: int, alignment: int) -> int:
    """Round ``n`` up to a multiple of ``alignment``."""
    return -(-n // alignment) * alignment if alignment > 1 else n


class Books:
    """Mutable per-device, per-layer accounting. Device 0 is the CPU."""

    __slots__ = ("cache", "cache_failed", "graph", "ids", "input_weights", "names", "weights")

    def __init__(self, names: Sequence[str], ids: Sequence[str], blocks: int) -> None:
        self.names = list(names)
        self.ids = list(ids)
        n = len(names)
        self.input_weights: list[Any] = [0, _U]
        self.weights = [[[0, _U] for _ in range(blocks + 1)] for _ in range(n)]
        self.cache = [[[0, _U] for _ in range(blocks + 1)] for _ in range(n)]
        self.cache_failed = [[0] * (blocks + 1) for _ in range(n)]  # failed bytes in cache[d][i]
        self.graph: list[list[Any]] = [[0, _U] for _ in range(n)]

    # -- weights (set once, at construction) ------------------------------------------------

    def set_weight_sizes(self, device: int, per_layer: Sequence[int], inputs: int = 0) -> None:
        """Record a device's planned weight sizes per layer (and the input weights on CPU)."""
        for layer, size in enumerate(per_layer):
            self.weights[device][layer][0] = size
        if device == 0:
            self.input_weights[0] = inputs

    def mark_weights(self, device: int, status: AllocationStatus) -> None:
        """Set every nonzero weight entry of ``device`` (and CPU's input weights) to ``status``."""
        for entry in self.weights[device]:
            if entry[0]:
                entry[1] = status
        if device == 0 and self.input_weights[0]:
            self.input_weights[1] = status

    # -- cache (buffer tensors made through ctx.layer(i)) -----------------------------------

    def add_cache(self, device: int, layer: int, size: int, status: AllocationStatus) -> None:
        """Count a layer buffer's attempted size; ``status`` is what the attempt gave.

        A failed attempt stays counted (and the entry ``FAILED``) until :meth:`release_cache`
        uncounts it, when the context family that tried it is closed.
        """
        entry = self.cache[device][layer]
        entry[0] += size
        entry[1] = status
        if status == _F:
            self.cache_failed[device][layer] += size

    def release_cache(self, device: int, layer: int, size: int, failed: bool = False) -> None:
        """Uncount a layer buffer (or a failed attempt) whose family was closed.

        The entry then holds what is really allocated: ``UNALLOCATED`` at 0, ``ALLOCATED`` once
        no failed attempt is counted in it any more.
        """
        entry = self.cache[device][layer]
        entry[0] = max(0, entry[0] - size)
        if failed:
            self.cache_failed[device][layer] = max(0, self.cache_failed[device][layer] - size)
        if entry[0] == 0:
            entry[1] = _U
        elif not self.cache_failed[device][layer]:
            entry[1] = _A

    # -- graph ----------------------------------------------------------------------------------

    def set_graph(self, device: int, size: int, status: AllocationStatus) -> None:
        """Set a device's compute-buffer entry."""
        self.graph[device][0] = size
        self.graph[device][1] = status if size else _U

    # -- snapshot -------------------------------------------------------------------------------

    def snapshot(self) -> BackendMemory:
        """Return an immutable ``BackendMemory`` of the current books."""

        def mem(entry: list[Any]) -> Memory:
            return Memory(entry[0], entry[1] if entry[0] else _U)

        devices = [
            DeviceMemory(
                name=self.names[d],
                id=self.ids[d],
                weights=tuple(mem(e) for e in self.weights[d]),
                cache=tuple(mem(e) for e in self.cache[d]),
                graph=mem(self.graph[d]),
            )
            for d in range(len(self.names))
        ]
        return BackendMemory(mem(self.input_weights), devices[0], tuple(devices[1:]))
