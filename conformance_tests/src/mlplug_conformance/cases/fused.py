"""Cases for the optional fused ops ``swiglu``, ``geglu`` and ``rms_norm_add`` (ops table).

Each must equal its composite (``a.silu().mul(b)``, ``a.gelu().mul(b)``,
``a.rms_norm(w, eps).add(r)``) within the op's tolerance: same-shape and tiled second operands,
mixed operand dtypes, strided receivers, empty tensors, values past exp's comfortable range, and
for ``rms_norm_add`` with and without a weight and ``eps`` 0.
"""

from __future__ import annotations

from mlplug.dtype import DType

from .dsl import CREATE_FLOAT, case, inp, step
from .model import Case, normal

__all__ = ["generate"]


def _gated_cases(op: str, dt: DType) -> list[Case]:
    other = DType.F32 if dt is not DType.F32 else DType.F16
    out = [
        case(op, dt, "7x3", [inp("a", dt, 7, 3), inp("b", dt, 7, 3)], [step("y", op, "a", "b")]),
        case(
            op,
            dt,
            "33x5x2-b-tiled-33",
            [inp("a", dt, 33, 5, 2, fill=normal(3)), inp("b", dt, 33)],
            [step("y", op, "a", "b")],
        ),
        case(
            op,
            dt,
            f"31x4-b-{other.name}",
            [inp("a", dt, 31, 4, fill=normal(8)), inp("b", other, 31, 4)],
            [step("y", op, "a", "b")],
        ),
        case(
            op,
            dt,
            "permuted-5x7",
            [inp("a", dt, 5, 7), inp("b", dt, 7, 5)],
            [step("t", "permute", "a", axes=(1, 0, 2, 3)), step("y", op, "t", "b")],
        ),
        case(op, dt, "empty", [inp("a", dt, 0), inp("b", dt, 1)], [step("y", op, "a", "b")]),
    ]
    return out


def _rms_norm_add_cases(dt: DType) -> list[Case]:
    op = "rms_norm_add"
    other = DType.F32 if dt is not DType.F32 else DType.F16
    return [
        case(
            op,
            dt,
            "33x2x3",
            [inp("x", dt, 33, 2, 3, fill=normal(2)), inp("w", dt, 33), inp("r", dt, 33, 2, 3)],
            [step("y", op, "x", "w", "r", eps=1e-6)],
        ),
        case(
            op,
            dt,
            f"no-weight-r-tiled-{other.name}",
            [inp("x", dt, 16, 4, fill=normal(3)), inp("r", other, 16, 1)],
            [step("y", op, "x", None, "r", eps=1e-5)],
        ),
        case(
            op,
            dt,
            "permuted-eps0",
            [inp("x", dt, 6, 9), inp("w", other, 9), inp("r", dt, 9, 6)],
            [step("t", "permute", "x", axes=(1, 0, 2, 3)), step("y", op, "t", "w", "r", eps=0.0)],
        ),
        case(
            op,
            dt,
            "empty",
            [inp("x", dt, 0), inp("r", dt, 1)],
            [step("y", op, "x", None, "r", eps=1e-6)],
        ),
    ]


def generate() -> list[Case]:
    """Return the cases of this family."""
    out = []
    for dt in CREATE_FLOAT:
        for op in ("swiglu", "geglu"):
            out.extend(_gated_cases(op, dt))
        out.extend(_rms_norm_add_cases(dt))
    return out
