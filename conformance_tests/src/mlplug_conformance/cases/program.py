"""Run a case's program two ways: through the public API, and on the float64 reference.

**Public API** (:func:`call`, :func:`build_inputs`, :func:`build_steps`): inputs are created with
``ctx.layer(0)`` (the device under test, SEMANTICS §6.7). F32 and I32 inputs come from
``from_float_slice`` / ``from_int_slice``; F16, BF16, Q8_0 and Q4_0 inputs are written as F32
and converted by ``copy`` into a ``ctx.layer(0).empty(dtype, ...)`` tensor, in a separate context
family computed first; their values were rounded to the dtype on the host, so any correct
conversion reproduces them exactly, and they are read back and compared, so every device is fed
exactly the values the reference uses.

**Reference** (:func:`evaluate_reference`): each step's layout comes from the ops table
(``OpDef.infer``, the same rules the graph builder applies), its values from
:func:`mlplug_conformance.reference.evaluate`, rounded to the step's dtype. Storage is modelled
per root (a buffer input or a computed result, both contiguous), so views are read from their
root through their byte strides — nested views and views past the receiver's own elements work —
and ``copy`` writes into its destination's root, which later steps and the ``extra`` outputs see.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlplug.dtype import DType
from mlplug.ops import OPS, Meta, is_contiguous
from mlplug_conformance import convert
from mlplug_conformance.reference import evaluate, numpy_shape
from mlplug_conformance.reference.movement import element_index, window

from .model import Case, Step

if TYPE_CHECKING:
    from mlplug import Backend, Context, Tensor

__all__ = [
    "RefRun",
    "RefStep",
    "bad_id_mask",
    "build_inputs",
    "build_steps",
    "call",
    "evaluate_reference",
    "infer_step",
]


def call(ctx: Context, op: str, ts: list[Tensor | None], p: dict[str, Any]) -> Tensor:
    """Record ``op`` through its public ``Tensor``/``Context`` method; return the result.

    The method's arguments come from the ops table (``OpDef.arguments``): operands by role (a
    variadic role takes the rest of ``ts``), parameters by name from ``p`` (a variadic one
    spread). Parameters the backend supplies (``Param.from_backend``) are not passed.
    """
    opdef = OPS[op]
    roles = opdef.operands if opdef.receiver_is_context else opdef.operands[1:]
    rest = ts if opdef.receiver_is_context else ts[1:]
    by_role: dict[str, list[Tensor | None]] = {}
    for i, role in enumerate(roles):
        name = role.strip("*?")
        if role.startswith("*"):
            by_role[name] = list(rest[i:])
            break
        t = rest[i] if i < len(rest) else None
        if t is None and not role.endswith("?"):
            raise ValueError(f"[conformance] {op}: operand {role!r} is required, got None")
        by_role[name] = [t]
    args: list[Any] = []
    for name in opdef.arguments:
        if name in by_role:
            args.extend(by_role[name])
        elif opdef.param(name).variadic:
            args.extend(p[name])
        else:
            args.append(p[name])
    if opdef.receiver_is_context:
        return getattr(ctx, op)(*args)  # type: ignore[no-any-return]
    receiver = ts[0]
    if receiver is None:
        raise ValueError(f"[conformance] {op}: the receiver is required, got None")
    return getattr(receiver, op)(ctx, *args)  # type: ignore[no-any-return]


def build_inputs(
    backend: Backend,
    case: Case,
    values: dict[str, np.ndarray],
    weights: Mapping[str, Tensor] | None = None,
) -> tuple[Context, dict[str, Tensor], list[str]]:
    """Create the case's inputs on ``ctx.layer(0)`` of a fresh context family.

    ``weights`` supplies the inputs of weight-only dtypes (``Input.from_file``): the backend's
    weights loaded from the synthetic GGUF file, by input name.

    Returns:
        The family's root context (close it when done), the tensors by name, and a list of
        problems: inputs whose values on the device differ from the host's.
    """
    prep = backend.new_context()
    layer = prep.layer(0)
    tensors: dict[str, Tensor] = {}
    converted: list[tuple[str, Tensor]] = []
    copies = []
    for inp in case.inputs:
        flat = values[inp.name].reshape(-1)
        n = flat.size
        if inp.from_file:
            if weights is None or inp.name not in weights:
                raise ValueError(f"[conformance] {case.id}: input {inp.name!r} needs a weight")
            tensors[inp.name] = weights[inp.name]
        elif inp.is_zeros or (n == 0 and inp.dtype not in (DType.F32, DType.I32)):
            tensors[inp.name] = layer.zeros(inp.dtype, *inp.ne)
        elif inp.dtype is DType.F32:
            tensors[inp.name] = layer.from_float_slice(flat.astype(np.float32), *inp.ne)
        elif inp.dtype is DType.I32:
            tensors[inp.name] = layer.from_int_slice(flat.astype(np.int32), *inp.ne)
        else:
            staged = layer.from_float_slice(flat.astype(np.float32), *inp.ne)
            dst = layer.empty(inp.dtype, *inp.ne)
            copies.append(staged.copy(prep, dst))
            tensors[inp.name] = dst
            converted.append((inp.name, dst))
    if copies:
        prep.forward(*copies).compute()
    problems = []
    converted += [(inp.name, tensors[inp.name]) for inp in case.inputs if inp.from_file]
    for name, t in converted:
        want = values[name].reshape(-1)
        raw = t.bytes()
        got = (
            convert.decode(raw, t.dtype())
            if len(raw) == t.dtype().nbytes(want.size)
            else np.zeros(0)
        )
        if got.shape != want.shape or not np.array_equal(got, want, equal_nan=True):
            where = _first_diff(got, want)
            problems.append(
                f"input {name!r}: the {t.dtype().name} values on the device differ from the "
                f"host's ({where}; F32 -> {t.dtype().name} copy, or weight loading)"
            )
    return prep, tensors, problems


def _first_diff(got: np.ndarray, want: np.ndarray) -> str:
    if got.shape != want.shape:
        return f"{got.size} values instead of {want.size}"
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    i = int(np.flatnonzero(~same)[0])
    return f"first at element {i}: {got[i]!r} instead of {want[i]!r}"


def build_steps(ctx: Context, case: Case, tensors: dict[str, Tensor], permuted_v: bool) -> Tensor:
    """Record the case's active steps on ``ctx``; return the checked result (the last step)."""
    env = dict(tensors)
    last = None
    for step in case.active_steps(permuted_v):
        last = env[step.name] = call(
            ctx, step.op, [None if a is None else env[a] for a in step.args], step.params
        )
    assert last is not None
    return last


# ---------------------------------------------------------------------------------------------
# Reference side


@dataclass(slots=True)
class _Value:
    meta: Meta
    data: np.ndarray
    root: str | None


@dataclass(frozen=True, slots=True)
class RefStep:
    """The checked step as the reference computed it.

    Attributes:
        op: Op name.
        srcs: Operand values (rounded to their dtypes, as the device holds them).
        src_metas: Operand layouts.
        params: Normalised parameters.
        meta: Result layout.
        exact: Result before rounding (what the checks measure against).
    """

    op: str
    srcs: tuple[np.ndarray | None, ...]
    src_metas: tuple[Meta | None, ...]
    params: dict[str, Any]
    meta: Meta
    exact: np.ndarray


@dataclass(frozen=True, slots=True)
class RefRun:
    """The reference's outcome of a case: the checked step and the final buffer contents."""

    result: RefStep
    buffers: dict[str, np.ndarray]


def bad_id_mask(case: Case, values: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Return where ``case.bad_ids`` holds ids outside the gathered extent (``None``: no such
    input). ``rows`` gathers rows of its table (numpy axis -2), ``mulmat_id`` experts of ``as_``
    (axis -3)."""
    if case.bad_ids is None:
        return None
    receiver = values[case.steps[-1].args[0] or ""]
    extent = receiver.shape[-2] if case.op == "rows" else receiver.shape[-3]
    ids = values[case.bad_ids]
    bad: np.ndarray = (ids < 0) | (ids >= extent)
    return bad


def evaluate_reference(case: Case, values: dict[str, np.ndarray], permuted_v: bool) -> RefRun:
    """Evaluate the case's program on the reference (see the module docstring).

    Out-of-range gather ids (``case.bad_ids``) are read as id 0: the output columns they produce
    are unspecified (§5.4), and the checks take them from the device's result.
    """
    bad = bad_id_mask(case, values)
    if bad is not None:
        assert case.bad_ids is not None
        values = {**values, case.bad_ids: np.where(bad, 0, values[case.bad_ids])}
    memory: dict[str, np.ndarray] = {}
    env: dict[str, _Value] = {}
    for inp in case.inputs:
        meta = Meta.fresh(inp.dtype, inp.full_ne)
        memory[inp.name] = values[inp.name].reshape(-1).copy()
        env[inp.name] = _Value(meta, values[inp.name], inp.name)
    result: RefStep | None = None
    for step in case.active_steps(permuted_v):
        result = _run_step(step, env, memory, permuted_v)
    assert result is not None
    buffers = {name: memory[name].reshape(numpy_shape(env[name].meta.ne)) for name in case.extra}
    return RefRun(result, buffers)


def _read_root(memory: dict[str, np.ndarray], value: _Value, meta: Meta) -> np.ndarray:
    if value.root is None:
        raise ValueError("[conformance] a view of a result with a non-contiguous storage")
    return window(memory[value.root], meta.ne, meta.nb, meta.offset, meta.dtype)


def _run_step(
    step: Step, env: dict[str, _Value], memory: dict[str, np.ndarray], permuted_v: bool
) -> RefStep:
    opdef = OPS[step.op]
    operands = [None if a is None else env[a] for a in step.args]
    metas = [None if v is None else v.meta for v in operands]
    params = dict(step.params)
    if step.op == "scaled_dot_product_attention":
        params["permuted_v"] = permuted_v
    inferred = opdef.infer(metas, params)
    meta = inferred.meta
    srcs = tuple(None if v is None else v.data for v in operands)
    if opdef.kind == "view":
        receiver = operands[0]
        assert receiver is not None
        exact = (
            _read_root(memory, receiver, meta)
            if meta.n
            else np.zeros(numpy_shape(meta.ne), dtype=receiver.data.dtype)
        )
        if is_contiguous(receiver.meta.ne, receiver.meta.nb, receiver.meta.dtype):
            _cross_check_view(step, srcs, inferred.params, meta, exact)
        env[step.name] = _Value(meta, exact, receiver.root)
        return RefStep(step.op, srcs, tuple(metas), dict(inferred.params), meta, exact)
    exact = evaluate(step.op, srcs, inferred.params, meta)
    if opdef.kind == "copy":
        dst = operands[1]
        assert dst is not None and dst.root is not None
        stored = convert.round_to(exact, meta.dtype)
        if meta.n:
            idx = element_index(meta.ne, meta.nb, meta.offset, meta.dtype)
            memory[dst.root][idx.reshape(-1)] = stored.reshape(-1)
        env[step.name] = _Value(meta, _read_root(memory, dst, meta) if meta.n else stored, dst.root)
    else:
        stored = convert.round_to(exact, meta.dtype)
        contiguous = is_contiguous(meta.ne, meta.nb, meta.dtype)
        if contiguous:
            memory[step.name] = stored.reshape(-1).copy()
        env[step.name] = _Value(meta, stored, step.name if contiguous else None)
    return RefStep(step.op, srcs, tuple(metas), dict(inferred.params), meta, exact)


def _cross_check_view(
    step: Step,
    srcs: tuple[np.ndarray | None, ...],
    params: Mapping[str, Any],
    meta: Meta,
    from_root: np.ndarray,
) -> None:
    """Check the reference's logical-value view against the root-storage read."""
    try:
        own = evaluate(step.op, srcs, params, meta)
    except ValueError:
        return  # the view reaches past the receiver's own elements: only the root read applies
    if not np.array_equal(own, from_root, equal_nan=True):
        raise AssertionError(f"[conformance] reference {step.op} disagrees with its root read")


def infer_step(case: Case, permuted_v: bool) -> tuple[list[Meta | None], Meta]:
    """Return the operand layouts and the result layout of the checked step (no values)."""
    env = {inp.name: Meta.fresh(inp.dtype, inp.full_ne) for inp in case.inputs}
    metas: list[Meta | None] = []
    meta = None
    for step in case.active_steps(permuted_v):
        metas = [None if a is None else env[a] for a in step.args]
        params = dict(step.params)
        if step.op == "scaled_dot_product_attention":
            params["permuted_v"] = permuted_v
        meta = env[step.name] = OPS[step.op].infer(metas, params).meta
    assert meta is not None
    return metas, meta
