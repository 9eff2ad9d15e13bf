"""The ops table: every tensor op declared once (SEMANTICS §5).

Each :class:`OpDef` names the op, its category, its operand roles, its parameter schema
(:class:`Param`: name, type, default, constraints), its kind (``compute`` writes its own storage,
``view`` shares its source's storage and executes nothing, ``copy`` writes into its destination),
a rule that validates operands and infers the result's layout, FLOP and byte counts (for the
perf mode and benchmarks), the conformance tolerance and the public method's docstring.

Everything else is derived from this table: the ``Tensor``/``Context`` recording methods
(generated into :mod:`mlplug._opcalls` by ``python -m mlplug._opgen``), the per-category rules
(``unary`` and ``binary`` ops share one rule each), the conformance suite's public calls and its
op lists, plugins' kernel tables by category, and the meta-tests that fail where an op lacks a
kernel or a reference.

Rules work on :class:`Meta` records (layout only), never on tensors, so they run at build time
with no device and no numpy. Every failure names the op: ``"mulmat: a.ne0 (4) != b.ne0 (3)"``.
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlplug.dtype import ANY, CACHE, FLOAT, WEIGHT, DType
from mlplug.dtype import round_f32 as f32
from mlplug.errors import DTypeError, ShapeError

__all__ = [
    "CATEGORIES",
    "OPS",
    "REQUIRED",
    "Meta",
    "OpDef",
    "Param",
    "Result",
    "Tolerance",
    "category",
    "contiguous_strides",
    "is_contiguous",
    "n_elements",
    "no_flops",
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


def no_flops(srcs: Sequence[Meta | None], out: Meta) -> int:
    """Count no floating-point operation (movement ops)."""
    return 0


Rule = Callable[[Sequence[Meta | None], dict[str, Any]], Result]
Flops = Callable[[Sequence[Meta | None], Meta], int]

CATEGORIES = (
    "unary",
    "binary",
    "product",
    "normalize",
    "reduce",
    "movement",
    "assemble",
    "sort",
    "conv",
    "attention",
    "create",
    "fused",
)
"""Op categories, in SEMANTICS order: unary §5.3, binary §5.2, product §5.4, normalize and reduce
§5.5, movement (views and copies) §5.6, assemble §5.7, sort §5.8, conv §5.9, attention §8.7,
create §4.3, and fused (optional ops beyond the spec)."""


class _Required:
    """The ``default`` of a parameter that has none."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Marks a :class:`Param` without a default."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Param:
    """One parameter of an op: an argument of its public method, checked by ``OpDef.infer``.

    ``OpDef.infer`` converts the value to ``type`` (an ``int`` must be an integer, not a bool; a
    ``float`` any real number), narrows it to F32 when ``f32`` is set, then checks ``finite``,
    ``minimum``, ``maximum`` and ``choices`` and raises ``error`` naming the op and the parameter.
    Variadic parameters are recorded as a tuple and checked element-wise by the op's rule.

    Attributes:
        name: Argument name in the method and key in the node's parameters.
        type: ``int``, ``float``, ``bool`` or ``DType``.
        default: The value when the caller omits it; ``REQUIRED`` when it has none.
        variadic: Taken as ``*name`` (a tuple of ``type``).
        minimum: Smallest accepted value, or ``None``.
        maximum: Largest accepted value, or ``None``.
        choices: The accepted values (empty: any).
        f32: Narrow a float to F32 before a kernel sees it (SEMANTICS §3.2).
        finite: Reject NaN and infinities.
        error: Exception class raised for a bad value.
        from_backend: Not an argument: the recording method asks the backend for it through the
            ``Context`` method of this name.
        doc: Meaning, shown in the method's docstring and error messages.
    """

    name: str
    type: builtins.type
    default: Any = REQUIRED
    variadic: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] = ()
    f32: bool = False
    finite: bool = False
    error: builtins.type[Exception] = ShapeError
    from_backend: str = ""
    doc: str = ""

    def check(self, op: str, value: object) -> Any:
        """Return ``value`` converted and validated (raises ``error`` naming ``op``)."""
        if self.variadic:
            if not isinstance(value, tuple | list):
                raise self.error(f"{op}: {self.name} must be a sequence, got {value!r}")
            return tuple(value)
        v: Any
        if self.type is int:
            v = _index(op, self.name, value, self.error)
        elif self.type is float:
            v = _float(op, self.name, value)
            v = f32(v) if self.f32 else v
            if self.finite and not math.isfinite(v):
                raise ValueError(f"{op}: {self.name} must be finite, got {v}")
        elif self.type is bool:
            v = bool(value)
        else:
            if not isinstance(value, self.type):
                raise self.error(f"{op}: {self.name} must be a {self.type.__name__}, got {value!r}")
            v = value
        if self.minimum is not None and self.maximum is not None:
            if not self.minimum <= v <= self.maximum:
                raise self.error(
                    f"{op}: {self.name} must be in {self.minimum}..{self.maximum}, got {v}"
                )
        elif self.minimum is not None and not v >= self.minimum:
            raise self.error(f"{op}: {self.name} must be >= {self.minimum}, got {v}")
        if self.choices and v not in self.choices:
            allowed = " or ".join(getattr(c, "name", str(c)) for c in self.choices)
            hint = f" ({self.doc})" if self.doc else ""
            raise self.error(f"{op}: {self.name} must be {allowed}{hint}, got {value!r}")
        return v


def _role(role: str) -> str:
    """Return a role's argument name: ``"w?"`` -> ``"w"``, ``"*others"`` -> ``"others"``."""
    return role.strip("*?")


@dataclass(frozen=True, slots=True, kw_only=True)
class OpDef:
    """One op of the table: everything the graph builder, plugins and the conformance suite know.

    Construct with keywords. Fields left empty are derived from the category where it fixes them:
    ``unary`` ops take one ``FLOAT`` operand ``a`` and keep its layout, ``binary`` ops take ``a``
    and ``b`` tiled over ``a`` (SEMANTICS §5.2-§5.3); both get their rule from the category.

    Attributes:
        name: Method name on ``Tensor`` (``Context`` when the op has no operand) and the key
            everywhere else.
        category: One of :data:`CATEGORIES`.
        doc: The public method's docstring (first line: an imperative summary).
        operands: Roles of the tensor operands, receiver first; a role starting with ``"*"`` is
            variadic and one ending in ``"?"`` may be ``None``.
        params: The parameter schema, in the order the method takes them.
        call: Argument names of the public method after ``ctx`` (operand roles without their
            marks, parameter names), when they are not the operands after the receiver followed
            by the parameters.
        kind: ``"compute"``, ``"view"`` (shares its receiver's storage, executes nothing) or
            ``"copy"`` (writes into its destination).
        rule: ``rule(srcs, params) -> Result``; validates operands and infers the result from
            parameters already checked against ``params``.
        flops: ``flops(srcs, out) -> int``, floating-point operations of one execution.
        dtypes: The receiver dtypes the op accepts (for case generation and support tables).
        tolerance: Conformance tolerance.
        optional: A fused op beyond SEMANTICS §5 (a backend may lack it; every first-party
            plugin implements it).
    """

    name: str
    category: str
    doc: str
    operands: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    call: tuple[str, ...] = ()
    kind: str = "compute"
    rule: Rule | None = None
    flops: Flops = no_flops
    dtypes: frozenset[DType] = frozenset()
    tolerance: Tolerance = field(default_factory=Tolerance)
    optional: bool = False

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"[ops] {self.name}: unknown category {self.category!r}")
        derived = _CATEGORY_DEFAULTS.get(self.category)
        if derived is not None:
            operands, dtypes, make_rule = derived
            if not self.operands:
                object.__setattr__(self, "operands", operands)
            if not self.dtypes:
                object.__setattr__(self, "dtypes", dtypes)
            if self.rule is None:
                object.__setattr__(self, "rule", make_rule(self.name))
        if self.rule is None or not self.dtypes or not self.doc:
            raise ValueError(f"[ops] {self.name}: needs a rule, dtypes and a doc")
        if self.kind not in ("compute", "view", "copy"):
            raise ValueError(f"[ops] {self.name}: unknown kind {self.kind!r}")
        expected = [_role(r) for r in self.operands[1:]]
        expected += [p.name for p in self.params if not p.from_backend]
        if sorted(self.arguments) != sorted(expected):
            raise ValueError(f"[ops] {self.name}: call {self.call} must name every argument")

    @property
    def receiver_is_context(self) -> bool:
        """Whether the op is recorded by a ``Context`` method (it has no tensor operand)."""
        return not self.operands

    @property
    def arguments(self) -> tuple[str, ...]:
        """Return the public method's argument names after ``ctx``, in order."""
        if self.call:
            return self.call
        return (
            *(_role(r) for r in self.operands[1:]),
            *(p.name for p in self.params if not p.from_backend),
        )

    def param(self, name: str) -> Param:
        """Return the schema entry of parameter ``name``."""
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"{self.name}: no parameter {name!r}")

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``params`` with defaults filled, converted and checked against the schema."""
        names = {p.name for p in self.params}
        unexpected = sorted(set(params) - names)
        if unexpected:
            raise ValueError(f"{self.name}: unexpected parameters {unexpected}")
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in params:
                out[p.name] = p.check(self.name, params[p.name])
            elif p.default is REQUIRED:
                raise TypeError(f"{self.name}: missing parameter {p.name!r}")
            else:
                out[p.name] = p.default
        return out

    def infer(self, srcs: Sequence[Meta | None], params: Mapping[str, Any]) -> Result:
        """Validate operands and parameters; return the result layout (raises on bad input)."""
        assert self.rule is not None  # __post_init__ guarantees it
        return self.rule(srcs, self.check_params(params))

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


def _a(srcs: Sequence[Meta | None]) -> Meta:
    a = srcs[0]
    if a is None:
        raise ValueError("receiver is None")
    return a


# ---------------------------------------------------------------------------------------------
# Rules


def _unary(op: str) -> Rule:
    """Return the rule of every ``unary`` op: a float receiver, its layout, the checked params."""

    def rule(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
        a = _a(srcs)
        _need_dtype(op, "receiver", a.dtype, FLOAT)
        return Result(_fresh(a.dtype, a.ne), params)

    return rule


def _binary(op: str) -> Rule:
    """Return the rule of every ``binary`` op: float operands, ``b`` tiling ``a`` (§5.2)."""

    def rule(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
        a, b = srcs
        if a is None or b is None:
            raise ValueError(f"{op}: operands must be tensors")
        _need_dtype(op, "receiver", a.dtype, FLOAT)
        _need_dtype(op, "b", b.dtype, FLOAT)
        _tiles(op, a, b)
        return Result(_fresh(a.dtype, a.ne), params)

    return rule


def _mulmat(op: str) -> Rule:
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
        dtype = out_dtype or a.dtype
        ne = (1, a.ne[1], a.ne[2], a.ne[3]) if per_row else a.ne
        return Result(_fresh(dtype, ne), {})

    return rule


def _norm(op: str) -> Callable[..., Result]:
    def rule(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
        a = _a(srcs)
        _need_dtype(op, "receiver", a.dtype, FLOAT)
        for role, m in zip(("w", "b"), srcs[1:], strict=False):
            if m is not None:
                _need_dtype(op, role, m.dtype, FLOAT)
                _tiles(op, a, m, role)
        return Result(_fresh(a.dtype, a.ne), {"eps": params["eps"]})

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
    offset = params["offset"]
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
    offset = params["offset"]
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
    return _concat_all("concat", metas, params["dim"])


def _stack(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    metas = [m for m in srcs if m is not None]
    return _concat_all("stack", metas, params["dim"])


def _repeat(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "repeat"
    a = _a(srcs)
    _need_dtype(op, "receiver", a.dtype, _ASSEMBLE)
    dim, n = params["dim"], params["n"]
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


def _set_rows(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "set_rows"
    a, dst, ids = srcs
    assert a is not None and dst is not None and ids is not None
    _need_dtype(op, "receiver", a.dtype, CACHE)
    _need_dtype(op, "dst", dst.dtype, CACHE)
    _need_dtype(op, "ids", ids.dtype, frozenset({DType.I32}))
    if ids.ne[1] != 1 or ids.ne[2] != 1 or ids.ne[3] != 1:
        raise ShapeError(f"{op}: ids must be a vector [R], got {list(ids.ne)}")
    if a.n == 0 and ids.n == 0:
        return Result(dst, {})
    if a.ne[1] != ids.ne[0]:
        raise ShapeError(f"{op}: receiver has {a.ne[1]} rows (ne1), ids has {ids.ne[0]}")
    if (a.ne[0], a.ne[2], a.ne[3]) != (dst.ne[0], dst.ne[2], dst.ne[3]):
        raise ShapeError(
            f"{op}: receiver {list(a.ne)} and dst {list(dst.ne)} must agree in ne0, ne2 and ne3"
        )
    return Result(dst, {})


def _argsort(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    a = _a(srcs)
    _need_dtype("argsort", "receiver", a.dtype, FLOAT)
    return Result(_fresh(DType.I32, a.ne), {})


def _topk(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "topk"
    a = _a(srcs)
    _need_dtype(op, "receiver", a.dtype, FLOAT)
    k = params["k"]
    if not 1 <= k <= a.ne[0]:
        raise ShapeError(f"{op}: k must be in 1..ne0 ({a.ne[0]}), got {k}")
    # The result is the first k columns of a full I32 argsort: a non-contiguous view whose
    # storage holds all ne0 indices of every row (as ggml does).
    full = _fresh(DType.I32, a.ne)
    meta = Meta((k, a.ne[1], a.ne[2], a.ne[3]), full.nb, DType.I32, 0, full.storage)
    return Result(meta, {"k": k})


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
    ow, oh = _conv_out(op, kernel, inp, params)
    return Result(_fresh(DType.F32, (ow, oh, kernel.ne[3], inp.ne[3])), params)


def _im2col(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "im2col"
    kernel, inp = srcs
    assert kernel is not None and inp is not None
    _need_dtype(op, "kernel", kernel.dtype, ANY)
    _need_dtype(op, "input", inp.dtype, frozenset({DType.F32}))
    ow, oh = _conv_out(op, kernel, inp, params)
    rows = inp.ne[2] * kernel.ne[1] * kernel.ne[0]
    return Result(
        _fresh(DType.F32, (rows, ow, oh, inp.ne[3])),
        {**params, "kw": kernel.ne[0], "kh": kernel.ne[1]},
    )


def _avg_pool_2d(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "avg_pool_2d"
    a = _a(srcs)
    _need_dtype(op, "receiver", a.dtype, FLOAT)
    k, s, p = params["k"], params["s"], params["p"]
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
    permuted = params["permuted_v"]
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
    return Result(_fresh(DType.F32, (dv, heads, tokens)), params)


def _rope(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "rope"
    a, cos, sin = srcs
    if a is None or cos is None or sin is None:
        raise ValueError(f"{op}: operands must be tensors")
    _need_dtype(op, "receiver", a.dtype, frozenset({DType.F32}))
    _need_dtype(op, "cos", cos.dtype, frozenset({DType.F32}))
    _need_dtype(op, "sin", sin.dtype, frozenset({DType.F32}))
    mode = params["mode"]
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


def _rms_norm_add(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "rms_norm_add"
    a, w, r = srcs
    if a is None or r is None:
        raise ValueError(f"{op}: a and r must be tensors")
    _need_dtype(op, "receiver", a.dtype, FLOAT)
    for role, m in (("w", w), ("r", r)):
        if m is not None:
            _need_dtype(op, role, m.dtype, FLOAT)
            _tiles(op, a, m, role)
    return Result(_fresh(a.dtype, a.ne), {"eps": params["eps"]})


def _arange(srcs: Sequence[Meta | None], params: dict[str, Any]) -> Result:
    op = "arange"
    dtype = params["dtype"]
    start, stop, step = params["start"], params["stop"], params["step"]
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


_CATEGORY_DEFAULTS: dict[str, tuple[tuple[str, ...], frozenset[DType], Callable[[str], Rule]]] = {
    "unary": (("a",), FLOAT, _unary),
    "binary": (("a", "b"), FLOAT, _binary),
}
"""Per category: the operands, receiver dtypes and rule factory every op of it shares."""


def _int(name: str, doc: str = "", **constraints: Any) -> Param:
    return Param(name=name, type=int, doc=doc, **constraints)


def _ints(name: str, doc: str = "") -> Param:
    return Param(name=name, type=int, variadic=True, doc=doc)


def _f32(name: str, doc: str = "") -> Param:
    return Param(name=name, type=float, f32=True, error=ValueError, doc=doc)


_EPS = Param(name="eps", type=float, minimum=0.0, finite=True, error=ValueError)
_DIM = _int("dim", minimum=0, maximum=3)
_CONV = tuple(
    _int(n, minimum=0 if n[0] == "p" else 1) for n in ("s0", "s1", "p0", "p1", "d0", "d1")
)


def _unary_op(
    name: str, doc: str, flops: int, tol: Tolerance = _TRANSCENDENTAL, *params: Param
) -> OpDef:
    return OpDef(
        name=name,
        category="unary",
        doc=doc,
        params=params,
        flops=_flops_per_out(flops),
        tolerance=tol,
    )


def _row_op_def(
    name: str,
    category: str,
    doc: str,
    flops_per_in: int,
    out_dtype: DType | None = None,
    per_row: bool = True,
) -> OpDef:
    return OpDef(
        name=name,
        category=category,
        doc=doc,
        operands=("a",),
        rule=_row_op(name, out_dtype, per_row),
        flops=_flops_per_in(flops_per_in),
        dtypes=FLOAT,
        tolerance=_REDUCE,
    )


def _binary_op(name: str, symbol: str) -> OpDef:
    return OpDef(
        name=name,
        category="binary",
        doc=f"Return ``a {symbol} b`` with ``b`` tiled over ``a``.",
        flops=_flops_per_out(1),
        tolerance=_ELEM,
    )


_TABLE: list[OpDef] = [
    # unary (§5.3)
    _unary_op("neg", "Return ``-x`` element-wise.", 1, _EXACT),
    _unary_op("sin", "Return ``sin(x)`` element-wise.", 8),
    _unary_op("cos", "Return ``cos(x)`` element-wise.", 8),
    _unary_op("tanh", "Return ``tanh(x)`` element-wise.", 8),
    # §5.3: implementations may approximate gelu (e.g. an fp16 lookup table) within this.
    _unary_op(
        "gelu",
        "Return the tanh-approximated GELU element-wise.",
        8,
        Tolerance(eps_mult=4.0, abs_eps=4.0, rel_floor=1e-3, abs_floor=1e-4),
    ),
    _unary_op("silu", "Return ``x / (1 + exp(-x))`` element-wise.", 8),
    _unary_op("relu", "Return ``max(x, 0)`` element-wise.", 1, _EXACT),
    _unary_op("sigmoid", "Return ``1 / (1 + exp(-x))`` element-wise.", 8),
    _unary_op("sqr", "Return ``x * x`` element-wise.", 1, _ELEM),
    _unary_op("sqrt", "Return ``sqrt(x)`` element-wise (NaN below 0).", 8, _ELEM),
    _unary_op("exp", "Return ``e^x`` element-wise.", 8),
    _unary_op("scale", "Return ``x * f32(s)``.", 1, _ELEM, _f32("s")),
    _unary_op("clamp", "Return ``max(min(x, hi), lo)``.", 1, _EXACT, _f32("lo"), _f32("hi")),
    # binary (§5.2)
    _binary_op("add", "+"),
    _binary_op("sub", "-"),
    _binary_op("mul", "*"),
    _binary_op("div", "/"),
    # products (§5.4)
    OpDef(
        name="mulmat",
        category="product",
        doc="Return ``b · aᵀ`` per batch, ``a`` block-repeated over b's dims 2 and 3.",
        operands=("a", "b"),
        rule=_mulmat("mulmat"),
        flops=_flops_mulmat,
        dtypes=WEIGHT,
        tolerance=_PRODUCT,
    ),
    OpDef(
        name="mulmat_full_prec",
        category="product",
        doc="Return ``mulmat`` with F32 accumulation on every device.",
        operands=("a", "b"),
        rule=_mulmat("mulmat_full_prec"),
        flops=_flops_mulmat,
        dtypes=WEIGHT,
        tolerance=_PRODUCT,
    ),
    OpDef(
        name="mulmat_id",
        category="product",
        doc="Return the mixture-of-experts product: expert ``ids[e, t]`` applied to token ``t``.",
        operands=("as_", "b", "ids"),
        rule=_mulmat_id,
        flops=_flops_mulmat,
        dtypes=WEIGHT,
        tolerance=_PRODUCT,
    ),
    # normalisation and softmax along dim 0 (§5.5)
    _row_op_def("softmax", "normalize", "Return the softmax of each row (dim 0).", 5, None, False),
    OpDef(
        name="layer_norm",
        category="normalize",
        doc="Return ``(x − mean) / sqrt(var + eps)`` per row, then ``· w`` and ``+ b`` if given.",
        operands=("a", "w?", "b?"),
        params=(_EPS,),
        rule=_norm("layer_norm"),
        flops=_flops_per_in(8),
        dtypes=FLOAT,
        tolerance=_REDUCE,
    ),
    OpDef(
        name="rms_norm",
        category="normalize",
        doc="Return ``x / sqrt(mean(x²) + eps)`` per row, then ``· w`` if given.",
        operands=("a", "w?"),
        params=(_EPS,),
        rule=_norm("rms_norm"),
        flops=_flops_per_in(4),
        dtypes=FLOAT,
        tolerance=_REDUCE,
    ),
    # reductions along dim 0 (§5.5)
    _row_op_def("sum_rows", "reduce", "Return the sum of each row, ``[1, ne1, ne2, ne3]``.", 1),
    _row_op_def("mean", "reduce", "Return the mean of each row (F32).", 1, DType.F32),
    _row_op_def("variance", "reduce", "Return the population variance of each row.", 3),
    _row_op_def("stddev", "reduce", "Return the population standard deviation of each row.", 3),
    # views and copies (§5.6)
    OpDef(
        name="reshape",
        category="movement",
        doc="Return a view with new extents (the receiver must be contiguous).",
        operands=("a",),
        params=(_ints("shape"),),
        kind="view",
        rule=_reshape,
        dtypes=ANY,
        tolerance=_EXACT,
    ),
    OpDef(
        name="view",
        category="movement",
        doc="Return a view at byte ``offset`` with extents and byte strides alternating.",
        operands=("a",),
        params=(_int("offset"), _ints("args")),
        kind="view",
        rule=_view,
        dtypes=ANY,
        tolerance=_EXACT,
    ),
    OpDef(
        name="permute",
        category="movement",
        doc="Return a view where source axis ``i`` moves to position ``axes[i]``.",
        operands=("a",),
        params=(_ints("axes"),),
        kind="view",
        rule=_permute,
        dtypes=ANY,
        tolerance=_EXACT,
    ),
    OpDef(
        name="contiguous",
        category="movement",
        doc="Return a packed copy.",
        operands=("a",),
        rule=_contiguous("contiguous"),
        dtypes=ANY,
        tolerance=_EXACT,
    ),
    OpDef(
        name="duplicate",
        category="movement",
        doc="Return a packed copy.",
        operands=("a",),
        rule=_contiguous("duplicate"),
        dtypes=ANY,
        tolerance=_EXACT,
    ),
    OpDef(
        name="copy",
        category="movement",
        doc="Write this tensor's values into ``dst`` (converting dtype); return a view of ``dst``.",
        operands=("a", "dst"),
        kind="copy",
        rule=_copy,
        flops=_flops_per_in(1),
        dtypes=ANY,
        tolerance=_EXACT,
    ),
    # assembling (§5.7)
    OpDef(
        name="set",
        category="assemble",
        doc="Return a packed copy with ``b`` written at byte ``offset`` (optional row stride).",
        operands=("a", "b"),
        params=(_int("offset"), _ints("strides")),
        rule=_set,
        dtypes=_ASSEMBLE,
        tolerance=_EXACT,
    ),
    OpDef(
        name="pad",
        category="assemble",
        doc="Return the tensor with ``p_i`` zeros appended at the end of each dim ``i``.",
        operands=("a",),
        params=(_ints("pads"),),
        rule=_pad,
        dtypes=_ASSEMBLE,
        tolerance=_EXACT,
    ),
    OpDef(
        name="concat",
        category="assemble",
        doc="Return this tensor then ``b`` along ``dim``.",
        operands=("a", "b"),
        params=(_DIM,),
        rule=_concat,
        dtypes=_ASSEMBLE,
        tolerance=_EXACT,
    ),
    OpDef(
        name="stack",
        category="assemble",
        doc="Return the concatenation of this tensor and ``others`` along existing ``dim``.",
        operands=("a", "*others"),
        params=(_DIM,),
        call=("dim", "others"),
        rule=_stack,
        dtypes=_ASSEMBLE,
        tolerance=_EXACT,
    ),
    OpDef(
        name="repeat",
        category="assemble",
        doc="Return the whole tensor tiled ``n`` times along ``dim``.",
        operands=("a",),
        params=(_DIM, _int("n", minimum=0)),
        rule=_repeat,
        dtypes=_ASSEMBLE,
        tolerance=_EXACT,
    ),
    OpDef(
        name="rows",
        category="assemble",
        doc="Return the rows selected by I32 ``ids`` (a gather).",
        operands=("a", "ids"),
        rule=_rows,
        dtypes=ANY,
        tolerance=_EXACT,
    ),
    OpDef(
        name="set_rows",
        category="assemble",
        doc=(
            "Write this tensor's rows into rows ``ids`` of ``dst``; return a view of ``dst``.\n\n"
            "``dst[:, ids[r], j, k] = a[:, r, j, k]``, converting dtype (a scatter, as ggml's\n"
            "``set_rows``). A KV cache written this way makes a graph that does not depend on\n"
            "the cells written: they are an input."
        ),
        operands=("a", "dst", "ids"),
        kind="copy",
        rule=_set_rows,
        flops=_flops_per_in(1),
        dtypes=CACHE,
        tolerance=_EXACT,
    ),
    # sorting (§5.8)
    OpDef(
        name="argsort",
        category="sort",
        doc="Return the indices sorting each row ascending (I32).",
        operands=("a",),
        rule=_argsort,
        flops=_flops_per_in(8),
        dtypes=FLOAT,
        tolerance=_EXACT,
    ),
    OpDef(
        name="topk",
        category="sort",
        doc="Return the indices of the ``k`` largest values of each row, descending (I32).",
        operands=("a",),
        params=(_int("k"),),
        rule=_topk,
        flops=_flops_per_in(8),
        dtypes=FLOAT,
        tolerance=_EXACT,
    ),
    # convolution and pooling (§5.9)
    OpDef(
        name="conv_2d",
        category="conv",
        doc="Return the 2-D cross-correlation of ``input`` with this kernel.",
        operands=("kernel", "input"),
        params=_CONV,
        rule=_conv_2d,
        flops=_flops_conv,
        dtypes=frozenset({DType.F32, DType.F16}),
        tolerance=_PRODUCT,
    ),
    OpDef(
        name="im2col",
        category="conv",
        doc="Return ``input``'s patches as columns, for this kernel's shape.",
        operands=("kernel", "input"),
        params=_CONV,
        rule=_im2col,
        dtypes=ANY,
        tolerance=_EXACT,
    ),
    OpDef(
        name="avg_pool_2d",
        category="conv",
        doc="Return square average pooling (padding counts in the divisor).",
        operands=("a",),
        params=(_int("k", minimum=1), _int("s", minimum=1), _int("p", minimum=0)),
        rule=_avg_pool_2d,
        flops=_flops_per_out(1),
        dtypes=FLOAT,
        tolerance=_REDUCE,
    ),
    # attention (§8.7)
    OpDef(
        name="scaled_dot_product_attention",
        category="attention",
        doc="Return fused attention of this query over ``key``/``value`` (GQA), ``[Dv, H, T]``.",
        operands=("query", "key", "value", "mask?"),
        params=(
            Param(name="scale", type=float, error=ValueError),
            Param(name="permuted_v", type=bool, from_backend="_backend_permuted_v"),
        ),
        rule=_attention,
        flops=_flops_attention,
        dtypes=frozenset({DType.F32}),
        tolerance=Tolerance(eps_mult=8.0, abs_eps=8.0, reduction=True, nmse=1e-4),
    ),
    # creation (§4.3): no operand, so a Context method
    OpDef(
        name="arange",
        category="create",
        doc="Record ``[start, stop)`` by ``step`` as F32 or I32 (a graph op).",
        params=(
            *(Param(name=n, type=float, finite=True, error=ValueError) for n in ("start", "stop")),
            Param(name="step", type=float, finite=True, error=ValueError),
            Param(
                name="dtype",
                type=DType,
                choices=(DType.F32, DType.I32),
                error=DTypeError,
            ),
        ),
        rule=_arange,
        flops=_flops_per_out(1),
        dtypes=frozenset({DType.F32, DType.I32}),
        tolerance=_EXACT,
    ),
    # Optional fused op (not in SEMANTICS §5): every first-party plugin implements it.
    OpDef(
        name="rope",
        category="fused",
        doc=(
            "Return ``[D, H, T]`` with the first ``n_rot = 2·cos.ne0`` values of each row "
            "rotated.\n\n"
            "Pair ``i`` of token ``t`` is rotated by ``cos[i, t]``/``sin[i, t]``: with ``mode`` 0\n"
            "(normal) the pair is ``(x[2i], x[2i+1])``, with ``mode`` 2 (neox)\n"
            "``(x[i], x[i + n_rot/2])``; ``(a, b)`` becomes ``(a·cos − b·sin, a·sin + b·cos)``.\n"
            "Values past ``n_rot`` are copied."
        ),
        operands=("a", "cos", "sin"),
        params=(_int("mode", choices=(0, 2), error=ValueError, doc="0 normal, 2 neox"),),
        rule=_rope,
        flops=_flops_per_out(3),
        dtypes=frozenset({DType.F32}),
        tolerance=Tolerance(eps_mult=4.0, abs_eps=32.0),
        optional=True,
    ),
    OpDef(
        name="swiglu",
        category="fused",
        doc=(
            "Return ``silu(a) · b`` (``b`` tiled over ``a`` as in ``mul``) in one node.\n\n"
            "The gated activation of SwiGLU feed-forward layers: ``a.silu(ctx).mul(ctx, b)``."
        ),
        operands=("a", "b"),
        rule=_binary("swiglu"),
        flops=_flops_per_out(5),
        dtypes=FLOAT,
        tolerance=_TRANSCENDENTAL,
        optional=True,
    ),
    OpDef(
        name="geglu",
        category="fused",
        doc=(
            "Return ``gelu(a) · b`` (tanh GELU; ``b`` tiled as in ``mul``) in one node.\n\n"
            "The gated activation of GeGLU feed-forward layers: ``a.gelu(ctx).mul(ctx, b)``."
        ),
        operands=("a", "b"),
        rule=_binary("geglu"),
        flops=_flops_per_out(9),
        dtypes=FLOAT,
        tolerance=Tolerance(eps_mult=16.0, abs_eps=16.0, rel_floor=1e-3, abs_floor=1e-4),
        optional=True,
    ),
    OpDef(
        name="rms_norm_add",
        category="fused",
        doc=(
            "Return ``rms_norm(a, w, eps) + r`` (``w``, ``r`` tiled over ``a``) in one node.\n\n"
            "A post-norm and its residual (Gemma's sandwich norms):\n"
            "``a.rms_norm(ctx, w, eps).add(ctx, r)``."
        ),
        operands=("a", "w?", "r"),
        params=(_EPS,),
        call=("w", "r", "eps"),
        rule=_rms_norm_add,
        flops=_flops_per_in(5),
        dtypes=FLOAT,
        tolerance=_REDUCE,
        optional=True,
    ),
]

OPS: Mapping[str, OpDef] = {op.name: op for op in _TABLE}
"""Every op, by name."""


def category(name: str) -> tuple[str, ...]:
    """Return the names of the ops of category ``name``, in table order."""
    if name not in CATEGORIES:
        raise KeyError(f"[ops] unknown category {name!r} (one of {', '.join(CATEGORIES)})")
    return tuple(op.name for op in _TABLE if op.category == name)
