"""A backend that brings its own executor: ``Backend`` and ``GraphExecutor`` implemented directly.

It is the smallest honest instance of the "other route" of ``docs/plugin-authors.md``: core's
``Context``/``Tensor`` build and validate the graph; this class allocates the buffers and runs
the graph *eagerly*, node by node, each result in a buffer of its own (no placement, no transfers,
no arena planning: the core engine's scheduler is not used at all). Kernels come from a device
(the reference device by default), as a foreign engine would bring its own. It holds no model
file (``model_path`` must be ``None``) and keeps no memory books beyond the graph it allocates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mlplug import _convert
from mlplug.config import Config
from mlplug.context import Context, Family
from mlplug.device import Buffer, Device, Node, TensorRef
from mlplug.errors import ContextError, NotComputedError, UnsupportedOpError
from mlplug.executor import Role
from mlplug.memory import AllocationStatus, BackendMemory, DeviceMemory, Memory
from mlplug.ops import OPS, Meta
from mlplug.params import BackendParams, CacheConfig
from mlplug.tensor import Storage, Tensor


class EagerBackend:
    """``mlplug.Backend`` and ``mlplug.executor.GraphExecutor`` over one device, eagerly."""

    def __init__(self, model_path: str | None, params: BackendParams, device: Device) -> None:
        if model_path is not None:
            raise UnsupportedOpError("[eager] model files are not supported by this backend")
        self.device = device
        self.params = params
        self.closed = False
        self.blocks = 0
        self._families: list[Family] = []
        self._graph_bytes = 0
        self._spare: Buffer = device.alloc(1)  # what zero-size windows point at

    # -- Backend ----------------------------------------------------------------------------

    def load(self, progress: Callable[[float], None] | None = None, cancel: Any = None) -> None:
        if progress is not None:
            progress(1.0)

    def backend_memory(self) -> BackendMemory:
        status = AllocationStatus.ALLOCATED if self._graph_bytes else AllocationStatus.UNALLOCATED
        graph = Memory(self._graph_bytes, status)
        return BackendMemory(Memory(), DeviceMemory(self.device.name, graph=graph))

    def config(self) -> Config:
        return Config.empty()

    def get(self, name: str) -> Tensor | None:
        return None

    def new_context(self) -> Context:
        return self.new_context_size(1 << 16)

    def new_context_size(self, n: int) -> Context:
        if self.closed:
            raise ContextError("new_context_size: the backend has been closed")
        family = Family(self, n)
        family.memo = {}  # id(node) -> the node's own buffer
        self._families.append(family)
        return Context(family)

    def close(self) -> None:
        for family in self._families:
            self.close_family(family)
        self._families.clear()
        self._spare.free()
        self.device.close()
        self.closed = True

    def __enter__(self) -> EagerBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- GraphExecutor ------------------------------------------------------------------------

    def cache_config(self) -> CacheConfig:
        return CacheConfig(cache_padding=1, permuted_v=False)

    def create_buffer(self, family: Family, role: Role, layer: int | None, meta: Meta) -> Tensor:
        buffer = self.device.alloc(meta.storage) if meta.storage else None
        storage = Storage(0, buffer, 0, meta.storage)
        family.buffers.append((storage, None, 0))
        return Tensor(family, meta, storage=storage)

    def fill(self, t: Tensor, data: bytes | None) -> None:
        storage = t._storage
        if storage is not None and storage.buffer is not None and storage.nbytes:
            storage.buffer.write(0, data if data is not None else bytes(storage.nbytes))

    def read_bytes(self, t: Tensor) -> bytes:
        if t._family.closed or self.closed:
            raise ContextError("bytes: the tensor's context (or backend) has been closed")
        meta = t._meta
        if meta.n == 0:
            return b""
        root = t._root or t
        if t._op is None or (t._readable and root._op is None):
            return self._read(self._window(t._family, root, meta))
        if t._result is not None:
            return t._result
        raise NotComputedError(f"bytes: {t._op} result is not readable (list it in compute())")

    def compute(self, family: Family, listed: Sequence[Tensor]) -> None:
        own: dict[int, Buffer] = family.memo  # type: ignore[assignment]
        for node in family.graph:
            kind = OPS[node._op or ""].kind
            if node._meta.n == 0 or kind == "view":
                continue
            if kind == "compute" and id(node) not in own:
                own[id(node)] = self.device.alloc(max(node._meta.storage, 1))
                self._graph_bytes += max(node._meta.storage, 1)
            srcs = [None if s is None else self._ref(family, s) for s in node._srcs]
            out = self._ref(family, node)
            if kind == "copy":
                srcs[1] = out
            record = Node(node._op or "", out, tuple(srcs), node._params)
            reason = self.device.unsupported(record)
            if reason is not None:
                raise UnsupportedOpError(f"{node._op}: no device can execute it ({reason})")
            self.device.execute([record])
        self.device.synchronize()
        for t in listed:
            if id(t) not in family.in_graph or t._meta.n == 0:
                continue
            root = t._root or t
            if root._op is not None:
                t._result = self._read(self._window(family, root, t._meta))
                family.results[id(t)] = t
            t._readable = True

    def reserve(self, family: Family) -> None:
        """Nothing to plan: buffers are allocated as nodes run."""

    def close_family(self, family: Family) -> None:
        if family.closed:
            return
        family.closed = True
        for storage, _, _ in family.buffers:
            if storage.buffer is not None:
                storage.buffer.free()
                storage.buffer = None
        for buffer in (family.memo or {}).values():  # type: ignore[attr-defined]
            buffer.free()
        family.memo = None
        for t in family.results.values():
            t._result = None
        family.results.clear()
        family.graph.clear()
        family.in_graph.clear()

    # -- helpers ------------------------------------------------------------------------------

    def _window(self, family: Family, root: Tensor, meta: Meta) -> TensorRef:
        if meta.n == 0:
            return TensorRef(self._spare, 0, meta.ne, meta.nb, meta.dtype)
        if root._op is None:
            storage = root._storage
            assert storage is not None and storage.buffer is not None
            return TensorRef(storage.buffer, meta.offset, meta.ne, meta.nb, meta.dtype)
        buffer = root._family.memo[id(root)]  # type: ignore[index]
        return TensorRef(buffer, meta.offset, meta.ne, meta.nb, meta.dtype)

    def _ref(self, family: Family, t: Tensor) -> TensorRef:
        return self._window(family, t._root or t, t._meta)

    def _read(self, ref: TensorRef) -> bytes:
        assert ref.buffer is not None
        start, stop = ref.span()
        data = ref.buffer.read(start, stop - start)
        return _convert.gather(data, ref.offset - start, ref.ne, ref.nb, ref.dtype)
