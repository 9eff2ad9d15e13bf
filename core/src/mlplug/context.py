"""``Context``: where tensors are created and graphs are built and run (SEMANTICS §2, §4).

A root context (``backend.new_context()``) and every ``input()``/``layer(i)`` context derived from
it form one *family*: one graph, one node capacity, one set of buffers, closed together.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mlplug._opcalls import ContextOps
from mlplug.dtype import CREATE, DType
from mlplug.errors import ContextError, DTypeError, ShapeError
from mlplug.ops import INT32_MAX, INT32_MIN, OPS, Meta, normalize
from mlplug.tensor import Storage, Tensor

if TYPE_CHECKING:
    from mlplug.executor import GraphExecutor, Role

__all__ = ["Context", "Family", "is_closed", "overwrite", "release_results"]

_MAX_BYTES = 2**63 - 1  # the largest tensor: sizes and byte offsets are int64


class Family:
    """The state shared by a root context and its derived contexts.

    ``executor`` runs the family's graphs and owns its buffers (:mod:`mlplug.executor` says what
    it may read and write here).
    """

    __slots__ = (
        "__weakref__",
        "buffers",
        "capacity",
        "closed",
        "executor",
        "graph",
        "in_graph",
        "memo",
        "results",
    )

    def __init__(self, executor: GraphExecutor, capacity: int) -> None:
        self.executor = executor
        self.memo: object = None  # the executor's own state for this graph (e.g. its plan)
        self.capacity = capacity
        self.graph: list[Tensor] = []
        self.in_graph: set[int] = set()
        self.buffers: list[tuple[Storage, int | None, int]] = []  # storage, layer, accounted
        self.results: dict[int, Tensor] = {}  # retained results, by id (listed once each)
        self.closed = False

    def check_open(self, what: str) -> None:
        """Raise ``ContextError`` if the family (or its backend) is closed."""
        if self.closed:
            raise ContextError(f"{what}: the context has been closed")
        if self.executor.closed:
            raise ContextError(f"{what}: the backend has been closed")


class Context(ContextOps):
    """A member of a context family: the root, an ``input()`` or a ``layer(i)`` context.

    ``arange`` (the op without a tensor operand) comes from :class:`mlplug._opcalls.ContextOps`.
    """

    __slots__ = ("_family", "_layer", "_role")

    def __init__(self, family: Family, role: Role = "root", layer: int | None = None) -> None:
        self._family = family
        self._role = role
        self._layer = layer

    # -- family members ---------------------------------------------------------------------

    def input(self) -> Context:
        """Return a context whose buffers live on the CPU and are not accounted."""
        self._family.check_open("input")
        return Context(self._family, "input")

    def layer(self, i: int) -> Context:
        """Return a context whose buffers live on layer ``i``'s device, counted as its cache."""
        self._family.check_open("layer")
        blocks = self._family.executor.blocks
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= blocks:
            raise IndexError(f"layer: index must be in 0..{blocks}, got {i!r}")
        return Context(self._family, "layer", i)

    def max_graph_nodes(self) -> int:
        """Return the node capacity given at creation."""
        return self._family.capacity

    def close(self) -> None:
        """Free every buffer and retained result of the family. Idempotent."""
        self._family.executor.close_family(self._family)

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- creation (§4.2, §4.3) --------------------------------------------------------------

    def _new_buffer(self, what: str, dtype: object, shape: Sequence[object]) -> Tensor:
        meta = self._buffer_meta(what, dtype, shape)
        return self._family.executor.create_buffer(self._family, self._role, self._layer, meta)

    def _buffer_meta(self, what: str, dtype: object, shape: Sequence[object]) -> Meta:
        self._family.check_open(what)
        if self._role == "root":
            raise ContextError(
                f"{what}: the root context has no device (use ctx.input() or ctx.layer(i))"
            )
        if not isinstance(dtype, DType) or dtype not in CREATE:
            name = dtype.name if isinstance(dtype, DType) else repr(dtype)
            raise DTypeError(
                f"{what}: dtype {name} cannot be created (expected F32, F16, BF16, I32, Q8_0 "
                "or Q4_0)"
            )
        if not 1 <= len(shape) <= 4:
            raise ShapeError(f"{what}: shape must have 1 to 4 extents, got {len(shape)}")
        extents = []
        for i, v in enumerate(shape):
            if isinstance(v, bool):
                raise ShapeError(f"{what}: extent {i} must be an integer, got bool")
            try:
                extents.append(operator.index(v))  # type: ignore[arg-type]
            except TypeError:
                raise ShapeError(f"{what}: extent {i} must be an integer, got {v!r}") from None
        if any(v < 0 for v in extents):
            raise ShapeError(f"{what}: extents must be >= 0, got {extents}")
        if dtype.is_block and extents[0] % dtype.block_size:
            raise ShapeError(
                f"{what}: ne0 ({extents[0]}) must be a multiple of {dtype.block_size} "
                f"for {dtype.name}"
            )
        nbytes = dtype.nbytes(math.prod(extents))
        if nbytes > _MAX_BYTES:
            # Sizes and offsets are int64 on every device (ggml's too); numpy would fail with
            # its own error, a C device would wrap.
            raise ShapeError(
                f"{what}: shape {extents} of {dtype.name} needs {nbytes} bytes, more than the "
                f"{_MAX_BYTES} a tensor can hold"
            )
        return Meta.fresh(dtype, normalize(extents))

    def empty(self, dtype: DType, *shape: int) -> Tensor:
        """Create a buffer tensor whose content is unspecified until written."""
        return self._new_buffer("empty", dtype, shape)

    def zeros(self, dtype: DType, *shape: int) -> Tensor:
        """Create a buffer tensor filled with zero bytes."""
        t = self._new_buffer("zeros", dtype, shape)
        self._family.executor.fill(t, None)
        return t

    def from_float_slice(self, values: Any, *shape: int) -> Tensor:
        """Create an F32 buffer tensor holding ``values`` (dim 0 fastest, rounded to F32)."""
        import numpy as np

        self._family.check_open("from_float_slice")
        try:
            arr = np.asarray(values, dtype=np.float32).ravel()
        except (TypeError, ValueError) as err:
            raise DTypeError(f"from_float_slice: values are not numbers ({err})") from err
        return self._filled("from_float_slice", DType.F32, arr, shape)

    def from_int_slice(self, values: Any, *shape: int) -> Tensor:
        """Create an I32 buffer tensor holding the integers ``values``."""
        import numpy as np

        self._family.check_open("from_int_slice")
        arr = np.asarray(values)
        if arr.size == 0:
            arr = np.zeros(0, dtype=np.int64)
        elif arr.dtype.kind == "O":
            try:
                arr = np.array([operator.index(v) for v in arr.ravel()], dtype=object)
            except TypeError as err:
                raise DTypeError(f"from_int_slice: values must be integers ({err})") from err
        elif arr.dtype.kind not in "iu":
            raise DTypeError(f"from_int_slice: values must be integers, got {arr.dtype}")
        flat = arr.ravel()
        if flat.size and (int(flat.min()) < INT32_MIN or int(flat.max()) > INT32_MAX):
            raise ValueError("from_int_slice: values outside the int32 range")
        return self._filled("from_int_slice", DType.I32, flat.astype(np.int32), shape)

    def _filled(self, what: str, dtype: DType, flat: Any, shape: Sequence[int]) -> Tensor:
        meta = self._buffer_meta(what, dtype, shape)
        if flat.size != meta.n:
            raise ShapeError(
                f"{what}: got {flat.size} values for shape {list(shape)} ({meta.n} elements)"
            )
        t = self._family.executor.create_buffer(self._family, self._role, self._layer, meta)
        self._family.executor.fill(t, flat.astype("<" + flat.dtype.str[1:]).tobytes())
        return t

    # -- graph --------------------------------------------------------------------------------

    def _record(self, op: str, srcs: Sequence[Tensor | None], params: dict[str, Any]) -> Tensor:
        family = self._family
        family.check_open(op)
        opdef = OPS[op]
        metas: list[Meta | None] = []
        for i, s in enumerate(srcs):
            if s is None:
                role = opdef.operands[min(i, len(opdef.operands) - 1)]
                if not role.endswith("?"):
                    raise TypeError(f"{op}: operand {role} must be a Tensor, got None")
                metas.append(None)
                continue
            if not isinstance(s, Tensor):
                raise TypeError(f"{op}: operands must be Tensors, got {type(s).__name__}")
            if s._family.executor is not family.executor:
                raise ContextError(f"{op}: operand belongs to another backend")
            if s._family.closed or family.executor.closed:
                raise ContextError(f"{op}: operand's context has been closed")
            metas.append(s._meta)
        result = opdef.infer(metas, dict(params))
        root = None
        if opdef.kind == "view":
            a = srcs[0]
            assert a is not None
            root = a._root or a
        elif opdef.kind == "copy":
            dst = srcs[1]
            assert dst is not None
            root = dst._root or dst
        return Tensor(
            family, result.meta, op=op, srcs=tuple(srcs), params=dict(result.params), root=root
        )

    def _backend_permuted_v(self) -> bool:
        return self._family.executor.cache_config().permuted_v

    def forward(self, *ts: Tensor) -> Context:
        """Append each tensor and its missing ancestors to the family's graph; return self."""
        family = self._family
        family.check_open("forward")
        new: list[Tensor] = []
        in_graph = family.in_graph  # not copied: forward runs per put, on a growing graph
        seen: set[int] = set()
        for t in ts:
            if not isinstance(t, Tensor):
                raise TypeError(f"forward: expected Tensors, got {type(t).__name__}")
            if t._family.executor is not family.executor:
                raise ContextError("forward: tensor belongs to another backend")
            if t._op is None or id(t) in seen or id(t) in in_graph:
                continue
            # Iterative post-order DFS: operands (in order) before their dependents. A node is
            # marked when pushed: in a DAG a marked node met again is finished or an operand's.
            seen.add(id(t))
            stack = [(t, iter(t._srcs))]
            while stack:
                node, operands = stack[-1]
                for src in operands:
                    if (
                        src is not None
                        and src._op is not None
                        and id(src) not in seen
                        and id(src) not in in_graph
                    ):
                        seen.add(id(src))
                        stack.append((src, iter(src._srcs)))
                        break
                else:
                    stack.pop()
                    if node._family.closed:
                        raise ContextError("forward: a tensor's context has been closed")
                    new.append(node)
        if len(family.graph) + len(new) > family.capacity:
            raise ContextError(
                f"forward: graph would have {len(family.graph) + len(new)} nodes, "
                f"capacity is {family.capacity}"
            )
        family.graph.extend(new)
        family.in_graph.update(id(n) for n in new)
        return self

    def compute(self, *ts: Tensor) -> None:
        """Execute every node of the family's graph; make the listed nodes readable."""
        self._family.check_open("compute")
        self._family.executor.compute(self._family, ts)

    def reserve(self) -> None:
        """Plan and allocate the compute buffers the current graph needs, executing nothing."""
        self._family.check_open("reserve")
        self._family.executor.reserve(self._family)


_WRITABLE = {DType.F32: "<f4", DType.I32: "<i4"}


def overwrite(t: Tensor, values: Any) -> None:
    """Replace the values of an F32 or I32 buffer tensor (an ``input()`` tensor of a kept graph).

    The values are rounded as ``from_float_slice``/``from_int_slice`` round them, so a graph
    whose inputs are overwritten computes what the same graph built with these values would.
    Used by the layers that keep a graph between calls (:mod:`mlplug.nn`, the KV cache).

    Raises:
        ContextError: ``t``'s context is closed, or ``t`` is a graph node, not a buffer.
        DTypeError: ``t`` is neither F32 nor I32, or integer values are not integers.
        ValueError: An integer is outside the int32 range.
        ShapeError: The number of values differs from ``t``'s.
    """
    import numpy as np

    family = t._family
    family.check_open("overwrite")
    if t._op is not None or t._storage is None:
        raise ContextError(f"overwrite: {t!r} is a graph node, not a buffer tensor")
    dtype = t._meta.dtype
    code = _WRITABLE.get(dtype)
    if code is None:
        raise DTypeError(f"overwrite: {dtype.name} buffers cannot be overwritten (F32 or I32)")
    if dtype is DType.F32:
        flat = np.asarray(values, dtype=np.float32).ravel()
    elif isinstance(values, range):  # cell indices: checked by their ends
        if values and (
            min(values[0], values[-1]) < INT32_MIN or max(values[0], values[-1]) > INT32_MAX
        ):
            raise ValueError("overwrite: values outside the int32 range")
        flat = np.arange(values.start, values.stop, values.step, dtype=np.int32)
    else:
        flat = np.asarray(values).ravel()
        if flat.size and flat.dtype.kind not in "iu":
            raise DTypeError(f"overwrite: values must be integers, got {flat.dtype}")
        if flat.size and (int(flat.min()) < INT32_MIN or int(flat.max()) > INT32_MAX):
            raise ValueError("overwrite: values outside the int32 range")
    if flat.size != t._meta.n:
        raise ShapeError(f"overwrite: got {flat.size} values for {t._meta.n} elements")
    family.executor.fill(t, flat.astype(code, copy=False).tobytes())


def is_closed(ctx: Context) -> bool:
    """Whether ``ctx``'s family (or its backend) has been closed."""
    family = ctx._family
    return family.closed or family.executor.closed


def release_results(ctx: Context) -> None:
    """Drop the results that ``ctx``'s family retains after a compute (§2.4): they are no longer
    readable, and their memory goes now rather than at the next compute or ``close``.

    For a graph kept between calls, whose results have been read.
    """
    family = ctx._family
    for t in family.results.values():
        t._result = None
        t._readable = False
    family.results.clear()
