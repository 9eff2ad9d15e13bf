"""Replaying a repeated graph with one launch (CUDA graphs).

A decode step submits the same nodes, over the same buffers, token after token; only the data
in device memory (token ids, positions, mask, the per-token scalars the engine writes as inputs)
changes. :class:`GraphReplay` keys each ``execute`` batch by its structure (ops, parameters,
buffers, offsets, extents, strides, dtypes). The second time a key is seen in a row the batch is
captured on the device's stream (``Stream.begin_capture``/``end_capture``, with a private memory
pool that lives as long as the graph so that temporaries of the captured kernels stay valid) and
launched; from then on, while the key repeats, ``Graph.launch`` replays every kernel at once.

A batch is never captured when an op reads back from the host (:data:`~.kernels.HOST_SYNC`, or
an operand of a type decoded on the host) or when a buffer it names has been freed since. Under
emulation there is nothing to capture: the "graph" is the recorded node list, re-executed on
replay, so the keying and invalidation logic is what the tests exercise there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mlplug.device import Node, TensorRef
from mlplug_cuda.kernels import HOST_SYNC
from mlplug_cuda.kernels.quant import HOST_DECODED
from mlplug_cuda.xp import ArrayApi

__all__ = ["GraphReplay"]


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _ref_key(ref: TensorRef | None) -> Any:
    if ref is None:
        return None
    return (id(ref.buffer), ref.offset, ref.ne, ref.nb, ref.dtype)


def _key(nodes: Sequence[Node]) -> Any:
    return tuple(
        (n.op, _ref_key(n.out), tuple(_ref_key(s) for s in n.srcs), _freeze(dict(n.params)))
        for n in nodes
    )


def _host_sync(node: Node) -> bool:
    return node.op in HOST_SYNC or any(s is not None and s.dtype in HOST_DECODED for s in node.srcs)


def _buffers(nodes: Sequence[Node]) -> list[Any]:
    seen: dict[int, Any] = {}
    for n in nodes:
        for ref in (n.out, *n.srcs):
            if ref is not None:
                seen.setdefault(id(ref.buffer), ref.buffer)
    return list(seen.values())


class GraphReplay:
    """Captures and replays repeated ``execute`` batches of one device.

    Args:
        api: The device's array API.
        stream: The device's cupy stream (``None`` under emulation).
        run: ``run(nodes)`` executes a batch eagerly on that stream.
    """

    __slots__ = (
        "_api",
        "_buffers",
        "_graph",
        "_key",
        "_pool",
        "_run",
        "_seen",
        "_stream",
        "captures",
        "replays",
    )

    def __init__(self, api: ArrayApi, stream: Any, run: Callable[[Sequence[Node]], None]) -> None:
        self._api = api
        self._stream = stream
        self._run = run
        self._key: Any = None
        self._seen = 0
        self._graph: Any = None
        self._pool: Any = None
        self._buffers: list[Any] = []
        self.captures = 0
        self.replays = 0

    captures: int
    """Graphs captured so far."""
    replays: int
    """Batches executed by replaying a captured graph."""

    def reset(self) -> None:
        """Forget the captured graph (and its memory pool)."""
        self._key, self._seen, self._graph, self._pool, self._buffers = None, 0, None, None, []

    def execute(self, nodes: Sequence[Node]) -> None:
        """Run ``nodes``: replayed, captured, or eagerly (see the module docstring)."""
        if not nodes or any(_host_sync(n) for n in nodes):
            self._run(nodes)
            return
        key = _key(nodes)
        if key != self._key or not all(getattr(b, "alive", True) for b in self._buffers):
            self.reset()
            self._key, self._seen, self._buffers = key, 1, _buffers(nodes)
            self._run(nodes)
            return
        self._seen += 1
        if self._graph is None:
            self._graph = self._capture(nodes)
            self.captures += 1
        else:
            self.replays += 1
        self._launch(nodes)

    def _capture(self, nodes: Sequence[Node]) -> Any:
        if self._api.emulated:
            return list(nodes)
        import cupy

        pool = cupy.cuda.MemoryPool()
        mode = getattr(cupy.cuda.runtime, "streamCaptureModeRelaxed", None)
        with cupy.cuda.using_allocator(pool.malloc):
            if mode is None:
                self._stream.begin_capture()
            else:
                self._stream.begin_capture(mode)
            try:
                self._run(nodes)
            finally:
                graph = self._stream.end_capture()
        self._pool = pool
        return graph

    def _launch(self, nodes: Sequence[Node]) -> None:
        if self._api.emulated:
            self._run(self._graph)
            return
        self._graph.launch(self._stream)
