"""Cases for unary and binary element-wise ops and ``arange``."""

from __future__ import annotations

import math

from mlplug.dtype import DType
from mlplug.ops import OPS, REQUIRED, category

from .dsl import CREATE_FLOAT, Params, case, inp, step
from .model import Case, Fill, explicit, normal, specials, uniform

__all__ = ["BINARY", "UNARY", "generate", "unary_params"]

_INF, _NAN = math.inf, math.nan

_UNARY_FILL: dict[str, Fill] = {
    "sin": uniform(-6, 6),
    "cos": uniform(-6, 6),
    "sqrt": uniform(0, 9),
    "sigmoid": normal(3),
    "tanh": normal(2),
}
# Special values whose results §5.3 and IEEE fix unambiguously, per op. (relu(NaN) is left out:
# max(NaN, 0) is NaN in numpy and 0 under IEEE maxNum; silu/gelu at -inf are left out: the
# formulas give NaN where the limit is 0.)
_UNARY_SPECIALS: dict[str, list[float]] = {
    "neg": [_NAN, _INF, -_INF, -0.0, 0.0],
    "sqr": [_NAN, _INF, -_INF, -0.0],
    "sqrt": [_NAN, _INF, -1.0, -0.0, 0.0],
    "sin": [_NAN, _INF, -_INF, 0.0],
    "cos": [_NAN, _INF, -_INF, 0.0],
    "tanh": [_NAN, _INF, -_INF, 0.0],
    "sigmoid": [_NAN, _INF, -_INF, 0.0],
    "relu": [_INF, -_INF, -0.0, 0.0],
    "scale": [_NAN, _INF, -_INF, 0.0],
}
_UNARY_PARAMS: dict[str, list[tuple[str, Params]]] = {
    "scale": [("s0.37", {"s": 0.37}), ("s-3", {"s": -3.0}), ("s1e-3", {"s": 1e-3})],
    "clamp": [("lo-1-hi1.5", {"lo": -1.0, "hi": 1.5}), ("lo-gt-hi", {"lo": 0.5, "hi": -0.5})],
}
BINARY = category("binary")
UNARY = category("unary")


def unary_params(op: str) -> list[tuple[str, Params]]:
    """Return the parameter variants (label suffix, params) the cases of unary ``op`` use.

    An op without parameters has one empty variant; one whose parameters all have defaults
    (``OpDef.params``) runs with those unless variants are listed here.
    """
    if op in _UNARY_PARAMS:
        return _UNARY_PARAMS[op]
    params = OPS[op].params
    missing = [p.name for p in params if p.default is REQUIRED]
    if missing:
        raise KeyError(f"[conformance] {op}: list variants of {missing} to _UNARY_PARAMS")
    return [("", {p.name: p.default for p in params})]


def _unary_cases(op: str, dt: DType) -> list[Case]:
    fill = _UNARY_FILL.get(op, normal(2))
    variants = unary_params(op)
    size = dt.type_size
    out = []
    for suffix, params in variants:
        tag = f"-{suffix}" if suffix else ""
        for label, ne in (
            ("n1", (1,)),
            ("n7x3", (7, 3)),
            ("n33x5x2", (33, 5, 2)),
            ("n31x2x3x2", (31, 2, 3, 2)),
        ):
            out.append(
                case(
                    op,
                    dt,
                    label + tag,
                    [inp("x", dt, *ne, fill=fill)],
                    [step("y", op, "x", **params)],
                )
            )
        if suffix and suffix != variants[0][0]:
            continue
        out.append(
            case(
                op,
                dt,
                f"permuted-5x7{tag}",
                [inp("x", dt, 5, 7, fill=fill)],
                [step("t", "permute", "x", axes=(1, 0, 2, 3)), step("y", op, "t", **params)],
            )
        )
        out.append(
            case(
                op,
                dt,
                f"view-rows{tag}",
                [inp("x", dt, 8, 6, fill=fill)],
                [
                    step("t", "view", "x", offset=size * 10, args=(5, 8 * size, 4)),
                    step("y", op, "t", **params),
                ],
            )
        )
        out.append(case(op, dt, f"empty{tag}", [inp("x", dt, 0)], [step("y", op, "x", **params)]))
        if op in _UNARY_SPECIALS:
            out.append(
                case(
                    op,
                    dt,
                    f"specials{tag}",
                    [inp("x", dt, 9, 2, fill=specials(fill, _UNARY_SPECIALS[op], 2))],
                    [step("y", op, "x", **params)],
                )
            )
    return out


def _nonzero(lo: float, hi: float) -> Fill:
    return lambda rng, n: rng.uniform(lo, hi, n) * rng.choice([-1.0, 1.0], n)


# Special values per binary op, against a = [NaN, inf, -inf, 0, -0, 1].
_BINARY_SPECIALS: dict[str, list[float]] = {
    "div": [2.0, 0.0, _INF, 0.0, 0.0, -0.0],
    "mul": [1.0, 0.0, _INF, _INF, 2.0, -1.0],
    "add": [1.0, -_INF, _INF, 0.0, -0.0, _NAN],
    "sub": [1.0, _INF, -_INF, -0.0, 0.0, _INF],
}


def _binary_cases(op: str, dt: DType) -> list[Case]:
    b_fill = _nonzero(0.5, 2.0) if op == "div" else normal()
    size = dt.type_size
    out = []
    shapes = [
        ("same-7x3", (7, 3), (7, 3)),
        ("tile-6x2-3", (6, 2), (3,)),
        ("bcast-6x2-1x2", (6, 2), (1, 2)),
        ("row-bias-33x5-33", (33, 5), (33,)),
        ("tile4d-6x4x3x2-3x2x1x2", (6, 4, 3, 2), (3, 2, 1, 2)),
        ("scalar-5x4-1", (5, 4), (1,)),
        ("empty", (0,), (1,)),
    ]
    for label, a_ne, b_ne in shapes:
        out.append(
            case(
                op,
                dt,
                label,
                [inp("a", dt, *a_ne), inp("b", dt, *b_ne, fill=b_fill)],
                [step("y", op, "a", "b")],
            )
        )
    for other in CREATE_FLOAT:
        if other is not dt:
            out.append(
                case(
                    op,
                    dt,
                    f"b-{other.name}-7x3-7x1",
                    [inp("a", dt, 7, 3), inp("b", other, 7, 1, fill=b_fill)],
                    [step("y", op, "a", "b")],
                )
            )
    out.append(
        case(
            op,
            dt,
            "noncontig",
            [inp("a", dt, 5, 7), inp("b", dt, 10, 5, fill=b_fill)],
            [
                step("at", "permute", "a", axes=(1, 0, 2, 3)),
                step("bt", "view", "b", offset=size, args=(7, 10 * size, 5)),
                step("y", op, "at", "bt"),
            ],
        )
    )
    a_special = [_NAN, _INF, -_INF, 0.0, -0.0, 1.0]
    b_special = _BINARY_SPECIALS.get(op)
    if b_special is None:
        return out
    out.append(
        case(
            op,
            dt,
            "specials",
            [
                inp("a", dt, 6, 2, fill=explicit(a_special)),
                inp("b", dt, 6, 2, fill=explicit(b_special)),
            ],
            [step("y", op, "a", "b")],
        )
    )
    return out


def _arange_cases() -> list[Case]:
    out = []
    for dt in (DType.F32, DType.I32):
        for label, (start, stop, stp) in {
            "0-5-2": (0, 5, 2),
            "0-1-0.25": (0, 1, 0.25),
            "5-0-neg2": (5, 0, -2),
            "0-1-0.3": (0, 1, 0.3),
            "3-3-1": (3, 3, 1),
            "neg7.5-100-1.75": (-7.5, 100, 1.75),
            "1e6-big": (1e6, 1e6 + 3000, 1),
            "0.1-neg3-neg0.7": (0.1, -3, -0.7),
        }.items():
            out.append(
                case(
                    "arange",
                    dt,
                    label,
                    [],
                    [step("y", "arange", start=start, stop=stop, step=stp, dtype=dt)],
                )
            )
    return out


def generate() -> list[Case]:
    """Return the cases of this family."""
    out: list[Case] = []
    for dt in CREATE_FLOAT:
        for op in UNARY:
            out.extend(_unary_cases(op, dt))
        for op in BINARY:
            out.extend(_binary_cases(op, dt))
    out.extend(_arange_cases())
    return out
