"""The ops table: every tensor op declared once (SEMANTICS §5).

Each :class:`OpDef` names the op, its operand roles, its kind (``compute`` writes its own
storage, ``view`` shares its source's storage and executes nothing, ``copy`` writes into its
destination), a rule that validates operands and parameters and infers the result's layout, FLOP
and byte counts (for the perf mode and benchmarks) and the conformance tolerance. The graph
builder (:mod:`mlplug.tensor`), the scheduler, plugins' ``supports``, the conformance reference
and its case generator are all keyed by this table, so an op added here shows up everywhere and a
meta-test fails where it lacks an implementation.

Rules work on :class:`Meta` records (layout only), never on tensors, so they run at build time
with no device and no numpy. Every failure names the op: ``"mulmat: a.ne0 (4) != b.ne0 (3)"``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlplug.dtype import ANY, CACHE, FLOAT, WEIGHT, DType
from mlplug.dtype import round_f32 as f32
from mlplug.errors import DTypeError, ShapeError

__all__ = [
    "OPS",
    "Meta",
    "OpDef",
    "Result",
    "Tolerance",
    "contiguous_strides",
    "is_contiguous",
    "n_elements",
]

Shape4 = tuple[int, int, int, int]
ZERO_NE: Shape4 = (0, 1, 1, 1)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# ---------------------------------------------------------------------------------------------
# Layout helpers


def n_elements(ne: Sequence[int]) -> int:
    """Return the product of the extents."""
    return ne[0] * ne[1] * ne[2] * ne[3]


def normalize(ne: Sequence[int]) -> Shape4:
    """Return ``ne`` padded to four extents, or ``[0, 1, 1, 1]`` when it holds no element."""
    full = (*ne, 1, 1, 1, 1)[:4]
    return ZERO_NE if 0 in full else (full[0], full[1], full[2], full[3])


def contiguous_strides(ne: Sequence[int], dtype: DType) -> Shape4:
    """Return the fresh (packed) byte strides of extents ``ne`` (SEMANTICS §1.1)."""
    nb0 = dtype.type_size
    nb1 = nb0 * (ne[0] // dtype.block_size)
    nb2 = nb1 * ne[1]
    return (nb0, nb1, nb2, nb2 * ne[2])


def is_contiguous(ne: Sequence[int], nb: Sequence[int], dtype: DType) -> bool:
    """Whether strides equal the fresh strides of ``ne``, ignoring dims of extent 1."""
    fresh = contiguous_strides(ne, dtype)
    return all(ne[i] == 1 or nb[i] == fresh[i] for i in range(4))


@dataclass(frozen=True, slots=True)
class Meta:
    """The layout of an operand as the rules see it.

    Attributes:
        ne: Four extents.
        nb: Four byte strides.
        dtype: Element type.
        offset: Byte offset of the data start inside the storage it views.
        storage: Size in bytes of that storage (what a ``view`` may address).
    """

    ne: Shape4
    nb: Shape4
    dtype: DType
    offset: int = 0
    storage: int = 0

    @classmethod
    def fresh(cls, dtype: DType, ne: Sequence[int]) -> Meta:
        """Return the layout of a newly created contiguous tensor."""
        full = normalize(ne)
        return cls(full, contiguous_strides(full, dtype), dtype, 0, dtype.nbytes(n_elements(full)))

    @property
    def n(self) -> int:
        """Element count."""
        return n_elements(self.ne)

    @property
    def nbytes(self) -> int:
        """Packed size of the elements."""
        return self.dtype.nbytes(self.n)


@dataclass(frozen=True, slots=True)
class Result:
    """What a rule infers: the result's layout and how it is stored.

    Attributes:
        meta: Layout of the result (``storage`` = bytes of its own storage for compute ops).
        params: Normalised parameters recorded on the node (what kernels read).
    """

    meta: Meta
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How close a device's result must be to the float64 reference (used by conformance).

    The per-element bound is ``eps_mult · eps(dtype) · scale + abs_eps · eps(dtype)``, where
    ``scale`` is ``|ref|`` for element-wise ops and the magnitude of the summed terms times
    ``sqrt(K)`` for reductions and products (``reduction=True``). ``nmse`` caps the normalised
    mean squared error over the whole output. ``exact`` ops must match to the bit. An op whose
    semantics allow a fixed approximation (``gelu``, §5.3) also declares a dtype-independent
    floor: the bound is at least ``rel_floor · |ref| + abs_floor``.
    """

    eps_mult: float = 4.0
    abs_eps: float = 4.0
    reduction: bool = False
    nmse: float = 1e-6
    exact: bool = False
    rel_floor: float = 0.0
    abs_floor: float = 0.0


@dataclass(frozen=True, slots=True)
class OpDef:
    """One op of the table.

    Attributes:
        name: Method name on ``Tensor`` (and the key everywhere else).
        operands: Roles of the tensor operands, receiver first; a trailing ``"*"`` role is
            variadic and a role ending in ``"?"`` may be ``None``.
        kind: ``"compute"``, ``"view"`` or ``"copy"``.
        rule: ``rule(srcs, params) -> Result``; validates and infers.
        flops: ``flops(srcs, out) -> int``, floating-point operations of one execution.
        dtypes: The receiver dtypes the op accepts (for case generation and support tables).
        tolerance: Conformance tolerance.
        doc: One-line meaning.
    """

    name: str
    operands: tuple[str, ...]
    kind: str
    rule: Callable[[Sequence[Meta | None], dict[str, Any]], Result]
    flops: Callable[[Sequence[Meta | None], Meta], int]
    dtypes: frozenset[DType]
    tolerance: Tolerance = field(default_factory=Tolerance)
    doc: str = ""

    def infer(self, srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
        """Validate operands and parameters; return the result layout (raises on bad input)."""
        return self.rule(srcs, params)

    def bytes_moved(self, srcs: Sequence[Meta | None], out: Meta) -> int:
        """Return the fewest bytes one execution reads and writes (each operand once)."""
        if self.kind == "view":
            return 0
        return sum(s.nbytes for s in srcs if s is not None) + out.nbytes


# ---------------------------------------------------------------------------------------------
# Checking helpers


def _need_dtype(op: str, role: str, dtype: DType, allowed: frozenset[DType]) -> None:
    if dtype not in allowed:
        names = ", ".join(sorted(d.name for d in allowed)) if len(allowed) < 10 else "see §3.3"
        raise DTypeError(f"{op}: {role} dtype {dtype.name} not accepted (expected {names})")


def _index(op: str, name: str, value: object, error: type[Exception] = ShapeError) -> int:
    if isinstance(value, bool):
        raise error(f"{op}: {name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        kind = type(value).__name__
        raise error(f"{op}: {name} must be an integer, got {kind} {value!r}") from None


def _float(op: str, name: str, value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{op}: {name} must be a number, got bool")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {name} must be a number, got {value!r}") from None


def _tiles(op: str, a: Meta, b: Meta, role: str = "b") -> None:
    """Check that ``b`` tiles ``a`` in every dim (SEMANTICS §5.2)."""
    for i in range(4):
        big, small = a.ne[i], b.ne[i]
        ok = big == 0 if small == 0 else big % small == 0
        if not ok:
            raise ShapeError(
                f"{op}: a.ne{i} ({big}) must be a multiple of {role}.ne{i} ({small}) "
                f"(a {list(a.ne)}, {role} {list(b.ne)})"
            )


def _fresh(dtype: DType, ne: Sequence[int]) -> Meta:
    return Meta.fresh(dtype, ne)


def _no_params(op: str, params: dict[str, Any]) -> None:
    if params:
        raise ValueError(f"{op}: unexpected parameters {sorted(params)}")


def _need(op: str, srcs: Sequence[Meta | None], count: int) -> None:
    if len(srcs) != count:
        raise ShapeError(f"{op}: expected {count} operands, got {len(srcs)}")


def _a(srcs: Sequence[Meta | None]) -> Meta:
    a = srcs[0]
    if a is None:
        raise ValueError("receiver is None")
    return a


# ---------------------------------------------------------------------------------------------
# Rules


def _unary(op: str) -> Callable[[Sequence[Meta | None], dict[str, Any]], Result]:
    def rule(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
        a = _a(srcs)
        _need_dtype(op, "receiver", a.dtype, FLOAT)
        if op == "scale":
            return Result(_fresh(a.dtype, a.ne), {"s": f32(_float(op, "s", params["s"]))})
        if op == "clamp":
            lo = f32(_float(op, "lo", params["lo"]))
            hi = f32(_float(op, "hi", params["hi"]))
            return Result(_fresh(a.dtype, a.ne), {"lo": lo, "hi": hi})
        _no_params(op, params)
        return Result(_fresh(a.dtype, a.ne), {})

    return rule


def _binary(op: str) -> Callable[[Sequence[Meta | None], dict[str, Any]], Result]:
    def rule(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
        a, b = srcs
        if a is None or b is None:
            raise ValueError(f"{op}: operands must be tensors")
        _need_dtype(op, "receiver", a.dtype, FLOAT)
        _need_dtype(op, "b", b.dtype, FLOAT)
        _tiles(op, a, b)
        return Result(_fresh(a.dtype, a.ne), {})

    return rule


def _mulmat(op: str) -> Callable[[Sequence[Meta | None], dict[str, Any]], Result]:
    def rule(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
        a, b = srcs
        assert a is not None and b is not None
        _need_dtype(op, "receiver", a.dtype, WEIGHT)
        _need_dtype(op, "b", b.dtype, frozenset({DType.F32}))
        if a.ne[0] != b.ne[0]:
            raise ShapeError(f"{op}: a.ne0 ({a.ne[0]}) != b.ne0 ({b.ne[0]})")
        for i in (2, 3):
            ok = b.ne[i] == 0 if a.ne[i] == 0 else b.ne[i] % a.ne[i] == 0
            if not ok:
                raise ShapeError(
                    f"{op}: b.ne{i} ({b.ne[i]}) must be a multiple of a.ne{i} ({a.ne[i]})"
                )
        return Result(_fresh(DType.F32, (a.ne[1], b.ne[1], b.ne[2], b.ne[3])), {})

    return rule


def _mulmat_id(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "mulmat_id"
    as_, b, ids = srcs
    assert as_ is not None and b is not None and ids is not None
    _need_dtype(op, "receiver", as_.dtype, WEIGHT)
    _need_dtype(op, "b", b.dtype, frozenset({DType.F32}))
    _need_dtype(op, "ids", ids.dtype, frozenset({DType.I32}))
    if as_.ne[3] != 1 or b.ne[3] != 1:
        raise ShapeError(f"{op}: as_.ne3 ({as_.ne[3]}) and b.ne3 ({b.ne[3]}) must be 1")
    if ids.ne[2] != 1 or ids.ne[3] != 1:
        raise ShapeError(f"{op}: ids must be 2-D [n_used, T], got {list(ids.ne)}")
    if as_.ne[0] != b.ne[0]:
        raise ShapeError(f"{op}: as_.ne0 ({as_.ne[0]}) != b.ne0 ({b.ne[0]})")
    n_used, tokens = ids.ne[0], ids.ne[1]
    if b.ne[2] != tokens:
        raise ShapeError(f"{op}: b.ne2 ({b.ne[2]}) != ids.ne1 ({tokens})")
    if b.ne[1] == 0 or n_used % b.ne[1] != 0:
        raise ShapeError(f"{op}: b.ne1 ({b.ne[1]}) must divide ids.ne0 ({n_used})")
    return Result(_fresh(DType.F32, (as_.ne[1], n_used, tokens, 1)), {})


def _row_op(op: str, out_dtype: DType | None, per_row: bool) -> Callable[..., Result]:
    def rule(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
        a = _a(srcs)
        _need_dtype(op, "receiver", a.dtype, FLOAT)
        _no_params(op, params)
        dtype = out_dtype or a.dtype
        ne = (1, a.ne[1], a.ne[2], a.ne[3]) if per_row else a.ne
        return Result(_fresh(dtype, ne), {})

    return rule


def _eps(op: str, params: dict[str, Any]) -> float:
    eps = _float(op, "eps", params["eps"])
    if not eps >= 0.0 or math.isinf(eps):
        raise ValueError(f"{op}: eps must be a finite float >= 0, got {eps}")
    return eps


def _norm(op: str) -> Callable[..., Result]:
    def rule(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
        a = _a(srcs)
        _need_dtype(op, "receiver", a.dtype, FLOAT)
        for role, m in zip(("w", "b"), srcs[1:], strict=False):
            if m is not None:
                _need_dtype(op, role, m.dtype, FLOAT)
                _tiles(op, a, m, role)
        return Result(_fresh(a.dtype, a.ne), {"eps": _eps(op, params)})

    return rule


def _extents(op: str, shape: Sequence[object], what: str = "shape") -> tuple[int, ...]:
    if not 1 <= len(shape) <= 4:
        raise ShapeError(f"{op}: {what} must have 1 to 4 extents, got {len(shape)}")
    out = tuple(_index(op, f"{what}[{i}]", v) for i, v in enumerate(shape))
    if any(v < 0 for v in out):
        raise ShapeError(f"{op}: extents must be >= 0, got {list(out)}")
    return out


def _reshape(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "reshape"
    a = _a(srcs)
    shape = _extents(op, params["shape"])
    total = math.prod(shape)
    if total != a.n:
        raise ShapeError(f"{op}: {list(shape)} has {total} elements, receiver has {a.n}")
    if not is_contiguous(a.ne, a.nb, a.dtype):
        raise ShapeError(f"{op}: receiver is not contiguous (call contiguous() first)")
    ne = normalize(shape)
    if a.dtype.is_block and ne[0] % a.dtype.block_size:
        raise ShapeError(f"{op}: ne0 ({ne[0]}) must be a multiple of {a.dtype.block_size}")
    meta = Meta(ne, contiguous_strides(ne, a.dtype), a.dtype, a.offset, a.storage)
    return Result(meta, {"ne": ne})


def _view(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "view"
    a = _a(srcs)
    args = params["args"]
    if len(args) not in (1, 3, 5, 7):
        raise ShapeError(f"{op}: takes 1, 3, 5 or 7 arguments after the offset, got {len(args)}")
    size = a.dtype.type_size
    offset = _index(op, "offset", params["offset"])
    values = [_index(op, f"argument {i}", v) for i, v in enumerate(args)]
    ne = [values[0], *values[2::2]]
    given = values[1::2]
    if any(v < 0 for v in ne):
        raise ShapeError(f"{op}: extents must be >= 0, got {ne}")
    for name, v in (("offset", offset), *((f"nb{i + 1}", s) for i, s in enumerate(given))):
        if v < 0 or v % size:
            raise ShapeError(f"{op}: {name} ({v}) must be >= 0 and a multiple of {size}")
    if a.dtype.is_block and ne[0] % a.dtype.block_size:
        raise ShapeError(f"{op}: n0 ({ne[0]}) must be a multiple of {a.dtype.block_size}")
    full = (*ne, 1, 1, 1)[:4]
    nb = [size, *given]
    # Strides not given continue packed from the last one: nb[k] = nb[k-1] * ne[k-1].
    first_row = size * (full[0] // a.dtype.block_size)
    while len(nb) < 4:
        nb.append(first_row if len(nb) == 1 else nb[-1] * full[len(nb) - 1])
    if 0 in full:
        meta = Meta(ZERO_NE, contiguous_strides(ZERO_NE, a.dtype), a.dtype, 0, 0)
        return Result(meta, {"offset": offset, "ne": ZERO_NE, "nb": meta.nb})
    blocks0 = full[0] // a.dtype.block_size
    span = (blocks0 - 1) * nb[0] + sum((full[i] - 1) * nb[i] for i in (1, 2, 3)) + size
    start = a.offset + offset
    if start + span > a.storage:
        raise ShapeError(
            f"{op}: bytes [{offset}, {offset + span}) from the receiver's start reach past its "
            f"storage ({a.storage - a.offset} bytes from the receiver's start)"
        )
    nb4 = (nb[0], nb[1], nb[2], nb[3])
    meta = Meta((full[0], full[1], full[2], full[3]), nb4, a.dtype, start, a.storage)
    return Result(meta, {"offset": offset, "ne": meta.ne, "nb": nb4})


def _permute(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "permute"
    a = _a(srcs)
    axes = params["axes"]
    if len(axes) != 4:
        raise ShapeError(f"{op}: takes exactly 4 axes, got {len(axes)}")
    p = tuple(_index(op, f"p{i}", v) for i, v in enumerate(axes))
    if sorted(p) != [0, 1, 2, 3]:
        raise ShapeError(f"{op}: {list(p)} is not a permutation of 0..3")
    if a.dtype.is_block and p[0] != 0:
        raise ShapeError(f"{op}: p0 must be 0 for block dtype {a.dtype.name}, got {p[0]}")
    ne, nb = [0] * 4, [0] * 4
    for i in range(4):
        ne[p[i]], nb[p[i]] = a.ne[i], a.nb[i]
    if a.n == 0:
        meta = Meta(ZERO_NE, contiguous_strides(ZERO_NE, a.dtype), a.dtype, 0, 0)
    else:
        meta = Meta(
            (ne[0], ne[1], ne[2], ne[3]), (nb[0], nb[1], nb[2], nb[3]), a.dtype, a.offset, a.storage
        )
    return Result(meta, {"axes": p})


def _contiguous(op: str) -> Callable[..., Result]:
    def rule(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
        a = _a(srcs)
        _need_dtype(op, "receiver", a.dtype, ANY)
        return Result(_fresh(a.dtype, a.ne), {})

    return rule


def _copy(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "copy"
    a, dst = srcs
    assert a is not None and dst is not None
    _need_dtype(op, "receiver", a.dtype, ANY)
    if not ((a.dtype in CACHE and dst.dtype in CACHE) or a.dtype == dst.dtype):
        raise DTypeError(
            f"{op}: cannot convert {a.dtype.name} to {dst.dtype.name} "
            "(only between F32/F16/BF16/Q8_0/Q4_0, or to the same dtype)"
        )
    if a.n != dst.n:
        raise ShapeError(f"{op}: receiver has {a.n} elements, dst has {dst.n}")
    return Result(dst, {})


_ASSEMBLE = FLOAT | {DType.I32}


def _set(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "set"
    a, b = srcs
    assert a is not None and b is not None
    _need_dtype(op, "receiver", a.dtype, _ASSEMBLE)
    if b.dtype != a.dtype:
        raise DTypeError(f"{op}: b dtype {b.dtype.name} must equal the receiver's {a.dtype.name}")
    strides = params["strides"]
    if len(strides) > 1:
        raise ShapeError(f"{op}: takes at most one stride, got {len(strides)}")
    out = _fresh(a.dtype, a.ne)
    size = a.dtype.type_size
    offset = _index(op, "offset", params["offset"])
    s1 = _index(op, "stride", strides[0]) if strides else out.nb[1]
    for name, v in (("offset", offset), ("stride", s1)):
        if v < 0 or v % size:
            raise ShapeError(f"{op}: {name} ({v}) must be >= 0 and a multiple of {size}")
    if b.n:
        last = offset + (b.ne[0] - 1) * size + (b.ne[1] - 1) * s1
        last += (b.ne[2] - 1) * out.nb[2] + (b.ne[3] - 1) * out.nb[3]
        if last + size > out.nbytes:
            raise ShapeError(
                f"{op}: b {list(b.ne)} at offset {offset} writes up to byte {last + size}, "
                f"past the result's {out.nbytes} bytes"
            )
    return Result(out, {"offset": offset, "nb": (size, s1, out.nb[2], out.nb[3])})


def _pad(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "pad"
    a = _a(srcs)
    _need_dtype(op, "receiver", a.dtype, _ASSEMBLE)
    pads = params["pads"]
    if len(pads) != 4:
        raise ShapeError(f"{op}: takes exactly 4 paddings, got {len(pads)}")
    p = tuple(_index(op, f"p{i}", v) for i, v in enumerate(pads))
    if any(v < 0 for v in p):
        raise ShapeError(f"{op}: paddings must be >= 0, got {list(p)}")
    return Result(_fresh(a.dtype, [a.ne[i] + p[i] for i in range(4)]), {"pads": p})


def _dim(op: str, value: object) -> int:
    dim = _index(op, "dim", value)
    if not 0 <= dim < 4:
        raise ShapeError(f"{op}: dim must be in 0..3, got {dim}")
    return dim


def _concat_all(op: str, metas: Sequence[Meta], dim: int) -> Result:
    # Shape rules apply literally to the stored extents (a zero-element operand is [0,1,1,1]).
    a = metas[0]
    _need_dtype(op, "receiver", a.dtype, _ASSEMBLE)
    for k, m in enumerate(metas[1:], start=1):
        if m.dtype != a.dtype:
            raise DTypeError(f"{op}: operand {k} dtype {m.dtype.name} != {a.dtype.name}")
        for i in range(4):
            if i != dim and m.ne[i] != a.ne[i]:
                raise ShapeError(
                    f"{op}: operand {k} {list(m.ne)} differs from {list(a.ne)} in dim {i}"
                )
    ne = list(a.ne)
    ne[dim] = sum(m.ne[dim] for m in metas)
    return Result(_fresh(a.dtype, ne), {"dim": dim})


def _concat(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    metas = [m for m in srcs if m is not None]
    return _concat_all("concat", metas, _dim("concat", params["dim"]))


def _stack(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    metas = [m for m in srcs if m is not None]
    return _concat_all("stack", metas, _dim("stack", params["dim"]))


def _repeat(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "repeat"
    a = _a(srcs)
    _need_dtype(op, "receiver", a.dtype, _ASSEMBLE)
    dim = _dim(op, params["dim"])
    n = _index(op, "n", params["n"])
    if n < 0:
        raise ShapeError(f"{op}: n must be >= 0, got {n}")
    ne = list(a.ne)
    ne[dim] *= n
    return Result(_fresh(a.dtype, ne), {"dim": dim, "n": n})


def _rows(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "rows"
    a, ids = srcs
    assert a is not None and ids is not None
    _need_dtype(op, "receiver", a.dtype, ANY)
    _need_dtype(op, "ids", ids.dtype, frozenset({DType.I32}))
    if a.ne[2] != ids.ne[1] or a.ne[3] != ids.ne[2] or ids.ne[3] != 1:
        raise ShapeError(
            f"{op}: need a.ne2 == ids.ne1, a.ne3 == ids.ne2 and ids.ne3 == 1 "
            f"(a {list(a.ne)}, ids {list(ids.ne)})"
        )
    dtype = DType.I32 if a.dtype == DType.I32 else DType.F32
    return Result(_fresh(dtype, (a.ne[0], ids.ne[0], ids.ne[1], ids.ne[2])), {})


def _argsort(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    a = _a(srcs)
    _need_dtype("argsort", "receiver", a.dtype, FLOAT)
    return Result(_fresh(DType.I32, a.ne), {})


def _topk(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "topk"
    a = _a(srcs)
    _need_dtype(op, "receiver", a.dtype, FLOAT)
    k = _index(op, "k", params["k"])
    if not 1 <= k <= a.ne[0]:
        raise ShapeError(f"{op}: k must be in 1..ne0 ({a.ne[0]}), got {k}")
    # The result is the first k columns of a full I32 argsort: a non-contiguous view whose
    # storage holds all ne0 indices of every row (as ggml does).
    full = _fresh(DType.I32, a.ne)
    meta = Meta((k, a.ne[1], a.ne[2], a.ne[3]), full.nb, DType.I32, 0, full.storage)
    return Result(meta, {"k": k})


def _conv_params(op: str, params: dict[str, Any]) -> dict[str, int]:
    out = {k: _index(op, k, params[k]) for k in ("s0", "s1", "p0", "p1", "d0", "d1")}
    for k in ("s0", "s1", "d0", "d1"):
        if out[k] < 1:
            raise ShapeError(f"{op}: {k} must be >= 1, got {out[k]}")
    for k in ("p0", "p1"):
        if out[k] < 0:
            raise ShapeError(f"{op}: {k} must be >= 0, got {out[k]}")
    return out


def _conv_out(op: str, kernel: Meta, inp: Meta, p: dict[str, int]) -> tuple[int, int]:
    if kernel.ne[2] != inp.ne[2]:
        raise ShapeError(f"{op}: kernel.ne2 ({kernel.ne[2]}) != input.ne2 ({inp.ne[2]})")
    ow = (inp.ne[0] + 2 * p["p0"] - p["d0"] * (kernel.ne[0] - 1) - 1) // p["s0"] + 1
    oh = (inp.ne[1] + 2 * p["p1"] - p["d1"] * (kernel.ne[1] - 1) - 1) // p["s1"] + 1
    if ow < 1 or oh < 1:
        raise ShapeError(f"{op}: output extents ({ow}, {oh}) must be >= 1")
    return ow, oh


def _conv_2d(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "conv_2d"
    kernel, inp = srcs
    assert kernel is not None and inp is not None
    _need_dtype(op, "kernel", kernel.dtype, frozenset({DType.F32, DType.F16}))
    _need_dtype(op, "input", inp.dtype, frozenset({DType.F32}))
    p = _conv_params(op, params)
    ow, oh = _conv_out(op, kernel, inp, p)
    return Result(_fresh(DType.F32, (ow, oh, kernel.ne[3], inp.ne[3])), p)


def _im2col(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "im2col"
    kernel, inp = srcs
    assert kernel is not None and inp is not None
    _need_dtype(op, "kernel", kernel.dtype, ANY)
    _need_dtype(op, "input", inp.dtype, frozenset({DType.F32}))
    p = _conv_params(op, params)
    ow, oh = _conv_out(op, kernel, inp, p)
    rows = inp.ne[2] * kernel.ne[1] * kernel.ne[0]
    return Result(
        _fresh(DType.F32, (rows, ow, oh, inp.ne[3])), {**p, "kw": kernel.ne[0], "kh": kernel.ne[1]}
    )


def _avg_pool_2d(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "avg_pool_2d"
    a = _a(srcs)
    _need_dtype(op, "receiver", a.dtype, FLOAT)
    k, s, p = (_index(op, n, params[n]) for n in ("k", "s", "p"))
    if k < 1 or s < 1 or p < 0:
        raise ShapeError(f"{op}: need k >= 1, s >= 1, p >= 0, got k={k} s={s} p={p}")
    ow = (a.ne[0] + 2 * p - k) // s + 1
    oh = (a.ne[1] + 2 * p - k) // s + 1
    if ow < 1 or oh < 1:
        raise ShapeError(f"{op}: output extents ({ow}, {oh}) must be >= 1")
    return Result(_fresh(DType.F32, (ow, oh, a.ne[2], a.ne[3])), {"k": k, "s": s, "p": p})


def _attention(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "scaled_dot_product_attention"
    q, k, v, mask = srcs
    assert q is not None and k is not None and v is not None
    _need_dtype(op, "query", q.dtype, frozenset({DType.F32}))
    _need_dtype(op, "key", k.dtype, CACHE)
    _need_dtype(op, "value", v.dtype, CACHE)
    permuted = bool(params["permuted_v"])
    dk, heads, tokens = q.ne[0], q.ne[1], q.ne[2]
    hkv, length = k.ne[1], k.ne[2]
    if q.ne[3] != 1 or k.ne[3] != 1 or v.ne[3] != 1:
        raise ShapeError(f"{op}: query, key and value must be 3-D (ne3 == 1)")
    if k.ne[0] != dk:
        raise ShapeError(f"{op}: key.ne0 ({k.ne[0]}) != query.ne0 ({dk})")
    if hkv == 0 or heads % hkv:
        raise ShapeError(f"{op}: query heads ({heads}) must be a multiple of key heads ({hkv})")
    if permuted:
        dv = v.ne[1]
        if v.ne[0] != length or v.ne[2] != hkv:
            raise ShapeError(f"{op}: permuted value {list(v.ne)} must be [L={length}, Dv, {hkv}]")
    else:
        dv = v.ne[0]
        if v.ne[1] != hkv or v.ne[2] != length:
            raise ShapeError(f"{op}: value {list(v.ne)} must be [Dv, Hkv={hkv}, L={length}]")
    if mask is not None:
        _need_dtype(op, "mask", mask.dtype, frozenset({DType.F32, DType.F16}))
        if mask.ne[0] != length or mask.ne[1] < tokens or mask.ne[2] != 1 or mask.ne[3] != 1:
            raise ShapeError(f"{op}: mask {list(mask.ne)} must be [L={length}, Tm >= {tokens}]")
    scale = _float(op, "scale", params["scale"])
    return Result(_fresh(DType.F32, (dv, heads, tokens)), {"scale": scale, "permuted_v": permuted})


def _rope(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "rope"
    a, cos, sin = srcs
    if a is None or cos is None or sin is None:
        raise ValueError(f"{op}: operands must be tensors")
    _need_dtype(op, "receiver", a.dtype, frozenset({DType.F32}))
    _need_dtype(op, "cos", cos.dtype, frozenset({DType.F32}))
    _need_dtype(op, "sin", sin.dtype, frozenset({DType.F32}))
    mode = _index(op, "mode", params["mode"], ValueError)
    if mode not in (0, 2):
        raise ValueError(f"{op}: mode must be 0 (normal) or 2 (neox), got {mode}")
    d, tokens = a.ne[0], a.ne[2]
    if a.ne[3] != 1:
        raise ShapeError(f"{op}: receiver {list(a.ne)} must be 3-D [D, H, T] (ne3 == 1)")
    if cos.ne != sin.ne:
        raise ShapeError(f"{op}: cos {list(cos.ne)} and sin {list(sin.ne)} differ")
    half = cos.ne[0]
    if cos.ne[1] != tokens or cos.ne[2] != 1 or cos.ne[3] != 1 or half < 1 or 2 * half > d:
        raise ShapeError(
            f"{op}: cos/sin {list(cos.ne)} must be [n_rot/2, T={tokens}] with 1 <= n_rot <= D ({d})"
        )
    return Result(_fresh(a.dtype, a.ne), {"mode": mode, "n_rot": 2 * half})


def _arange(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "arange"
    dtype = params["dtype"]
    if not isinstance(dtype, DType) or dtype not in (DType.F32, DType.I32):
        raise DTypeError(f"{op}: dtype must be F32 or I32, got {dtype!r}")
    start, stop, step = (_float(op, n, params[n]) for n in ("start", "stop", "step"))
    if not all(math.isfinite(x) for x in (start, stop, step)):
        raise ValueError(f"{op}: start, stop and step must be finite")
    if step == 0:
        raise ValueError(f"{op}: step must not be 0")
    n = max(0, math.ceil((stop - start) / step))
    if dtype == DType.I32 and n:
        for value in (start, start + (n - 1) * step):
            if not INT32_MIN <= math.trunc(value) <= INT32_MAX:
                raise ValueError(f"{op}: value {value} is outside the int32 range")
    return Result(
        _fresh(dtype, (n,)), {"start": start, "stop": stop, "step": step, "n": n, "dtype": dtype}
    )


# ---------------------------------------------------------------------------------------------
# FLOP counts


def _flops_per_out(k: int) -> Callable[[Sequence[Meta | None], Meta], int]:
    return lambda srcs, out: k * out.n


def _flops_per_in(k: int) -> Callable[[Sequence[Meta | None], Meta], int]:
    return lambda srcs, out: k * (srcs[0].n if srcs[0] is not None else 0)


def _flops_none(srcs: Sequence[Meta | None], out: Meta) -> int:
    return 0


def _flops_mulmat(srcs: Sequence[Meta | None], out: Meta) -> int:
    a = srcs[0]
    return 2 * out.n * (a.ne[0] if a is not None else 0)


def _flops_conv(srcs: Sequence[Meta | None], out: Meta) -> int:
    k = srcs[0]
    return 2 * out.n * (k.ne[0] * k.ne[1] * k.ne[2] if k is not None else 0)


def _flops_attention(srcs: Sequence[Meta | None], out: Meta) -> int:
    q, k = srcs[0], srcs[1]
    if q is None or k is None:
        return 0
    # QK^T and PV products plus softmax, per head and token.
    return 2 * q.n * k.ne[2] + 2 * out.n * k.ne[2] + 5 * q.ne[1] * q.ne[2] * k.ne[2]


# ---------------------------------------------------------------------------------------------
# The table

_EXACT = Tolerance(exact=True)
_ELEM = Tolerance(eps_mult=4.0, abs_eps=4.0)
_TRANSCENDENTAL = Tolerance(eps_mult=16.0, abs_eps=16.0)
_REDUCE = Tolerance(eps_mult=4.0, abs_eps=4.0, reduction=True, nmse=1e-5)
_PRODUCT = Tolerance(eps_mult=4.0, abs_eps=4.0, reduction=True, nmse=1e-4)


def _def(
    name: str,
    operands: tuple[str, ...],
    kind: str,
    rule: Callable[..., Result],
    flops: Callable[..., int],
    dtypes: frozenset[DType],
    tol: Tolerance,
    doc: str,
) -> OpDef:
    return OpDef(name, operands, kind, rule, flops, dtypes, tol, doc)


_UNARY_DOCS = {
    "neg": "-x",
    "sin": "sin(x)",
    "cos": "cos(x)",
    "tanh": "tanh(x)",
    "gelu": "tanh-approximated GELU",
    "silu": "x / (1 + exp(-x))",
    "relu": "max(x, 0)",
    "sigmoid": "1 / (1 + exp(-x))",
    "sqr": "x * x",
    "sqrt": "sqrt(x) (NaN below 0)",
    "scale": "x * f32(s)",
    "clamp": "max(min(x, hi), lo)",
}
_UNARY_TOL = {
    "neg": _EXACT,
    "relu": _EXACT,
    "sqr": _ELEM,
    "sqrt": _ELEM,
    "scale": _ELEM,
    "clamp": _EXACT,
    # §5.3: implementations may approximate (e.g. an fp16 lookup table) within this.
    "gelu": Tolerance(eps_mult=4.0, abs_eps=4.0, rel_floor=1e-3, abs_floor=1e-4),
}

_TABLE: list[OpDef] = [
    *(
        _def(
            name,
            ("a",),
            "compute",
            _unary(name),
            _flops_per_out(1 if name in ("neg", "relu", "sqr", "scale", "clamp") else 8),
            FLOAT,
            _UNARY_TOL.get(name, _TRANSCENDENTAL),
            doc,
        )
        for name, doc in _UNARY_DOCS.items()
    ),
    *(
        _def(
            name,
            ("a", "b"),
            "compute",
            _binary(name),
            _flops_per_out(1),
            FLOAT,
            _ELEM if name != "div" else Tolerance(eps_mult=4.0, abs_eps=4.0),
            f"a {sym} tile(b)",
        )
        for name, sym in (("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/"))
    ),
    _def(
        "mulmat",
        ("a", "b"),
        "compute",
        _mulmat("mulmat"),
        _flops_mulmat,
        WEIGHT,
        _PRODUCT,
        "b @ rep(a)^T, a block-repeated in dims 2 and 3",
    ),
    _def(
        "mulmat_full_prec",
        ("a", "b"),
        "compute",
        _mulmat("mulmat_full_prec"),
        _flops_mulmat,
        WEIGHT,
        _PRODUCT,
        "mulmat with F32 accumulation on every device",
    ),
    _def(
        "mulmat_id",
        ("as_", "b", "ids"),
        "compute",
        _mulmat_id,
        _flops_mulmat,
        WEIGHT,
        _PRODUCT,
        "mixture-of-experts product selected by ids",
    ),
    _def(
        "softmax",
        ("a",),
        "compute",
        _row_op("softmax", None, False),
        _flops_per_in(5),
        FLOAT,
        _REDUCE,
        "exp(x - max) / sum along dim 0",
    ),
    _def(
        "layer_norm",
        ("a", "w?", "b?"),
        "compute",
        _norm("layer_norm"),
        _flops_per_in(8),
        FLOAT,
        _REDUCE,
        "(x - mean) / sqrt(var + eps) * w + b along dim 0",
    ),
    _def(
        "rms_norm",
        ("a", "w?"),
        "compute",
        _norm("rms_norm"),
        _flops_per_in(4),
        FLOAT,
        _REDUCE,
        "x / sqrt(mean(x^2) + eps) * w along dim 0",
    ),
    _def(
        "sum_rows",
        ("a",),
        "compute",
        _row_op("sum_rows", None, True),
        _flops_per_in(1),
        FLOAT,
        _REDUCE,
        "sum along dim 0",
    ),
    _def(
        "mean",
        ("a",),
        "compute",
        _row_op("mean", DType.F32, True),
        _flops_per_in(1),
        FLOAT,
        _REDUCE,
        "mean along dim 0 (F32)",
    ),
    _def(
        "variance",
        ("a",),
        "compute",
        _row_op("variance", None, True),
        _flops_per_in(3),
        FLOAT,
        _REDUCE,
        "population variance along dim 0",
    ),
    _def(
        "stddev",
        ("a",),
        "compute",
        _row_op("stddev", None, True),
        _flops_per_in(3),
        FLOAT,
        _REDUCE,
        "sqrt(variance) along dim 0",
    ),
    _def(
        "reshape",
        ("a",),
        "view",
        _reshape,
        _flops_none,
        ANY,
        _EXACT,
        "view with new extents (receiver contiguous)",
    ),
    _def(
        "view", ("a",), "view", _view, _flops_none, ANY, _EXACT, "view with byte offset and strides"
    ),
    _def(
        "permute",
        ("a",),
        "view",
        _permute,
        _flops_none,
        ANY,
        _EXACT,
        "view with source axis i moved to position p_i",
    ),
    _def(
        "contiguous",
        ("a",),
        "compute",
        _contiguous("contiguous"),
        _flops_none,
        ANY,
        _EXACT,
        "packed copy",
    ),
    _def(
        "duplicate",
        ("a",),
        "compute",
        _contiguous("duplicate"),
        _flops_none,
        ANY,
        _EXACT,
        "packed copy",
    ),
    _def(
        "copy",
        ("a", "dst"),
        "copy",
        _copy,
        _flops_per_in(1),
        ANY,
        _EXACT,
        "write a's values into dst, converting dtype; returns a view of dst",
    ),
    _def(
        "set",
        ("a", "b"),
        "compute",
        _set,
        _flops_none,
        _ASSEMBLE,
        _EXACT,
        "packed copy of a with b written at a byte offset",
    ),
    _def(
        "pad",
        ("a",),
        "compute",
        _pad,
        _flops_none,
        _ASSEMBLE,
        _EXACT,
        "append zeros at the end of each dim",
    ),
    _def(
        "concat",
        ("a", "b"),
        "compute",
        _concat,
        _flops_none,
        _ASSEMBLE,
        _EXACT,
        "a then b along dim",
    ),
    _def(
        "stack",
        ("a", "*"),
        "compute",
        _stack,
        _flops_none,
        _ASSEMBLE,
        _EXACT,
        "concatenation of a and others along an existing dim",
    ),
    _def(
        "repeat",
        ("a",),
        "compute",
        _repeat,
        _flops_none,
        _ASSEMBLE,
        _EXACT,
        "tile the whole tensor n times along dim",
    ),
    _def(
        "rows", ("a", "ids"), "compute", _rows, _flops_none, ANY, _EXACT, "gather rows by I32 ids"
    ),
    _def(
        "argsort",
        ("a",),
        "compute",
        _argsort,
        _flops_per_in(8),
        FLOAT,
        _EXACT,
        "indices sorting each row ascending",
    ),
    _def(
        "topk",
        ("a",),
        "compute",
        _topk,
        _flops_per_in(8),
        FLOAT,
        _EXACT,
        "indices of the k largest of each row, descending",
    ),
    _def(
        "conv_2d",
        ("kernel", "input"),
        "compute",
        _conv_2d,
        _flops_conv,
        frozenset({DType.F32, DType.F16}),
        _PRODUCT,
        "2-D cross-correlation",
    ),
    _def(
        "im2col",
        ("kernel", "input"),
        "compute",
        _im2col,
        _flops_none,
        ANY,
        _EXACT,
        "unfold input patches into columns",
    ),
    _def(
        "avg_pool_2d",
        ("a",),
        "compute",
        _avg_pool_2d,
        _flops_per_out(1),
        FLOAT,
        _REDUCE,
        "average pooling, padding counted",
    ),
    _def(
        "scaled_dot_product_attention",
        ("query", "key", "value", "mask?"),
        "compute",
        _attention,
        _flops_attention,
        frozenset({DType.F32}),
        Tolerance(eps_mult=8.0, abs_eps=8.0, reduction=True, nmse=1e-4),
        "softmax(scale * K^T Q + mask) V with GQA",
    ),
    _def(
        "arange",
        (),
        "compute",
        _arange,
        _flops_per_out(1),
        frozenset({DType.F32, DType.I32}),
        _EXACT,
        "start + k * step, half-open",
    ),
    # Optional fused op (not in SEMANTICS §5): every first-party plugin implements it.
    _def(
        "rope",
        ("a", "cos", "sin"),
        "compute",
        _rope,
        _flops_per_out(3),
        frozenset({DType.F32}),
        Tolerance(eps_mult=4.0, abs_eps=32.0),
        "rotate pairs of dim 0 by cos/sin tables [n_rot/2, T]; mode 0 normal, 2 neox",
    ),
]

OPS: Mapping[str, OpDef] = {op.name: op for op in _TABLE}
"""Every op, by name."""
