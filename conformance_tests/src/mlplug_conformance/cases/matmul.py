"""Cases for ``mulmat``, ``mulmat_full_prec`` and ``mulmat_id``.

Weights (the receiver) come in every create dtype §3.3 allows (F32, F16, BF16, Q8_0, Q4_0);
``b`` is always F32. Quantised weights need ``K`` to be a multiple of 32.
"""

from __future__ import annotations

from mlplug.dtype import DType

from .dsl import CREATE_WEIGHT, case, inp, step
from .model import Case, explicit, ints

__all__ = ["generate"]


def _mulmat(op: str, dt: DType) -> list[Case]:
    f32 = DType.F32
    s = dt.type_size
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    if not dt.is_block:
        shapes += [
            ("vec-k1-m3", (1, 3), (1, 1)),
            ("k7-m5-n2", (7, 5), (7, 2)),
            ("k31-m4-n3", (31, 4), (31, 3)),
            ("k33-m2-n5", (33, 2), (33, 5)),
        ]
    shapes += [
        ("vec-k32-m5", (32, 5), (32, 1)),
        ("k64-m17-n1", (64, 17), (64, 1)),
        ("k256-m33-n3", (256, 33), (256, 3)),
        ("gemm-k64-m17-n33", (64, 17), (64, 33)),
        ("batch-k32-m4-n3-b2x3", (32, 4, 2, 3), (32, 3, 2, 3)),
        ("gqa-k32-m5-n3", (32, 5, 2), (32, 3, 4)),
        ("gqa4d-k32-m5-n3-r3x2", (32, 5, 2, 2), (32, 3, 6, 4)),
        ("empty-k0", (0,), (0,)),
    ]
    out = [
        case(op, dt, label, [inp("a", dt, *a), inp("b", f32, *b)], [step("y", op, "a", "b")])
        for label, a, b in shapes
    ]
    row = s * (32 // dt.block_size)
    out.append(
        case(
            op,
            dt,
            "transposed-b-k32-m5-n4",
            [inp("a", dt, 32, 5), inp("b", f32, 4, 32)],
            [step("bt", "permute", "b", axes=(1, 0, 2, 3)), step("y", op, "a", "bt")],
        )
    )
    out.append(
        case(
            op,
            dt,
            "strided-a-rows-k32-m4-n3",
            [inp("a", dt, 32, 9), inp("b", f32, 32, 3)],
            [step("at", "view", "a", offset=row, args=(32, 2 * row, 4)), step("y", op, "at", "b")],
        )
    )
    out.append(
        case(
            op,
            dt,
            "permuted-a-0213-k32",
            [inp("a", dt, 32, 2, 5), inp("b", f32, 32, 3, 2)],
            [step("at", "permute", "a", axes=(0, 2, 1, 3)), step("y", op, "at", "b")],
        )
    )
    return out


def _mulmat_id(dt: DType) -> list[Case]:
    f32, i32 = DType.F32, DType.I32
    # (label, K, rows, experts, n_used, tokens, n_b)
    shapes = [
        ("k32-r5-e4-u2-t3-nb1", 32, 5, 4, 2, 3, 1),
        ("k32-r5-e4-u2-t3-nb2", 32, 5, 4, 2, 3, 2),
        ("k64-r17-e8-u4-t5-nb2", 64, 17, 8, 4, 5, 2),
        ("k32-r3-e5-u1-t1-nb1", 32, 3, 5, 1, 1, 1),
        ("k32-r4-e3-u3-t4-nb3", 32, 4, 3, 3, 4, 3),
    ]
    out = []
    for label, k, rows, experts, used, tokens, nb in shapes:
        out.append(
            case(
                "mulmat_id",
                dt,
                label,
                [
                    inp("w", dt, k, rows, experts),
                    inp("x", f32, k, nb, tokens),
                    inp("ids", i32, used, tokens, fill=ints(0, experts)),
                ],
                [step("y", "mulmat_id", "w", "x", "ids")],
            )
        )
    out.append(
        case(
            "mulmat_id",
            dt,
            "permuted-b",
            [
                inp("w", dt, 32, 5, 4),
                inp("x", f32, 32, 3, 2),
                inp("ids", i32, 2, 3, fill=ints(0, 4)),
            ],
            [
                step("xt", "permute", "x", axes=(0, 2, 1, 3)),
                step("y", "mulmat_id", "w", "xt", "ids"),
            ],
        )
    )
    out.append(
        case(
            "mulmat_id",
            dt,
            "ids-out-of-range",
            [
                inp("w", dt, 32, 5, 4),
                inp("x", f32, 32, 1, 3),
                inp("ids", i32, 2, 3, fill=explicit([0, 4, 3, -1, 1 << 20, 2])),
            ],
            [step("y", "mulmat_id", "w", "x", "ids")],
            bad_ids="ids",
        )
    )
    return out


def generate() -> list[Case]:
    """Return the cases of this family."""
    out: list[Case] = []
    for dt in CREATE_WEIGHT:
        out.extend(_mulmat("mulmat", dt))
        out.extend(_mulmat("mulmat_full_prec", dt))
        out.extend(_mulmat_id(dt))
    return out
