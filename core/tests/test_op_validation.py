"""Build-time validation: every op raises a specific error naming itself (SEMANTICS §2.1, §5)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mlplug import Context, DType, DTypeError, ShapeError, Tensor
from mlplug.dtype import CREATE
from mlplug.ops import OPS, category

F32, F16, I32, Q8 = DType.F32, DType.F16, DType.I32, DType.Q8_0


def z(ctx: Context, dtype: DType, *shape: int) -> Tensor:
    return ctx.input().zeros(dtype, *shape)


# op -> a call that violates a shape rule
SHAPE_ERRORS: dict[str, Callable[[Context], object]] = {
    **{
        op: (lambda c, op=op: getattr(z(c, F32, 4), op)(c, z(c, F32, 3)))
        for op in category("binary")
    },
    "mulmat": lambda c: z(c, F32, 4, 2).mulmat(c, z(c, F32, 3, 2)),
    "mulmat_full_prec": lambda c: z(c, F32, 4, 2, 3).mulmat_full_prec(c, z(c, F32, 4, 2, 4)),
    "mulmat_id": lambda c: z(c, F32, 4, 3, 5).mulmat_id(c, z(c, F32, 4, 1, 2), z(c, I32, 2, 3)),
    "layer_norm": lambda c: z(c, F32, 4).layer_norm(c, z(c, F32, 3), None, 1e-5),
    "rms_norm": lambda c: z(c, F32, 4, 2).rms_norm(c, z(c, F32, 4, 3), 1e-5),
    "reshape": lambda c: z(c, F32, 4, 3).reshape(c, 5, 2),
    "view": lambda c: z(c, F32, 4, 3).view(c, 16, 4, 16, 3),
    "permute": lambda c: z(c, F32, 4, 3).permute(c, 0, 0, 1, 2),
    "copy": lambda c: z(c, F32, 4).copy(c, z(c, F32, 5)),
    "set": lambda c: z(c, F32, 4, 3).set(c, z(c, F32, 2, 2), 40, 16),
    "pad": lambda c: z(c, F32, 2, 3).pad(c, 1, -1, 0, 0),
    "concat": lambda c: z(c, F32, 2, 3).concat(c, z(c, F32, 3, 3), 1),
    "stack": lambda c: z(c, F32, 3).stack(c, 1, z(c, F32, 4)),
    "repeat": lambda c: z(c, F32, 2, 3).repeat(c, 4, 2),
    "rows": lambda c: z(c, F32, 3, 4, 2).rows(c, z(c, I32, 3)),
    "set_rows": lambda c: z(c, F32, 4, 2).set_rows(c, z(c, F32, 5, 8), z(c, I32, 2)),
    "topk": lambda c: z(c, F32, 4).topk(c, 5),
    "conv_2d": lambda c: z(c, F32, 3, 3, 2, 4).conv_2d(c, z(c, F32, 8, 8, 3, 1), 1, 1, 0, 0, 1, 1),
    "im2col": lambda c: z(c, F32, 9, 9, 3, 4).im2col(c, z(c, F32, 8, 8, 3, 1), 1, 1, 0, 0, 1, 1),
    "avg_pool_2d": lambda c: z(c, F32, 2, 2).avg_pool_2d(c, 3, 1, 0),
    "scaled_dot_product_attention": lambda c: z(c, F32, 8, 4, 2).scaled_dot_product_attention(
        c, z(c, F32, 8, 3, 5), z(c, F32, 8, 3, 5), None, 0.1
    ),
    "rope": lambda c: z(c, F32, 8, 2, 3).rope(c, z(c, F32, 5, 3), z(c, F32, 5, 3), 0),
    "swiglu": lambda c: z(c, F32, 4, 3).swiglu(c, z(c, F32, 3, 3)),
    "geglu": lambda c: z(c, F32, 4, 3).geglu(c, z(c, F32, 4, 2)),
    "rms_norm_add": lambda c: z(c, F32, 4, 3).rms_norm_add(c, None, z(c, F32, 4, 2), 1e-6),
}
# Ops with no shape operand or parameter to violate: unary and row ops on any extents, sorting.
NO_SHAPE_RULE = {
    *category("unary"),
    *category("reduce"),
    "softmax",
    "contiguous",
    "duplicate",
    "argsort",
    "arange",
}


def _sample(op: str) -> tuple[object, ...]:
    """Return valid arguments for the parameters of a one-operand op (a float for each)."""
    return tuple(0.5 for _ in OPS[op].params)


# op -> a call with an operand dtype the op does not accept
DTYPE_ERRORS: dict[str, Callable[[Context], object]] = {
    **{
        op: (lambda c, op=op: getattr(z(c, I32, 4), op)(c, *_sample(op)))
        for op in (*category("unary"), *category("reduce"), "softmax", "argsort")
    },
    **{
        op: (lambda c, op=op: getattr(z(c, F32, 4), op)(c, z(c, I32, 4)))
        for op in category("binary")
    },
    "mulmat": lambda c: z(c, F32, 4).mulmat(c, z(c, F16, 4)),
    "mulmat_full_prec": lambda c: z(c, I32, 4).mulmat_full_prec(c, z(c, F32, 4)),
    "mulmat_id": lambda c: z(c, F32, 4, 3, 5).mulmat_id(c, z(c, F32, 4, 1, 2), z(c, F32, 2, 2)),
    "layer_norm": lambda c: z(c, F32, 4).layer_norm(c, z(c, I32, 4), None, 1e-5),
    "rms_norm": lambda c: z(c, Q8, 32).rms_norm(c, None, 1e-5),
    "copy": lambda c: z(c, I32, 4).copy(c, z(c, F32, 4)),
    "set": lambda c: z(c, F32, 4).set(c, z(c, I32, 2), 0),
    "pad": lambda c: z(c, Q8, 32).pad(c, 1, 0, 0, 0),
    "concat": lambda c: z(c, F32, 2).concat(c, z(c, F16, 2), 0),
    "stack": lambda c: z(c, F32, 2).stack(c, 0, z(c, I32, 2)),
    "repeat": lambda c: z(c, Q8, 32).repeat(c, 0, 2),
    "rows": lambda c: z(c, F32, 3, 4).rows(c, z(c, F32, 2)),
    "set_rows": lambda c: z(c, F32, 4, 2).set_rows(c, z(c, F32, 4, 8), z(c, F32, 2)),
    "topk": lambda c: z(c, I32, 4).topk(c, 2),
    "conv_2d": lambda c: z(c, I32, 3, 3, 3, 4).conv_2d(c, z(c, F32, 8, 8, 3, 1), 1, 1, 0, 0, 1, 1),
    "im2col": lambda c: z(c, F32, 3, 3, 3, 4).im2col(c, z(c, F16, 8, 8, 3, 1), 1, 1, 0, 0, 1, 1),
    "avg_pool_2d": lambda c: z(c, I32, 4, 4).avg_pool_2d(c, 2, 2, 0),
    "scaled_dot_product_attention": lambda c: z(c, F16, 8, 4, 2).scaled_dot_product_attention(
        c, z(c, F32, 8, 2, 5), z(c, F32, 8, 2, 5), None, 0.1
    ),
    "arange": lambda c: c.arange(0, 4, 1, DType.F16),
    "rope": lambda c: z(c, F16, 8, 2, 3).rope(c, z(c, F32, 4, 3), z(c, F32, 4, 3), 2),
    "swiglu": lambda c: z(c, F32, 4).swiglu(c, z(c, I32, 4)),
    "geglu": lambda c: z(c, I32, 4).geglu(c, z(c, F32, 4)),
    "rms_norm_add": lambda c: z(c, F32, 4).rms_norm_add(c, z(c, F32, 4), z(c, I32, 4), 1e-6),
}
# Ops that accept every dtype: checked instead to accept every creatable one.
ANY_DTYPE = {"reshape", "view", "permute", "contiguous", "duplicate"}


def test_every_op_has_a_shape_and_a_dtype_test() -> None:
    assert set(SHAPE_ERRORS) | NO_SHAPE_RULE == set(OPS)
    assert set(DTYPE_ERRORS) | ANY_DTYPE == set(OPS)


@pytest.mark.parametrize("op", sorted(SHAPE_ERRORS))
def test_shape_error_names_the_op(ctx: Context, op: str) -> None:
    with pytest.raises(ShapeError, match=rf"^{op}: "):
        SHAPE_ERRORS[op](ctx)


@pytest.mark.parametrize("op", sorted(DTYPE_ERRORS))
def test_dtype_error_names_the_op(ctx: Context, op: str) -> None:
    with pytest.raises(DTypeError, match=r"^\w+: "):
        DTYPE_ERRORS[op](ctx)


@pytest.mark.parametrize("op", sorted(ANY_DTYPE))
@pytest.mark.parametrize("dtype", sorted(CREATE))
def test_any_dtype_ops_accept_every_create_dtype(ctx: Context, op: str, dtype: DType) -> None:
    t = z(ctx, dtype, 64, 2)
    args = {"reshape": (128,), "view": (0, 32), "permute": (0, 2, 1, 3)}.get(op, ())
    out = getattr(t, op)(ctx, *args)
    assert out.dtype() is dtype


def test_errors_are_raised_at_build_time_not_compute(ctx: Context) -> None:
    a = z(ctx, F32, 4)
    with pytest.raises(ShapeError, match=r"^add: a.ne0 \(4\) must be a multiple of b.ne0 \(3\)"):
        a.add(ctx, z(ctx, F32, 3))
    assert ctx._family.graph == []


def test_mulmat_message_names_values(ctx: Context) -> None:
    with pytest.raises(ShapeError, match=r"mulmat: a.ne0 \(4\) != b.ne0 \(3\)"):
        z(ctx, F32, 4).mulmat(ctx, z(ctx, F32, 3))


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: z(c, F32, 4).reshape(c, True), ShapeError),
        (lambda c: z(c, F32, 4).reshape(c, 2.0, 2), ShapeError),
        (lambda c: z(c, F32, 4).layer_norm(c, None, None, -1.0), ValueError),
        (lambda c: z(c, F32, 4).rms_norm(c, None, float("nan")), ValueError),
        (lambda c: c.arange(0, 4, 0, F32), ValueError),
        (lambda c: c.arange(0, float("inf"), 1, F32), ValueError),
        (lambda c: c.arange(0, 5e9, 1e9, I32), ValueError),
        (lambda c: z(c, F32, 4).view(c, 2, 1), ShapeError),
        (lambda c: z(c, F32, 4).view(c, 0, 1, 2), ShapeError),
        (lambda c: z(c, Q8, 64, 2).permute(c, 1, 0, 2, 3), ShapeError),
        (lambda c: z(c, Q8, 64).view(c, 0, 16), ShapeError),
        (lambda c: z(c, F32, 4, 3).permute(c, 1, 0).contiguous(c), ShapeError),
        (lambda c: z(c, F32, 4).set(c, z(c, F32, 2), 0, 4, 8), ShapeError),
        (lambda c: z(c, F32, 4).set(c, z(c, F32, 2), 2), ShapeError),
        (lambda c: z(c, F32, 2, 2).pad(c, 1, 1, 1), ShapeError),
        (lambda c: z(c, F32, 4, 3).permute(c, 1, 0, 2, 3).reshape(c, 12), ShapeError),
        (lambda c: z(c, F32, 4, 1, 3).rope(c, z(c, F32, 2, 3), z(c, F32, 2, 3), 1), ValueError),
        (lambda c: z(c, F32, 4, 1, 3).rope(c, z(c, F32, 2, 3), z(c, F32, 1, 3), 0), ShapeError),
        (lambda c: z(c, F32, 4).rms_norm_add(c, None, z(c, F32, 4), -1.0), ValueError),
        (lambda c: z(c, F32, 4).rms_norm_add(c, None, None, 1e-6), TypeError),
    ],
)
def test_invalid_parameters(
    ctx: Context, call: Callable[[Context], object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        call(ctx)
