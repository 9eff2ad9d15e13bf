"""``GraphBackend``: the core engine's ``Backend`` over a plugin's devices.

It owns the devices, the model's weights (placed per SEMANTICS §6.4–6.5 and loaded by
:mod:`mlplug.engine.weights`), the memory books, one compute arena per device, and every
context family made from it. Graph execution goes through :func:`~.schedule.make_plan`.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from mlplug import _convert
from mlplug.context import Context, Family
from mlplug.device import (
    Buffer,
    Device,
    DeviceOutOfMemory,
    Node,
    SupportsDirectCopy,
    TensorRef,
)
from mlplug.dtype import DType
from mlplug.errors import ConcurrentUseError, ContextError, ErrNoMem, NotComputedError
from mlplug.memory import AllocationStatus, BackendMemory
from mlplug.ops import OPS, Meta
from mlplug.params import BackendParams, CacheConfig
from mlplug.placement import layer_devices, normalized_splits
from mlplug.tensor import Storage, Tensor

from .books import Books, round_up
from .schedule import NONE, GraphIndex, Plan, Step, make_plan

if TYPE_CHECKING:
    from mlplug.config import Config
    from mlplug.executor import Role

__all__ = ["GraphBackend"]

_A, _F, _U = AllocationStatus.ALLOCATED, AllocationStatus.FAILED, AllocationStatus.UNALLOCATED

_FLASH = CacheConfig(
    cache_padding=256, permuted_v=False, mask_dtype=DType.F16, mask_batch_padding=64
)
_NO_FLASH = CacheConfig(
    cache_padding=32, permuted_v=True, mask_dtype=DType.OTHER, mask_batch_padding=0
)


_PROGRAMS = 32
"""Plans kept per backend (least recently used dropped first)."""


class _Program:
    """A plan and the device records last built from it.

    A plan depends only on the graph's structure (:attr:`GraphIndex.key`), so graphs of the same
    structure share it. A node's record (the :class:`Node` with its buffer windows) depends, in
    addition, on the arenas and on the buffers of the leaves it touches; records are rebuilt only
    for the steps whose arenas or leaf buffers changed since they were made.
    """

    __slots__ = (
        "arenas",
        "bases",
        "batches",
        "families",
        "leaf_steps",
        "owner",
        "plan",
        "records",
    )

    def __init__(self, plan: Plan, ix: GraphIndex) -> None:
        self.plan = plan
        self.records: list[Node | None] = [None] * len(plan.steps)
        self.arenas: tuple[Buffer | None, ...] = ()
        self.bases: list[tuple[Buffer | None, int] | None] = [None] * len(ix.leaves)
        # The graph whose leaves the records were last checked against, and the work list
        # made from them (device batches and transfers): both reused while nothing changed.
        self.owner: GraphIndex | None = None
        self.families: set[Family] = set()
        self.batches: list[tuple[int, tuple[Node, ...]] | Step] | None = None
        self.leaf_steps: list[list[int]] = [[] for _ in ix.leaves]
        for k, step in enumerate(plan.steps):
            if step.node < 0:
                continue
            refs = [ix.root[step.node]]
            refs += [r for r, t in zip(ix.srcs[step.node], step.remote, strict=True) if t < 0]
            for r in set(refs):
                if r < 0 and r != NONE:
                    self.leaf_steps[-1 - r].append(k)

    def valid_records(self, ix: GraphIndex, arenas: Sequence[Buffer | None]) -> list[Node | None]:
        """Return the records, with those made stale by new arenas or leaf buffers cleared.

        The same graph (``ix``, kept by its family's memo) computed again on the same arenas
        has the same leaf buffers: nothing is checked then.
        """
        same_arenas = len(self.arenas) == len(arenas) and all(
            a is b for a, b in zip(self.arenas, arenas, strict=True)
        )
        if same_arenas and self.owner is ix:
            if any(f.closed for f in self.families):
                raise ContextError("compute: a buffer the graph reads belongs to a closed context")
            return self.records
        self.owner = ix
        self.families = {leaf._family for leaf in ix.leaves}
        if any(f.closed for f in self.families):
            raise ContextError("compute: a buffer the graph reads belongs to a closed context")
        if not same_arenas:
            self.arenas = tuple(arenas)
            self.records = [None] * len(self.records)
            self.bases = [None] * len(self.bases)
            self.batches = None
        records, bases = self.records, self.bases
        for j, leaf in enumerate(ix.leaves):
            storage = leaf._storage
            assert storage is not None
            old = bases[j]
            if old is None or old[0] is not storage.buffer or old[1] != storage.offset:
                for k in self.leaf_steps[j]:
                    records[k] = None
                bases[j] = (storage.buffer, storage.offset)
                self.batches = None
        return records


class _Memo:
    """What a family remembers of its last plan: valid while its graph has not grown."""

    __slots__ = ("ix", "outputs", "program", "size")

    def __init__(
        self, size: int, outputs: tuple[int, ...], ix: GraphIndex, program: _Program
    ) -> None:
        self.size, self.outputs, self.ix, self.program = size, outputs, ix, program


class GraphBackend:
    """A backend of the core engine (implements ``mlplug.Backend``)."""

    def __init__(
        self,
        model_path: str | None,
        params: BackendParams,
        devices: Sequence[Device],
        *,
        name: str = "",
    ) -> None:
        if not isinstance(params, BackendParams):
            raise TypeError(f"new_backend: params must be BackendParams, got {type(params)}")
        devices = list(devices)
        cpus = [d for d in devices if d.kind == "cpu"]
        if len(cpus) != 1 or devices[0].kind != "cpu":
            raise ValueError(f"[{name}] a plugin must return exactly one CPU device, first")
        self.name = name
        self.model_path = model_path  # for messages that name the file (mlplug.models)
        self.params = params
        self.devices = devices
        self.n_gpus = len(devices) - 1
        if self.n_gpus == 0:
            if params.main_gpu != 0:
                raise ValueError(f"new_backend: main_gpu {params.main_gpu} invalid: no GPU")
        elif not 0 <= params.main_gpu < self.n_gpus:
            raise ValueError(
                f"new_backend: main_gpu {params.main_gpu} invalid: {self.n_gpus} GPU(s)"
            )
        if params.tensor_split and len(params.tensor_split) != self.n_gpus:
            raise ValueError(
                f"new_backend: tensor_split has {len(params.tensor_split)} entries, "
                f"there are {self.n_gpus} GPU(s)"
            )
        self.closed = False
        self._lock = threading.Lock()
        self._families: weakref.WeakSet[Family] = weakref.WeakSet()
        self._arenas: list[Buffer | None] = [None] * len(devices)
        self._arena_size = [0] * len(devices)
        self._programs: OrderedDict[object, _Program] = OrderedDict()
        self._weights_family = Family(self, 0)
        self._model: Any = None  # engine.weights.Model when a file is given
        self._loaded = model_path is None
        self.blocks = 0
        self._config: Config | None = None
        self._weights: dict[str, Tensor] = {}
        try:
            if model_path is not None:
                from .weights import Model

                self._model = Model.open(model_path)
                self._config = self._model.config
                self.blocks = self._model.blocks
            splits = (
                normalized_splits(params.tensor_split, [d.free_memory() for d in devices[1:]])
                if self.n_gpus
                else []
            )
            gpu_of_layer = layer_devices(
                self.blocks, params.num_gpu_layers, self.n_gpus, params.main_gpu, splits
            )
            self._layer_device = [0 if g is None else g + 1 for g in gpu_of_layer]
            self._books = Books([d.name for d in devices], [d.id for d in devices], self.blocks)
            if self._model is not None:
                self._model.allocate(self)
        except BaseException:
            # Free the file map and every buffer now, not when the garbage collector finds
            # this half-built backend (it is a reference cycle with its weight family).
            self._free_everything()
            raise

    # -- public Backend API ---------------------------------------------------------------------

    def load(self, progress: Callable[[float], None] | None = None, cancel: Any = None) -> None:
        """Read every tensor's data from the model file into the weight storage (§6.6)."""
        self._check_open("load")
        with self._guard("load"):
            if self._model is None:
                if progress is not None:
                    progress(1.0)
                return
            self._loaded = False
            self._model.load(self, progress, cancel)
            self._loaded = True

    def backend_memory(self) -> BackendMemory:
        """Return a snapshot of the memory bookkeeping."""
        return self._books.snapshot()

    def config(self) -> Config:
        """Return the model file's metadata."""
        self._check_open("config")
        if self._config is None:
            from mlplug.config import Config

            self._config = Config.empty()
        return self._config

    def get(self, name: str) -> Tensor | None:
        """Return the weight named ``name``, or ``None``."""
        self._check_open("get")
        return self._weights.get(name)

    def max_graph_nodes(self) -> int:
        """Return the capacity ``new_context()`` gives."""
        n_tensors = len(self._model.tensors) if self._model is not None else 0
        return max(8192, 5 * n_tensors)

    def new_context(self) -> Context:
        """Return a new root context with the default capacity."""
        return self.new_context_size(self.max_graph_nodes())

    def new_context_size(self, n: int) -> Context:
        """Return a new root context of capacity ``n`` (1 ≤ n ≤ max_graph_nodes)."""
        self._check_open("new_context_size")
        limit = self.max_graph_nodes()
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
            raise ValueError(f"new_context_size: n must be in 1..{limit}, got {n!r}")
        family = Family(self, n)
        self._families.add(family)
        return Context(family)

    def cache_config(self) -> CacheConfig:
        """Return the KV-cache layout this backend's attention expects (§8.1)."""
        self._check_open("cache_config")
        device = self.devices[self._layer_device[self.blocks]]
        # isinstance(device, SupportsCacheConfig) without the protocol machinery: this runs
        # for every attention layer of every graph built.
        cache_config = getattr(device, "cache_config", None)
        if callable(cache_config):
            config: CacheConfig = cache_config(self.params.flash_attention)
            return config
        return _FLASH if self.params.flash_attention else _NO_FLASH

    def close(self) -> None:
        """Close every context and free all memory. Idempotent."""
        if self.closed:
            return
        with self._guard("close"):
            self._free_everything()

    def __enter__(self) -> GraphBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        names = ", ".join(d.name for d in self.devices)
        return f"<GraphBackend {self.name!r} devices=[{names}] blocks={self.blocks}>"

    # -- internals ------------------------------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise ContextError(f"{what}: the backend has been closed")

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        if not self._lock.acquire(blocking=False):
            raise ConcurrentUseError(
                f"{what}: another compute/reserve/load/close is running on this backend"
            )
        try:
            yield
        finally:
            self._lock.release()

    def _free_everything(self) -> None:
        for family in list(self._families):
            self.close_family(family)
        self._families = weakref.WeakSet()
        if self._model is not None:
            self._model.free(self)
            # The backend is a reference cycle (its weight family points back at it): drop the
            # weights and the metadata now, so that they go at once rather than with the cycle.
            self._model = None
        self._config = None
        self._weights = {}
        for i, arena in enumerate(self._arenas):
            if arena is not None:
                arena.free()
            self._arenas[i] = None
            self._arena_size[i] = 0
        self._programs.clear()
        for device in self.devices:
            device.close()
        self.closed = True
        self._weights_family.closed = True

    def is_weight(self, t: Tensor) -> bool:
        """Whether a buffer tensor is a model weight."""
        return t._family is self._weights_family

    def _alloc(self, device: int, nbytes: int) -> Buffer:
        return self.devices[device].alloc(nbytes)

    # -- GraphExecutor (mlplug.executor): what Context and Tensor call -------------------------

    def create_buffer(self, family: Family, role: Role, layer: int | None, meta: Meta) -> Tensor:
        """Allocate a buffer tensor on the device of its role (see ``GraphExecutor``)."""
        device = 0 if role == "input" else self._layer_device[layer or 0]
        counted = layer if role == "layer" else None
        nbytes = meta.storage
        accounted = round_up(nbytes, self.devices[device].alignment) if nbytes else 0
        buffer = None
        if nbytes:
            try:
                buffer = self._alloc(device, nbytes)
            except DeviceOutOfMemory as err:
                if counted is not None:
                    self._books.add_cache(device, counted, accounted, _F)
                    # The failed attempt stays counted until the family closes (§7.2): kept as
                    # a storage without buffer, so that closing the family uncounts it.
                    family.buffers.append((Storage(device, None, 0, nbytes), counted, accounted))
                what = f"layer {counted} buffer" if counted is not None else f"{role} tensor"
                failed = f"{what} {meta.dtype.name}{list(meta.ne)}: {err}"
                raise ErrNoMem(self._books.snapshot(), failed, counted is not None) from err
        if counted is not None and accounted:
            self._books.add_cache(device, counted, accounted, _A)
        storage = Storage(device, buffer, 0, nbytes)
        family.buffers.append((storage, counted, accounted))
        return Tensor(family, meta, storage=storage)

    def fill(self, t: Tensor, data: bytes | None) -> None:
        """Write packed bytes (or zeros) into a buffer tensor."""
        storage = t._storage
        if storage is None or storage.buffer is None or not storage.nbytes:
            return
        storage.buffer.write(storage.offset, data if data is not None else bytes(storage.nbytes))

    def close_family(self, family: Family) -> None:
        """Free a family's buffers and retained results. Idempotent."""
        if family.closed:
            return
        family.closed = True
        for storage, layer, accounted in family.buffers:
            failed = storage.buffer is None  # a failed attempt (a counted size has a buffer)
            if storage.buffer is not None:
                storage.buffer.free()
                storage.buffer = None
            if layer is not None and accounted:
                self._books.release_cache(storage.device, layer, accounted, failed)
        family.buffers.clear()
        for t in family.results.values():
            t._result = None
        family.results.clear()
        family.graph.clear()
        family.in_graph.clear()
        family.memo = None

    def read_bytes(self, t: Tensor) -> bytes:
        """Return a tensor's bytes in logical order (§2.4)."""
        if t._family.closed or self.closed:
            raise ContextError("bytes: the tensor's context (or backend) has been closed")
        meta = t._meta
        if meta.n == 0:
            return b""
        root = t._root or t
        if t._op is None:
            if self.is_weight(t) and not self._loaded:
                raise NotComputedError(f"bytes: weight {t.name!r} is not loaded (call load())")
            return self._read_window(root, meta)
        if t._readable and root._op is None:
            return self._read_window(root, meta)
        if t._result is not None:
            return t._result
        raise NotComputedError(
            f"bytes: {t._op} result is not readable (list it in compute() after forward())"
        )

    def _read_window(self, root: Tensor, meta: Meta) -> bytes:
        storage = root._storage
        assert storage is not None and storage.buffer is not None
        self.devices[storage.device].synchronize()
        ref = TensorRef(None, meta.offset, meta.ne, meta.nb, meta.dtype)
        start, stop = ref.span()
        data = storage.buffer.read(storage.offset + start, stop - start)
        return _convert.gather(data, meta.offset - start, meta.ne, meta.nb, meta.dtype)

    # -- compute and reserve --------------------------------------------------------------------

    def _storage_device(self, t: Tensor) -> int:
        assert t._storage is not None
        return t._storage.device

    def _plan(self, family: Family, outputs: Sequence[Tensor]) -> tuple[GraphIndex, _Program]:
        """Return the family's graph by position and its program (cached, see module doc)."""
        graph = family.graph
        wanted = tuple(id(t) for t in outputs)
        memo = family.memo
        if isinstance(memo, _Memo) and memo.size == len(graph) and memo.outputs == wanted:
            return memo.ix, memo.program
        ix = GraphIndex(graph, outputs, self.is_weight, self._storage_device)
        program = self._programs.get(ix.key)
        if program is None:
            main = self.params.main_gpu + 1 if self.n_gpus else 0
            plan = make_plan(
                ix,
                self.devices,
                main,
                self.is_weight,
                self._storage_device,
                cpu_fallback=self.params.cpu_fallback,
            )
            program = _Program(plan, ix)
            self._programs[ix.key] = program
            if len(self._programs) > _PROGRAMS:
                self._programs.popitem(last=False)
        else:
            self._programs.move_to_end(ix.key)
        family.memo = _Memo(len(graph), wanted, ix, program)
        return ix, program

    def reserve(self, family: Family) -> None:
        """Plan the family's graph and allocate its arenas, executing nothing."""
        with self._guard("reserve"):
            consumed = {id(s) for n in family.graph for s in n._srcs if s is not None}
            leaves = [n for n in family.graph if id(n) not in consumed]
            _, program = self._plan(family, leaves)
            self._ensure_arenas(program.plan.arena)

    def _ensure_arenas(self, needed: dict[int, int]) -> None:
        order = [*range(1, len(self.devices)), 0]
        for k, device in enumerate(order):
            size = round_up(needed.get(device, 0), self.devices[device].alignment)
            if size <= self._arena_size[device]:
                if size and self._books.graph[device][0] < self._arena_size[device]:
                    self._books.set_graph(device, self._arena_size[device], _A)
                continue
            old = self._arenas[device]
            if old is not None:
                old.free()
                self._arenas[device] = None
                self._arena_size[device] = 0
            try:
                self._arenas[device] = self._alloc(device, size)
            except DeviceOutOfMemory as err:
                self._books.set_graph(device, size, _F)
                for later in order[k + 1 :]:
                    planned = round_up(needed.get(later, 0), self.devices[later].alignment)
                    if planned > self._arena_size[later]:
                        self._books.set_graph(later, planned, _U)
                raise ErrNoMem(self._books.snapshot(), f"compute graph: {err}") from err
            self._arena_size[device] = size
            self._books.set_graph(device, size, _A)

    def compute(self, family: Family, listed: Sequence[Tensor]) -> None:
        """Plan and execute the family's graph; make the listed nodes readable."""
        for t in listed:
            if not isinstance(t, Tensor):
                raise TypeError(f"compute: expected Tensors, got {type(t).__name__}")
        with self._guard("compute"):
            if not family.graph:
                return
            outputs = [t for t in listed if id(t) in family.in_graph and t._meta.n]
            ix, program = self._plan(family, outputs)
            plan = program.plan
            if plan.reads_weights and not self._loaded:
                raise NotComputedError("compute: the graph reads weights before load() returned")
            self._ensure_arenas(plan.arena)
            try:
                self._execute(ix, program)
                for device in self.devices:
                    device.synchronize()
            except DeviceOutOfMemory as err:
                # A device that allocates lazily ran out while executing: report it as the
                # graph memory of that device having failed.
                index = next((i for i, d in enumerate(self.devices) if d.name == err.device), 0)
                self._books.set_graph(index, max(self._arena_size[index], err.requested), _F)
                raise ErrNoMem(self._books.snapshot(), f"compute graph: {err}") from err
            for t, r in zip(outputs, ix.outputs, strict=True):
                if r < 0:
                    t._readable = True
                    continue
                ref = self._window(ix, plan, t._meta, r)
                assert ref.buffer is not None
                start, stop = ref.span()
                data = ref.buffer.read(start, stop - start)
                t._result = _convert.gather(data, ref.offset - start, ref.ne, ref.nb, ref.dtype)
                t._readable = True
                family.results[id(t)] = t

    def _base(self, ix: GraphIndex, plan: Plan, r: int) -> tuple[Buffer, int]:
        """Return the buffer and byte offset of storage root ``r``."""
        if r < 0:
            storage = ix.leaves[-1 - r]._storage
            assert storage is not None and storage.buffer is not None
            return storage.buffer, storage.offset
        slot = plan.slots[r]
        arena = self._arenas[slot.device]
        assert arena is not None
        return arena, slot.offset

    def _window(
        self, ix: GraphIndex, plan: Plan, meta: Meta, r: int, moved: Step | None = None
    ) -> TensorRef:
        """Return the ref of window ``meta`` of storage root ``r`` (or of its transferred copy)."""
        if meta.n == 0:
            arena = next(a for a in self._arenas if a is not None)
            return TensorRef(arena, 0, meta.ne, meta.nb, meta.dtype)
        if moved is not None:
            # The operand lives on another device: it was transferred (its exact span).
            assert moved.slot is not None
            target = self._arenas[moved.device]
            assert target is not None
            offset = moved.slot.offset + meta.offset - moved.span[0]
            return TensorRef(target, offset, meta.ne, meta.nb, meta.dtype)
        buffer, base = self._base(ix, plan, r)
        return TensorRef(buffer, base + meta.offset, meta.ne, meta.nb, meta.dtype)

    def _execute(self, ix: GraphIndex, program: _Program) -> None:
        records = program.valid_records(ix, self._arenas)
        work = program.batches
        if work is None:
            work = program.batches = self._work(ix, program.plan, records)
        plan = program.plan
        for item in work:
            if isinstance(item, Step):
                self._run_transfer(ix, plan, item)
            else:
                self.devices[item[0]].execute(item[1])

    def _work(
        self, ix: GraphIndex, plan: Plan, records: list[Node | None]
    ) -> list[tuple[int, tuple[Node, ...]] | Step]:
        """Return the plan as device batches of records (made where missing) and transfers."""
        steps = plan.steps
        work: list[tuple[int, tuple[Node, ...]] | Step] = []
        batch: list[Node] = []
        batch_device = -1

        def moved(t: int) -> Step | None:
            return steps[t] if t >= 0 else None

        for k, step in enumerate(steps):
            if step.node < 0:
                if batch:
                    work.append((batch_device, tuple(batch)))
                    batch = []
                work.append(step)
                continue
            if step.device != batch_device and batch:
                work.append((batch_device, tuple(batch)))
                batch = []
            batch_device = step.device
            record = records[k]
            if record is None:
                i = step.node
                node = ix.graph[i]
                srcs = tuple(
                    None if s is None else self._window(ix, plan, s._meta, r, moved(t))
                    for s, r, t in zip(node._srcs, ix.srcs[i], step.remote, strict=True)
                )
                out = self._window(ix, plan, node._meta, ix.root[i])
                if OPS[node._op or ""].kind == "copy":
                    srcs = (srcs[0], out, *srcs[2:])
                record = records[k] = Node(node._op or "", out, srcs, node._params)
            batch.append(record)
        if batch:
            work.append((batch_device, tuple(batch)))
        return work

    def _run_transfer(self, ix: GraphIndex, plan: Plan, step: Step) -> None:
        """Copy a transfer step's span of its source root onto the step's device."""
        src_buffer, src_base = self._base(ix, plan, step.source)
        src_device = plan.placement.where(step.source)
        self.devices[src_device].synchronize()
        start, stop = step.span
        arena = self._arenas[step.device]
        assert arena is not None and step.slot is not None
        self._transfer(
            src_device,
            step.device,
            (src_buffer, src_base + start),
            (arena, step.slot.offset),
            stop - start,
        )

    def _transfer(
        self, src: int, dst: int, source: tuple[Buffer, int], target: tuple[Buffer, int], n: int
    ) -> None:
        """Copy ``n`` bytes between devices: directly when both offer it, else via the host."""
        src_device, dst_device = self.devices[src], self.devices[dst]
        if (
            isinstance(src_device, SupportsDirectCopy)
            and isinstance(dst_device, SupportsDirectCopy)
            and dst_device.copy_from(source[0], source[1], target[0], target[1], n)
        ):
            return
        target[0].write(target[1], source[0].read(source[1], n))
