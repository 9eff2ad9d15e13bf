"""Small helpers that keep the case generators readable."""

from __future__ import annotations

from typing import Any

from mlplug.dtype import DType

from .model import Case, Fill, Input, Step, ints, normal

__all__ = ["CREATE_FLOAT", "CREATE_WEIGHT", "Params", "case", "default_fill", "inp", "step"]

#: A step's op parameters, passed as ``step(..., **params)`` (values of any parameter type).
Params = dict[str, Any]

CREATE_FLOAT: tuple[DType, ...] = (DType.F32, DType.F16, DType.BF16)
CREATE_WEIGHT: tuple[DType, ...] = (DType.F32, DType.F16, DType.BF16, DType.Q8_0, DType.Q4_0)


def default_fill(dtype: DType) -> Fill:
    """Return the usual fill for a dtype: integers for I32, normal values otherwise."""
    return ints(-1000, 1000) if dtype is DType.I32 else normal()


def inp(name: str, dtype: DType, *ne: int, fill: Fill | None = None, zeros: bool = False) -> Input:
    """Return an input (default fill by dtype)."""
    return Input(name, dtype, tuple(ne), fill or default_fill(dtype), zeros)


def step(name: str, op: str, *args: str | None, when: str | None = None, **params: Any) -> Step:
    """Return a step ``name = args[0].op(ctx, *args[1:], **params)``."""
    return Step(name, op, tuple(args), dict(params), when)


def case(
    op: str, dtype: DType, label: str, inputs: list[Input], steps: list[Step], **kw: Any
) -> Case:
    """Return a case with id ``op/DTYPE/label``."""
    return Case(f"{op}/{dtype.name}/{label}", op, dtype, tuple(inputs), tuple(steps), **kw)
