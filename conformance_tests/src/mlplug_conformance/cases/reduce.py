"""Cases for row ops: softmax, norms, reductions, argsort and topk."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from mlplug.dtype import DType
from mlplug.ops import category

from .dsl import CREATE_FLOAT, Params, case, inp, step
from .model import Case, Fill, ints, normal, specials

__all__ = ["generate"]

_SHAPES: list[tuple[str, tuple[int, ...]]] = [
    ("n1", (1,)),
    ("n7x3", (7, 3)),
    ("n33x2x3", (33, 2, 3)),
    ("n256x4", (256, 4)),
    ("n1000x2", (1000, 2)),
    ("n5x2x2x3", (5, 2, 2, 3)),
]


def _row_cases(op: str, dt: DType, fill: Fill, **params: Any) -> list[Case]:
    out = [
        case(op, dt, label, [inp("x", dt, *ne, fill=fill)], [step("y", op, "x", **params)])
        for label, ne in _SHAPES
    ]
    out.append(
        case(
            op,
            dt,
            "permuted-5x9",
            [inp("x", dt, 5, 9, fill=fill)],
            [step("t", "permute", "x", axes=(1, 0, 2, 3)), step("y", op, "t", **params)],
        )
    )
    out.append(case(op, dt, "empty", [inp("x", dt, 0)], [step("y", op, "x", **params)]))
    return out


def _reduction_cases(op: str, dt: DType) -> list[Case]:
    out = _row_cases(op, dt, normal())
    # Rows far from zero: a one-pass variance cancels badly, a correct one does not.
    out.append(
        case(
            op,
            dt,
            "offset-mean-64x3",
            [inp("x", dt, 64, 3, fill=normal(1.0, 40.0))],
            [step("y", op, "x")],
        )
    )
    out.append(
        case(
            op,
            dt,
            "specials",
            [inp("x", dt, 4, 3, fill=specials(normal(), [math.inf, math.nan, -math.inf], 4))],
            [step("y", op, "x")],
        )
    )
    return out


def _softmax_cases(dt: DType) -> list[Case]:
    out = _row_cases("softmax", dt, normal(2))
    out.append(
        case(
            "softmax",
            dt,
            "masked-9x4",
            [inp("x", dt, 9, 4, fill=specials(normal(), [-math.inf], 3))],
            [step("y", "softmax", "x")],
        )
    )
    # Without subtracting the row maximum these overflow exp().
    out.append(
        case(
            "softmax",
            dt,
            "large-16x3",
            [inp("x", dt, 16, 3, fill=normal(3, 80))],
            [step("y", "softmax", "x")],
        )
    )
    return out


def _norm_cases(op: str, dt: DType) -> list[Case]:
    eps = 1e-5
    out = _row_cases(op, dt, normal(2), eps=eps)
    variants: list[tuple[str, DType | None, DType | None, tuple[int, ...]]] = [
        ("w", dt, None, (33,)),
        ("w-tiled-1x3", dt, None, (33, 1, 3)),
        ("w-scalar", dt, None, (1,)),
    ]
    if op == "layer_norm":
        variants += [("w-b", dt, dt, (33,)), ("b-only", None, dt, (33,))]
    for other in CREATE_FLOAT:
        if other is not dt:
            variants.append(
                (f"w-{other.name}", other, other if op == "layer_norm" else None, (33,))
            )
    for label, w_dt, b_dt, w_ne in variants:
        inputs = [inp("x", dt, 33, 2, 3, fill=normal(2))]
        args: list[str | None] = ["x", None] if op == "rms_norm" else ["x", None, None]
        if w_dt is not None:
            inputs.append(inp("w", w_dt, *w_ne))
            args[1] = "w"
        if b_dt is not None:
            inputs.append(inp("b", b_dt, *w_ne))
            args[2] = "b"
        out.append(case(op, dt, label, inputs, [step("y", op, *args, eps=eps)]))
    out.append(
        case(
            op,
            dt,
            "eps0-33x2",
            [inp("x", dt, 33, 2, fill=normal(2))],
            [step("y", op, "x", *([None] * (2 if op == "layer_norm" else 1)), eps=0.0)],
        )
    )
    return [_with_norm_args(c, op) for c in out]


def _with_norm_args(c: Case, op: str) -> Case:
    """Give the plain row cases the norm's optional operands (as ``None``)."""
    want = 3 if op == "layer_norm" else 2
    steps = tuple(
        s
        if s.op != op or len(s.args) == want
        else replace(s, args=(*s.args, *([None] * (want - len(s.args)))))
        for s in c.steps
    )
    return replace(c, steps=steps)


def _sort_cases(op: str, dt: DType) -> list[Case]:
    shapes: list[tuple[str, tuple[int, ...], int]] = [
        ("n1", (1,), 1),
        ("n5", (5,), 2),
        ("n7x3", (7, 3), 3),
        ("n33x4", (33, 4), 5),
        ("n100x3", (100, 3), 10),
        ("n64x2x2", (64, 2, 2), 64),
    ]
    out = []
    for label, ne, k in shapes:
        params: Params = {"k": k} if op == "topk" else {}
        tag = f"-k{k}" if op == "topk" else ""
        out.append(case(op, dt, label + tag, [inp("x", dt, *ne)], [step("y", op, "x", **params)]))
    top_params: Params = {"k": 4} if op == "topk" else {}
    out.append(
        case(
            op,
            dt,
            "ties-20x3",
            [inp("x", dt, 20, 3, fill=ints(0, 4))],
            [step("y", op, "x", **top_params)],
        )
    )
    out.append(
        case(
            op,
            dt,
            "permuted-6x11",
            [inp("x", dt, 6, 11)],
            [step("t", "permute", "x", axes=(1, 0, 2, 3)), step("y", op, "t", **top_params)],
        )
    )
    if op == "argsort":
        out.append(case(op, dt, "empty", [inp("x", dt, 0)], [step("y", op, "x")]))
    return out


def generate() -> list[Case]:
    """Return the cases of this family."""
    out: list[Case] = []
    for dt in CREATE_FLOAT:
        out.extend(_softmax_cases(dt))
        for op in category("reduce"):
            out.extend(_reduction_cases(op, dt))
        for op in ("layer_norm", "rms_norm"):
            out.extend(_norm_cases(op, dt))
        for op in category("sort"):
            out.extend(_sort_cases(op, dt))
    return out
