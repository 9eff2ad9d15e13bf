"""Cases for views, copies, assembling ops, ``rows`` and ``set_rows``."""

from __future__ import annotations

import math

from mlplug.dtype import DType

from .dsl import CREATE_FLOAT, CREATE_WEIGHT, case, inp, step
from .model import Case, Input, explicit, ints

__all__ = ["generate"]

ANY_CREATE: tuple[DType, ...] = (*CREATE_WEIGHT, DType.I32)
ASSEMBLE: tuple[DType, ...] = (*CREATE_FLOAT, DType.I32)
_QUANT = (DType.Q8_0, DType.Q4_0)


def _reshape(dt: DType) -> list[Case]:
    if dt.is_block:
        shapes = [
            ("64x3-to-32x6", (64, 3), (32, 6)),
            ("32x6-to-192", (32, 6), (192,)),
            ("96x2x2-to-96x4", (96, 2, 2), (96, 4)),
            ("empty", (0,), (0, 3)),
        ]
    else:
        shapes = [
            ("4x3-to-3x4", (4, 3), (3, 4)),
            ("12-to-2x3x2", (12,), (2, 3, 2)),
            ("2x3x4x5-to-5x24", (2, 3, 4, 5), (5, 24)),
            ("6x2-to-12", (6, 2), (12,)),
            ("7-to-1x7", (7,), (1, 7)),
            ("empty-to-0x5", (0,), (0, 5)),
        ]
    out = [
        case("reshape", dt, label, [inp("x", dt, *a)], [step("y", "reshape", "x", shape=b)])
        for label, a, b in shapes
    ]
    # A view of a computed (contiguous) result rather than of a buffer.
    ne = (64, 3) if dt.is_block else (6, 4)
    new = (32, 6) if dt.is_block else (4, 6)
    out.append(
        case(
            "reshape",
            dt,
            "of-result",
            [inp("x", dt, *ne)],
            [step("t", "contiguous", "x"), step("y", "reshape", "t", shape=new)],
        )
    )
    return out


def _view(dt: DType) -> list[Case]:
    s = dt.type_size
    if dt.is_block:
        # Q8_0/Q4_0 [64, 3]: two blocks per row, row stride 2·S; views keep dim 0 whole.
        variants = [
            ("row", (64, 3), (2 * s, (64,))),
            ("second-block-of-rows", (64, 3), (s, (32, 2 * s, 3))),
            ("4d", (64, 2, 2, 2), (0, (32, 2 * s, 2, 4 * s, 2, 8 * s, 2))),
            ("stride0-rows", (64, 3), (0, (64, 0, 3))),
        ]
    else:
        # The §5.6 examples on F32 [4, 3] 0..11, in units of S.
        variants = [
            ("row", (4, 3), (4 * s, (4,))),
            ("cols-1-2", (4, 3), (s, (2, 4 * s, 3))),
            ("rows-split", (4, 3), (0, (2, 2 * s, 2, 4 * s, 3))),
            ("4d", (6, 5, 4), (7 * s, (3, 6 * s, 2, 30 * s, 2, 12 * s, 2))),
            ("stride0-rows", (4, 3), (0, (4, 0, 3))),
            ("empty", (4, 3), (s, (0,))),
        ]
    out = [
        case(
            "view",
            dt,
            label,
            [inp("x", dt, *ne, fill=explicit(range(200)) if not dt.is_block else None)],
            [step("y", "view", "x", offset=off, args=args)],
        )
        for label, ne, (off, args) in variants
    ]
    # Nested views accumulate offsets; the inner view reaches past its own elements.
    if dt.is_block:
        nested = [
            step("t", "view", "x", offset=2 * s, args=(64,)),
            step("y", "view", "t", offset=0, args=(64, 2 * s, 2)),
        ]
        ne = (64, 3)
    else:
        nested = [
            step("t", "view", "x", offset=4 * s, args=(4,)),
            step("y", "view", "t", offset=s, args=(2, 4 * s, 2)),
        ]
        ne = (4, 3)
    out.append(case("view", dt, "nested", [inp("x", dt, *ne)], nested))
    return out


def _permute(dt: DType) -> list[Case]:
    if dt.is_block:
        perms = [(0, 2, 1, 3), (0, 3, 1, 2), (0, 1, 3, 2), (0, 3, 2, 1)]
        ne: tuple[int, ...] = (32, 3, 2, 2)
    else:
        perms = [(1, 0, 2, 3), (0, 2, 1, 3), (2, 0, 1, 3), (3, 2, 1, 0), (1, 2, 3, 0)]
        ne = (2, 3, 5, 7)
    out = [
        case(
            "permute",
            dt,
            "-".join(map(str, p)),
            [inp("x", dt, *ne)],
            [step("y", "permute", "x", axes=p)],
        )
        for p in perms
    ]
    out.append(
        case(
            "permute",
            dt,
            "empty",
            [inp("x", dt, 0)],
            [step("y", "permute", "x", axes=(1, 0, 2, 3) if not dt.is_block else (0, 2, 1, 3))],
        )
    )
    return out


def _contiguous(op: str, dt: DType) -> list[Case]:
    s = dt.type_size
    if dt.is_block:
        variants = [
            ("packed-64x3", (64, 3), []),
            ("permuted-0213", (64, 3, 2), [step("t", "permute", "x", axes=(0, 2, 1, 3))]),
            ("view-rows", (64, 5), [step("t", "view", "x", offset=2 * s, args=(64, 4 * s, 2))]),
            ("empty", (0,), []),
        ]
    else:
        variants = [
            ("packed-7x3", (7, 3), []),
            ("transposed-5x7", (5, 7), [step("t", "permute", "x", axes=(1, 0, 2, 3))]),
            ("permuted-4d", (2, 3, 5, 7), [step("t", "permute", "x", axes=(2, 0, 3, 1))]),
            ("view-cols", (9, 4), [step("t", "view", "x", offset=2 * s, args=(5, 9 * s, 4))]),
            ("empty", (0,), []),
        ]
    out = []
    for label, ne, pre in variants:
        src = "t" if pre else "x"
        out.append(case(op, dt, label, [inp("x", dt, *ne)], [*pre, step("y", op, src)]))
    return out


_CONVERSIONS: dict[DType, tuple[DType, ...]] = {
    DType.F32: CREATE_WEIGHT,
    DType.F16: CREATE_WEIGHT,
    DType.BF16: CREATE_WEIGHT,
    DType.Q8_0: (DType.F32, DType.F16, DType.BF16, DType.Q8_0, DType.Q4_0),
    DType.Q4_0: (DType.F32, DType.F16, DType.Q4_0, DType.Q8_0),
    DType.I32: (DType.I32,),
}
# Ties between neighbouring F16/BF16 values, overflow, subnormals, NaN, ±inf and -0.
_F16_EDGES = [
    1 + 2**-11,
    1 + 3 * 2**-11,
    -(1 + 2**-11),
    65519.0,
    65520.0,
    1e6,
    -1e6,
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    6e-8,
    1e-8,
    2.0**-24 * 1.5,
    0.1,
    -3.75,
]
_BF16_EDGES = [
    1 + 2**-8,
    1 + 3 * 2**-8,
    -(1 + 2**-8),
    3.4e38,
    -3.4e38,
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    1e-40,
    0.1,
    1 + 2**-9,
    255.5,
    256.5,
    -1e-3,
    7.0,
]


def _copy(dt: DType) -> list[Case]:
    out = []
    for dst in _CONVERSIONS[dt]:
        tag = f"to-{dst.name}"
        out.append(
            case(
                "copy",
                dt,
                f"{tag}-64x3",
                [inp("a", dt, 64, 3), inp("d", dst, 64, 3, zeros=True)],
                [step("y", "copy", "a", "d")],
            )
        )
        out.append(
            case(
                "copy",
                dt,
                f"{tag}-reshaped-64x3-to-32x6",
                [inp("a", dt, 64, 3), inp("d", dst, 32, 6, zeros=True)],
                [step("y", "copy", "a", "d")],
            )
        )
        # A strided window of a larger buffer; the whole buffer is checked afterwards.
        ds = dst.type_size
        row = 2 * ds if dst.is_block else 96 * ds
        out.append(
            case(
                "copy",
                dt,
                f"{tag}-into-window",
                [inp("a", dt, 64, 3), inp("d", dst, 96 if not dst.is_block else 64, 5, zeros=True)],
                [
                    step("w", "view", "d", offset=row, args=(64, row, 3)),
                    step("y", "copy", "a", "w"),
                ],
                extra=("d",),
            )
        )
        # KV-cache style: [D, H, B] into cells 2..4 of a [D, H, 8] cache.
        nb1 = ds * (32 // dst.block_size)
        nb2 = nb1 * 2
        out.append(
            case(
                "copy",
                dt,
                f"{tag}-kv-cells",
                [inp("a", dt, 32, 2, 3), inp("d", dst, 32, 2, 8, zeros=True)],
                [
                    step("w", "view", "d", offset=2 * nb2, args=(32, nb1, 2, nb2, 3)),
                    step("y", "copy", "a", "w"),
                ],
                extra=("d",),
            )
        )
        if not dt.is_block:
            out.append(
                case(
                    "copy",
                    dt,
                    f"{tag}-transposed-src",
                    [inp("a", dt, 3, 64), inp("d", dst, 64, 3, zeros=True)],
                    [step("t", "permute", "a", axes=(1, 0, 2, 3)), step("y", "copy", "t", "d")],
                )
            )
        if dt is DType.F32 and dst in (DType.F16, DType.BF16):
            edges = _F16_EDGES if dst is DType.F16 else _BF16_EDGES
            out.append(
                case(
                    "copy",
                    dt,
                    f"{tag}-rounding-edges",
                    [
                        inp("a", dt, len(edges), fill=explicit(edges)),
                        inp("d", dst, len(edges), zeros=True),
                    ],
                    [step("y", "copy", "a", "d")],
                )
            )
        if dst in _QUANT and not dt.is_block:
            # A block of zeros (d = 0) and a block with one outlier.
            fill = explicit([0.0] * 32 + [0.01] * 31 + [-50.0])
            out.append(
                case(
                    "copy",
                    dt,
                    f"{tag}-zero-and-outlier-blocks",
                    [inp("a", dt, 64, 2, fill=fill), inp("d", dst, 64, 2, zeros=True)],
                    [step("y", "copy", "a", "d")],
                )
            )
    out.append(
        case(
            "copy",
            dt,
            f"to-{dt.name}-empty",
            [inp("a", dt, 0), inp("d", dt, 0)],
            [step("y", "copy", "a", "d")],
        )
    )
    return out


def _set(dt: DType) -> list[Case]:
    s = dt.type_size
    row = 7 * s
    variants: list[tuple[str, tuple[int, ...], tuple[int, ...], int, tuple[int, ...]]] = [
        ("2x2-off4-stride16", (4, 3), (2, 2), 1 * s, (4 * s,)),
        ("3-off8-wraps", (4, 3), (3,), 2 * s, ()),
        ("3x2-default-stride", (7, 5, 2), (3, 2), row + s, ()),
        ("3x2x2-stride9", (7, 5, 2), (3, 2, 2), 2 * s, (9 * s,)),
        ("full", (7, 3), (7, 3), 0, ()),
        ("empty-b", (7, 3), (0,), 0, ()),
    ]
    out = []
    for label, a_ne, b_ne, off, strides in variants:
        out.append(
            case(
                "set",
                dt,
                label,
                [inp("a", dt, *a_ne), inp("b", dt, *b_ne)],
                [step("y", "set", "a", "b", offset=off, strides=strides)],
            )
        )
    out.append(
        case(
            "set",
            dt,
            "noncontig",
            [inp("a", dt, 5, 7), inp("b", dt, 2, 3)],
            [
                step("at", "permute", "a", axes=(1, 0, 2, 3)),
                step("bt", "permute", "b", axes=(1, 0, 2, 3)),
                step("y", "set", "at", "bt", offset=s, strides=()),
            ],
        )
    )
    return out


def _pad(dt: DType) -> list[Case]:
    variants = [
        ("2x3-p1-2-0-0", (2, 3), (1, 2, 0, 0)),
        ("2x3-p0-0-0-1", (2, 3), (0, 0, 0, 1)),
        ("5x4x3x2-p0-1-2-1", (5, 4, 3, 2), (0, 1, 2, 1)),
        ("none", (7, 3), (0, 0, 0, 0)),
        ("empty-p2", (0,), (2, 0, 0, 0)),
    ]
    out = [
        case("pad", dt, label, [inp("x", dt, *ne)], [step("y", "pad", "x", pads=p)])
        for label, ne, p in variants
    ]
    out.append(
        case(
            "pad",
            dt,
            "transposed",
            [inp("x", dt, 3, 4)],
            [
                step("t", "permute", "x", axes=(1, 0, 2, 3)),
                step("y", "pad", "t", pads=(2, 1, 0, 0)),
            ],
        )
    )
    return out


def _concat(dt: DType) -> list[Case]:
    base = (4, 3, 2, 2)
    out = []
    for dim in range(4):
        b_ne = list(base)
        b_ne[dim] = 3
        out.append(
            case(
                "concat",
                dt,
                f"dim{dim}",
                [inp("a", dt, *base), inp("b", dt, *b_ne)],
                [step("y", "concat", "a", "b", dim=dim)],
            )
        )
    out.append(
        case(
            "concat",
            dt,
            "empty-a-dim0",
            [inp("a", dt, 0), inp("b", dt, 3)],
            [step("y", "concat", "a", "b", dim=0)],
        )
    )
    out.append(
        case(
            "concat",
            dt,
            "transposed-dim1",
            [inp("a", dt, 3, 2), inp("b", dt, 2, 5)],
            [step("at", "permute", "a", axes=(1, 0, 2, 3)), step("y", "concat", "at", "b", dim=1)],
        )
    )
    return out


def _stack(dt: DType) -> list[Case]:
    out = []
    for dim in (0, 1, 2):
        out.append(
            case(
                "stack",
                dt,
                f"three-3-dim{dim}",
                [inp("a", dt, 3), inp("b", dt, 3), inp("c", dt, 3)],
                [step("y", "stack", "a", "b", "c", dim=dim)],
            )
        )
    out.append(case("stack", dt, "alone", [inp("a", dt, 5, 2)], [step("y", "stack", "a", dim=1)]))
    out.append(
        case(
            "stack",
            dt,
            "4x3-dim3",
            [inp("a", dt, 4, 3), inp("b", dt, 4, 3)],
            [step("y", "stack", "a", "b", dim=3)],
        )
    )
    out.append(
        case(
            "stack",
            dt,
            "transposed-dim0",
            [inp("a", dt, 3, 2), inp("b", dt, 4, 3)],
            [step("at", "permute", "a", axes=(1, 0, 2, 3)), step("y", "stack", "at", "b", dim=0)],
        )
    )
    return out


def _repeat(dt: DType) -> list[Case]:
    out = [
        case(
            "repeat",
            dt,
            f"2x3-dim{d}-n{n}",
            [inp("x", dt, 2, 3)],
            [step("y", "repeat", "x", dim=d, n=n)],
        )
        for d, n in ((0, 2), (1, 2), (2, 3), (3, 2), (0, 1), (1, 0))
    ]
    out.append(
        case(
            "repeat",
            dt,
            "transposed-dim0-n3",
            [inp("x", dt, 3, 2)],
            [step("t", "permute", "x", axes=(1, 0, 2, 3)), step("y", "repeat", "t", dim=0, n=3)],
        )
    )
    return out


def _rows(dt: DType) -> list[Case]:
    d = 64 if dt.is_block else 3
    s = dt.type_size
    row = s * (d // dt.block_size)
    out = [
        case(
            "rows",
            dt,
            f"embedding-{d}x4",
            [inp("a", dt, d, 4), inp("i", DType.I32, 3, fill=explicit([2, 0, 2]))],
            [step("y", "rows", "a", "i")],
        ),
        case(
            "rows",
            dt,
            f"vocab-{d}x50",
            [inp("a", dt, d, 50), inp("i", DType.I32, 7, fill=ints(0, 50))],
            [step("y", "rows", "a", "i")],
        ),
        case(
            "rows",
            dt,
            f"batched-{d}x4x2",
            [inp("a", dt, d, 4, 2), inp("i", DType.I32, 3, 2, fill=explicit([3, 0, 1, 1, 1, 2]))],
            [step("y", "rows", "a", "i")],
        ),
        case(
            "rows",
            dt,
            f"3d-{d}x6x2x3",
            [inp("a", dt, d, 6, 2, 3), inp("i", DType.I32, 5, 2, 3, fill=ints(0, 6))],
            [step("y", "rows", "a", "i")],
        ),
        case(
            "rows",
            dt,
            "strided-table",
            [inp("a", dt, d, 9), inp("i", DType.I32, 4, fill=ints(0, 4))],
            [step("t", "view", "a", offset=row, args=(d, 2 * row, 4)), step("y", "rows", "t", "i")],
        ),
        case(
            "rows",
            dt,
            "strided-ids",
            [inp("a", dt, d, 5, 4), inp("i", DType.I32, 3, 4, fill=ints(0, 5))],
            [step("j", "view", "i", offset=4, args=(2, 12, 4)), step("y", "rows", "a", "j")],
        ),
        case(
            "rows",
            dt,
            "ids-out-of-range",
            [inp("a", dt, d, 4), inp("i", DType.I32, 6, fill=explicit([1, 4, 0, -1, 3, 1 << 20]))],
            [step("y", "rows", "a", "i")],
            bad_ids="i",
        ),
        case(
            "rows",
            dt,
            "empty-ids",
            [inp("a", dt, d, 5), inp("i", DType.I32, 0)],
            [step("y", "rows", "a", "i")],
        ),
    ]
    return out


_CACHE: tuple[DType, ...] = (DType.F32, DType.F16, DType.BF16, *_QUANT)


def _set_rows(dt: DType) -> list[Case]:
    """Scatters into a zeroed destination; the whole destination buffer is checked."""
    d = 32
    out: list[Case] = []
    for dst in _CACHE if dt is DType.F32 else (dt,):
        tag = f"to-{dst.name}"
        row = dst.type_size * (d // dst.block_size)
        out += [
            case(
                "set_rows",
                dt,
                f"{tag}-kv-cells",
                [inp("a", dt, d, 3), inp("d", dst, d, 8, zeros=True), ids("i", [5, 1, 6])],
                [step("y", "set_rows", "a", "d", "i")],
                extra=("d",),
            ),
            case(
                "set_rows",
                dt,
                f"{tag}-3d",
                [inp("a", dt, d, 2, 3), inp("d", dst, d, 8, 3, zeros=True), ids("i", [7, 0])],
                [step("y", "set_rows", "a", "d", "i")],
                extra=("d",),
            ),
            case(
                "set_rows",
                dt,
                f"{tag}-into-window",
                [inp("a", dt, d, 2), inp("d", dst, d, 10, zeros=True), ids("i", [0, 7])],
                [
                    step("w", "view", "d", offset=row, args=(d, row, 8)),
                    step("y", "set_rows", "a", "w", "i"),
                ],
                extra=("d",),
            ),
        ]
    out.append(
        case(
            "set_rows",
            dt,
            "repeated-id-last-wins",
            [inp("a", dt, d, 3), inp("d", dt, d, 4, zeros=True), ids("i", [2, 0, 2])],
            [step("y", "set_rows", "a", "d", "i")],
            extra=("d",),
        )
    )
    if not dt.is_block:
        # One value per row: how a transposed V cache [L, Dv, Hkv] takes a token's values.
        out.append(
            case(
                "set_rows",
                dt,
                "single-values",
                [
                    inp("a", dt, 1, 6),
                    inp("d", dt, 1, 40, zeros=True),
                    ids("i", [3, 17, 39, 0, 22, 8]),
                ],
                [step("y", "set_rows", "a", "d", "i")],
                extra=("d",),
            )
        )
    out.append(
        case(
            "set_rows",
            dt,
            "empty",
            [inp("a", dt, 0), inp("d", dt, d, 4, zeros=True), inp("i", DType.I32, 0)],
            [step("y", "set_rows", "a", "d", "i")],
            extra=("d",),
        )
    )
    return out


def ids(name: str, values: list[int]) -> Input:
    """Return an I32 vector input holding ``values``."""
    return inp(name, DType.I32, len(values), fill=explicit(values))


def generate() -> list[Case]:
    """Return the cases of this family."""
    out: list[Case] = []
    for dt in ANY_CREATE:
        out.extend(_reshape(dt))
        out.extend(_view(dt))
        out.extend(_permute(dt))
        out.extend(_contiguous("contiguous", dt))
        out.extend(_contiguous("duplicate", dt))
        out.extend(_copy(dt))
        out.extend(_rows(dt))
    for dt in _CACHE:
        out.extend(_set_rows(dt))
    for dt in ASSEMBLE:
        out.extend(_set(dt))
        out.extend(_pad(dt))
        out.extend(_concat(dt))
        out.extend(_stack(dt))
        out.extend(_repeat(dt))
    return out
