"""Conformance cases, generated per op x dtype from the ops table (DESIGN §6).

:func:`all_cases` returns every case; :func:`not_generated` lists the (op, dtype) cells that
``OpDef.dtypes`` accepts but no case covers, with the reason: the support table shows them as
"not generated yet", never as passed. Today there are none: create dtypes are made on
``ctx.layer(0)``, weight-only ones come from a synthetic GGUF file (:mod:`.file_weights`), and a
test keeps it that way.
"""

from __future__ import annotations

from functools import cache

from mlplug.dtype import DType
from mlplug.ops import OPS

from . import attention, conv, elementwise, file_weights, fused, matmul, movement, reduce, rope
from .model import Case, Input, Step, rng_for

__all__ = ["Case", "Input", "Step", "all_cases", "find_case", "not_generated", "rng_for"]


@cache
def all_cases() -> tuple[Case, ...]:
    """Return every case, in a stable order (ops in table order)."""
    cases = [
        *elementwise.generate(),
        *reduce.generate(),
        *movement.generate(),
        *matmul.generate(),
        *conv.generate(),
        *attention.generate(),
        *rope.generate(),
        *fused.generate(),
        *file_weights.generate(),
    ]
    order = {name: i for i, name in enumerate(OPS)}
    cases.sort(key=lambda c: order[c.op])
    ids = [c.id for c in cases]
    if len(ids) != len(set(ids)):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"[conformance] duplicate case ids: {dupes[:5]}")
    return tuple(cases)


def not_generated() -> dict[tuple[str, DType], str]:
    """Return the (op, receiver dtype) cells the op accepts but no case covers, with why."""
    covered = {(c.op, c.dtype) for c in all_cases()}
    return {
        (name, dt): "not generated yet: no case for this dtype"
        for name, opdef in OPS.items()
        for dt in sorted(opdef.dtypes, key=lambda d: d.value)
        if (name, dt) not in covered
    }


def find_case(case_id: str) -> Case:
    """Return the case with this id.

    Raises:
        KeyError: No such case (the message lists close ids).
    """
    for c in all_cases():
        if c.id == case_id:
            return c
    prefix = case_id.rsplit("/", 1)[0]
    near = [c.id for c in all_cases() if c.id.startswith(prefix)][:10]
    raise KeyError(f"no case {case_id!r}; cases with that prefix: {near}")
