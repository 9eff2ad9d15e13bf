"""``dump`` end to end through the public API on the ``cpu`` backend (SEMANTICS §9)."""

from __future__ import annotations

import math

import pytest

import mlplug
from mlplug.dtype import DType
from mlplug.dump import dump


@pytest.fixture
def ctx():
    backend = mlplug.new_backend(None, mlplug.BackendParams(), backend="cpu")
    with backend, backend.new_context() as c:
        yield c


def test_float_matrix(ctx):
    x = ctx.input().from_float_slice([float(v) for v in range(6)], 3, 2)
    assert dump(ctx, x) == "[[ 0.0000,  1.0000,  2.0000],\n [ 3.0000,  4.0000,  5.0000]]"


def test_int_matrix(ctx):
    x = ctx.input().from_int_slice(list(range(6)), 3, 2)
    assert dump(ctx, x) == "[[ 0,  1,  2],\n [ 3,  4,  5]]"


def test_leading_one_kept(ctx):
    x = ctx.input().from_float_slice([0.0, 1.0, 2.0], 1, 3)
    assert dump(ctx, x) == "[[ 0.0000],\n [ 1.0000],\n [ 2.0000]]"


def test_trailing_ones_dropped(ctx):
    x = ctx.input().from_float_slice([0.5, -1.25, 3.14159], 3, 1, 1)
    assert dump(ctx, x, precision=2) == "[ 0.50, -1.25,  3.14]"


def test_special_values(ctx):
    x = ctx.input().from_float_slice([math.inf, -math.inf, math.nan, -0.0], 4)
    assert dump(ctx, x) == "[ +Inf, -Inf,  NaN, -0.0000]"


def test_zero_element(ctx):
    x = ctx.input().zeros(DType.F32, 0, 3)
    assert dump(ctx, x) == "[]"


def test_summarised(ctx):
    x = ctx.input().from_float_slice([float(v) for v in range(80)], 10, 8)
    assert dump(ctx, x, threshold=10, edge_items=2) == (
        "[[ 0.0000,  1.0000, ...,  8.0000,  9.0000],\n"
        " [ 10.0000,  11.0000, ...,  18.0000,  19.0000],\n"
        " ..., \n"
        " [ 60.0000,  61.0000, ...,  68.0000,  69.0000],\n"
        " [ 70.0000,  71.0000, ...,  78.0000,  79.0000]]"
    )


def test_default_threshold_summarises_large_tensor(ctx):
    x = ctx.input().from_float_slice([float(v) for v in range(1001)], 1001)
    assert dump(ctx, x) == ("[ 0.0000,  1.0000,  2.0000, ...,  998.0000,  999.0000,  1000.0000]")


def test_permuted_view_prints_logical_values(ctx):
    # permute(1, 0, 2, 3) of [3, 2] holding 0..5 is [2, 3] = 0, 3, 1, 4, 2, 5 (§5.6).
    x = ctx.input().from_float_slice([float(v) for v in range(6)], 3, 2)
    y = x.permute(ctx, 1, 0, 2, 3)
    assert dump(ctx, y) == "[[ 0.0000,  3.0000],\n [ 1.0000,  4.0000],\n [ 2.0000,  5.0000]]"


def test_strided_view_prints_logical_values(ctx):
    # view(4, 2, 16, 3) of [4, 3] holding 0..11 is columns 1-2 of every row (§5.6).
    x = ctx.input().from_float_slice([float(v) for v in range(12)], 4, 3)
    y = x.view(ctx, 4, 2, 16, 3)
    assert dump(ctx, y, precision=0) == "[[ 1,  2],\n [ 5,  6],\n [ 9,  10]]"


def test_op_result_is_computed_by_dump(ctx):
    x = ctx.input().from_float_slice([1.0, -2.0, 3.0], 3)
    y = x.add(ctx, x)
    assert dump(ctx, y, precision=1) == "[ 2.0, -4.0,  6.0]"
    # dump ran ctx.forward(y).compute(y), so y is readable now.
    assert y.floats().tolist() == [2.0, -4.0, 6.0]


def test_op_on_permuted_operand(ctx):
    x = ctx.input().from_float_slice([float(v) for v in range(6)], 3, 2)
    y = x.permute(ctx, 1, 0, 2, 3).scale(ctx, 2.0)
    assert dump(ctx, y, precision=0) == "[[ 0,  6],\n [ 2,  8],\n [ 4,  10]]"


def test_int_op_result(ctx):
    ids = ctx.arange(0, 5, 2, DType.I32)
    assert dump(ctx, ids) == "[ 0,  2,  4]"


@pytest.mark.parametrize("dtype", [DType.F16, DType.BF16, DType.Q8_0])
def test_converted_dtypes_print_f32_values(ctx, dtype):
    x = ctx.input().zeros(dtype, 32)
    text = dump(ctx, x, threshold=4, edge_items=1)
    assert text == "[ 0.0000, ...,  0.0000]"


def test_negative_option_raises(ctx):
    x = ctx.input().from_float_slice([1.0], 1)
    with pytest.raises(ValueError):
        dump(ctx, x, precision=-1)
