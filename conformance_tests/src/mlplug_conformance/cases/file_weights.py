"""Cases for the dtypes that only come from GGUF files (K-quants, IQ types, MXFP4, Q4_1/Q5_x,
TQ, Q8_K, F64 and the small integer types).

Their operand is a weight of a synthetic model the session writes and loads
(:class:`mlplug_conformance.execute.Session`): products and gathers with it, the byte-moving ops
(views, ``contiguous``, ``duplicate``, same-dtype ``copy``) and ``im2col`` (which only reads
the kernel's shape). Block types use ``ne0 = 256`` (whole blocks of 32 and 256).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from mlplug.dtype import DType
from mlplug.ops import OPS
from mlplug_conformance.weights import WEIGHT_ONLY

from .dsl import Params, case, inp, step
from .model import Case, ints

__all__ = ["generate"]

_F32, _I32 = DType.F32, DType.I32


def _ne0(dt: DType) -> int:
    return 256 if dt.is_block else 6


def _product(op: str, dt: DType) -> list[Case]:
    k = _ne0(dt)
    return [
        case(
            op,
            dt,
            f"vec-k{k}-m5",
            [inp("w", dt, k, 5), inp("x", _F32, k, 1)],
            [step("y", op, "w", "x")],
        ),
        case(
            op,
            dt,
            f"k{k}-m4-n3",
            [inp("w", dt, k, 4), inp("x", _F32, k, 3)],
            [step("y", op, "w", "x")],
        ),
        case(
            op,
            dt,
            f"gqa-k{k}-m3-n2",
            [inp("w", dt, k, 3, 2), inp("x", _F32, k, 2, 4)],
            [step("y", op, "w", "x")],
        ),
    ]


def _mulmat_id(dt: DType) -> list[Case]:
    k = _ne0(dt)
    return [
        case(
            "mulmat_id",
            dt,
            f"k{k}-r4-e3-u2-t3",
            [
                inp("w", dt, k, 4, 3),
                inp("x", _F32, k, 1, 3),
                inp("ids", _I32, 2, 3, fill=ints(0, 3)),
            ],
            [step("y", "mulmat_id", "w", "x", "ids")],
        ),
    ]


def _bytes_ops(op: str, dt: DType) -> list[Case]:
    k = _ne0(dt)
    row = dt.type_size * (k // dt.block_size)
    inputs = [inp("w", dt, k, 3, 2)]
    if op == "reshape":
        steps = [step("y", "reshape", "w", shape=(k * 2, 3) if dt.is_block else (3, 2, 6))]
    elif op == "view":
        steps = [step("y", "view", "w", offset=row, args=(k, 3 * row, 2))]
    elif op == "permute":
        steps = [step("y", "permute", "w", axes=(0, 2, 1, 3))]
    elif op in ("contiguous", "duplicate"):
        steps = [step("t", "permute", "w", axes=(0, 2, 1, 3)), step("y", op, "t")]
    else:  # copy to the same dtype: into another weight
        inputs.append(inp("d", dt, k, 2, 3))
        steps = [step("y", "copy", "w", "d")]
    return [case(op, dt, f"{k}x3x2", inputs, steps)]


def _rows(dt: DType) -> list[Case]:
    k = _ne0(dt)
    return [
        case(
            "rows",
            dt,
            f"embedding-{k}x7",
            [inp("a", dt, k, 7), inp("i", _I32, 4, fill=ints(0, 7))],
            [step("y", "rows", "a", "i")],
        ),
        case(
            "rows",
            dt,
            f"batched-{k}x4x2",
            [inp("a", dt, k, 4, 2), inp("i", _I32, 3, 2, fill=ints(0, 4))],
            [step("y", "rows", "a", "i")],
        ),
    ]


def _im2col(dt: DType) -> list[Case]:
    kw = _ne0(dt)
    p: Params = {"s0": 1, "s1": 1, "p0": 0, "p1": 1, "d0": 1, "d1": 1}
    return [
        case(
            "im2col",
            dt,
            f"kw{kw}",
            [inp("k", dt, kw, 2, 1, 1), inp("x", _F32, kw + 3, 3, 1, 1)],
            [step("y", "im2col", "k", "x", **p)],
        )
    ]


def generate() -> list[Case]:
    """Return the cases of this family: every weight-only dtype each op accepts."""
    makers: dict[str, Callable[[DType], list[Case]]] = {
        "mulmat": lambda dt: _product("mulmat", dt),
        "mulmat_full_prec": lambda dt: _product("mulmat_full_prec", dt),
        "mulmat_id": _mulmat_id,
        "rows": _rows,
        "im2col": _im2col,
        **{
            op: partial(_bytes_ops, op)
            for op in ("reshape", "view", "permute", "contiguous", "duplicate", "copy")
        },
    }
    out: list[Case] = []
    for name, opdef in OPS.items():
        for dt in sorted(opdef.dtypes & WEIGHT_ONLY, key=lambda d: d.value):
            if name in makers:
                out.extend(makers[name](dt))
    return out
