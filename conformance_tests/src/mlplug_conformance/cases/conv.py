"""Cases for ``conv_2d``, ``im2col`` and ``avg_pool_2d``."""

from __future__ import annotations

from mlplug.dtype import DType

from .dsl import CREATE_FLOAT, CREATE_WEIGHT, Params, case, inp, step
from .model import Case

__all__ = ["generate"]

# (label, input [W, H, IC, N], kernel [KW, KH, IC, OC], s0, s1, p0, p1, d0, d1)
_CONV = [
    ("spec-32x24x3-k3x3x16-s1-p1", (32, 24, 3, 1), (3, 3, 3, 16), 1, 1, 1, 1, 1, 1),
    ("s2-p0-9x7x2x2", (9, 7, 2, 2), (3, 3, 2, 4), 2, 2, 0, 0, 1, 1),
    ("dil2x1-p1x0", (10, 8, 2, 1), (3, 2, 2, 3), 1, 1, 1, 0, 2, 1),
    ("asym-s1x2-p2x1", (7, 9, 3, 1), (2, 3, 3, 2), 1, 2, 2, 1, 1, 1),
    ("k1x1", (5, 4, 6, 2), (1, 1, 6, 3), 1, 1, 0, 0, 1, 1),
]


def _params(s0: int, s1: int, p0: int, p1: int, d0: int, d1: int) -> Params:
    return {"s0": s0, "s1": s1, "p0": p0, "p1": p1, "d0": d0, "d1": d1}


def _conv_cases(op: str, dt: DType) -> list[Case]:
    out = []
    zeros = op == "im2col"  # only the kernel's shape is used
    shapes = list(_CONV)
    if dt.is_block:
        shapes = [
            ("kw32-35x4x2x1", (35, 4, 2, 1), (32, 2, 2, 1), 1, 1, 0, 0, 1, 1),
            ("kw32-s2-p1-40x5x1x2", (40, 5, 1, 2), (32, 3, 1, 1), 2, 1, 1, 1, 1, 1),
        ]
    for label, x_ne, k_ne, *p in shapes:
        out.append(
            case(
                op,
                dt,
                label,
                [inp("k", dt, *k_ne, zeros=zeros), inp("x", DType.F32, *x_ne)],
                [step("y", op, "k", "x", **_params(*p))],
            )
        )
    if not dt.is_block:
        # Input created as [H, W, IC, N] and transposed to [W, H, IC, N]: non-contiguous.
        out.append(
            case(
                op,
                dt,
                "transposed-input",
                [inp("k", dt, 3, 3, 2, 2, zeros=zeros), inp("x", DType.F32, 6, 8, 2, 1)],
                [
                    step("xt", "permute", "x", axes=(1, 0, 2, 3)),
                    step("y", op, "k", "xt", **_params(1, 1, 1, 1, 1, 1)),
                ],
            )
        )
    return out


def _pool_cases(dt: DType) -> list[Case]:
    variants = [
        ("8x6x2-k2-s2-p0", (8, 6, 2), 2, 2, 0),
        ("7x5x3x2-k3-s1-p1", (7, 5, 3, 2), 3, 1, 1),
        ("9x9-k3-s2-p1", (9, 9), 3, 2, 1),
        ("4x4-k4-s1-p0", (4, 4), 4, 1, 0),
        ("5x3-k1", (5, 3), 1, 1, 0),
    ]
    out = [
        case(
            "avg_pool_2d",
            dt,
            label,
            [inp("x", dt, *ne)],
            [step("y", "avg_pool_2d", "x", k=k, s=s, p=p)],
        )
        for label, ne, k, s, p in variants
    ]
    out.append(
        case(
            "avg_pool_2d",
            dt,
            "transposed",
            [inp("x", dt, 6, 8)],
            [
                step("t", "permute", "x", axes=(1, 0, 2, 3)),
                step("y", "avg_pool_2d", "t", k=2, s=2, p=1),
            ],
        )
    )
    return out


def generate() -> list[Case]:
    """Return the cases of this family."""
    out: list[Case] = []
    for dt in (DType.F32, DType.F16):
        out.extend(_conv_cases("conv_2d", dt))
    for dt in (*CREATE_WEIGHT, DType.I32):
        out.extend(_conv_cases("im2col", dt))
    for dt in CREATE_FLOAT:
        out.extend(_pool_cases(dt))
    return out
