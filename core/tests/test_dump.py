"""The text format of ``dump`` (SEMANTICS §9), tested on ``format_array`` without a backend.

Every example block of §9 is a normative test vector. The examples give ggml shapes and values in
ggml order (dim 0 fastest); ``format_array`` takes the numpy-order shape, which is the reversed
ggml shape after ``shape()`` drops trailing 1s, and the same flat values.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from mlplug.dump import DumpOptions, format_array


def fmt(values, ggml_shape, *, integer=False, **opts):
    """Format flat ggml-order values of a ggml shape (already in ``shape()`` form)."""
    return format_array(list(values), tuple(reversed(ggml_shape)), integer=integer, **opts)


def test_matrix_3x2():
    assert fmt(range(6), (3, 2)) == ("[[ 0.0000,  1.0000,  2.0000],\n [ 3.0000,  4.0000,  5.0000]]")


def test_vector_precision_2():
    assert fmt([0.5, -1.25, 3.14159], (3,), precision=2) == "[ 0.50, -1.25,  3.14]"


def test_vector_summarised():
    assert fmt(range(10), (10,), threshold=5) == (
        "[ 0.0000,  1.0000,  2.0000, ...,  7.0000,  8.0000,  9.0000]"
    )


def test_matrix_summarised_both_dims():
    # The "..., " line ends with a space.
    assert fmt(range(80), (10, 8), threshold=10, edge_items=2) == (
        "[[ 0.0000,  1.0000, ...,  8.0000,  9.0000],\n"
        " [ 10.0000,  11.0000, ...,  18.0000,  19.0000],\n"
        " ..., \n"
        " [ 60.0000,  61.0000, ...,  68.0000,  69.0000],\n"
        " [ 70.0000,  71.0000, ...,  78.0000,  79.0000]]"
    )


def test_rank3():
    assert fmt(range(24), (4, 3, 2)) == (
        "[[[ 0.0000,  1.0000,  2.0000,  3.0000],\n"
        "  [ 4.0000,  5.0000,  6.0000,  7.0000],\n"
        "  [ 8.0000,  9.0000,  10.0000,  11.0000]],\n"
        "\n"
        " [[ 12.0000,  13.0000,  14.0000,  15.0000],\n"
        "  [ 16.0000,  17.0000,  18.0000,  19.0000],\n"
        "  [ 20.0000,  21.0000,  22.0000,  23.0000]]]"
    )


def test_leading_one_kept():
    # ggml [1, 3]: shape() is (1, 3), so numpy order (3, 1).
    assert fmt(range(3), (1, 3)) == ("[[ 0.0000],\n [ 1.0000],\n [ 2.0000]]")


def test_integers():
    assert fmt(range(6), (3, 2), integer=True) == ("[[ 0,  1,  2],\n [ 3,  4,  5]]")


def test_special_values():
    assert fmt([math.inf, -math.inf, math.nan, -0.0], (4,)) == "[ +Inf, -Inf,  NaN, -0.0000]"


def test_zero_element():
    assert format_array([], (0,), integer=False) == "[]"
    assert format_array([], (0,), integer=True) == "[]"


# Beyond the normative vectors: rules stated in prose.


def test_no_summary_at_threshold():
    # prod(shape) <= threshold: nothing is summarised.
    assert fmt(range(10), (10,), threshold=10, edge_items=1) == (
        "[ 0.0000,  1.0000,  2.0000,  3.0000,  4.0000,  5.0000,  6.0000,  7.0000,  8.0000,  9.0000]"
    )


def test_summary_only_along_long_dims():
    # threshold exceeded, but dim 1 (numpy axis 0) has 3 <= 2*edge_items rows: only rows elide.
    assert fmt(range(30), (10, 3), threshold=5, edge_items=2) == (
        "[[ 0.0000,  1.0000, ...,  8.0000,  9.0000],\n"
        " [ 10.0000,  11.0000, ...,  18.0000,  19.0000],\n"
        " [ 20.0000,  21.0000, ...,  28.0000,  29.0000]]"
    )


def test_summary_outer_dim_rank3():
    # The "..., " between rank-3 blocks is followed by two newlines and one space.
    text = fmt(range(16), (2, 1, 8), threshold=4, edge_items=1)
    assert text == ("[[[ 0.0000,  1.0000]],\n\n ..., \n\n [[ 14.0000,  15.0000]]]")


def test_ties_to_even_and_f32_value():
    # 0.125 is exact in F32: ties to even at 2 decimals.
    assert fmt([0.125, 0.375], (2,), precision=2) == "[ 0.12,  0.38]"
    # The F32 value of 0.1 is 0.100000001490116..., not the float64 0.1.
    assert fmt([0.1], (1,), precision=10) == "[ 0.1000000015]"
    assert fmt([1.5, 2.5], (2,), precision=0) == "[ 2,  2]"
    # Beyond the F32 range: infinity.
    assert fmt([1e39, -1e39], (2,)) == "[ +Inf, -Inf]"


def test_negative_zero_and_rounding_to_zero():
    assert fmt([-0.0, 0.0], (2,), precision=1) == "[-0.0,  0.0]"


def test_large_integers_exact():
    text = fmt([2**62 + 1, -(2**40)], (2,), integer=True)
    assert text == "[ 4611686018427387905, -1099511627776]"


@pytest.mark.parametrize("field", ["precision", "threshold", "edge_items"])
def test_negative_options_raise(field):
    with pytest.raises(ValueError, match=field):
        format_array([1.0], (1,), integer=False, **{field: -1})
    with pytest.raises(ValueError, match=field):
        DumpOptions(**{field: -1})


def test_dump_options_defaults_and_asdict():
    opts = DumpOptions()
    assert dataclasses.asdict(opts) == {"precision": 4, "threshold": 1000, "edge_items": 3}
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.precision = 2  # type: ignore[misc]


def test_wrong_value_count():
    with pytest.raises(ValueError):
        format_array([1.0, 2.0], (3,), integer=False)


# ``dump`` itself, on a stand-in tensor and context that follow the public API (§2.3, §2.4).


class FakeTensor:
    def __init__(self, values, ggml_shape, dtype, *, readable=True, convertible=True):
        self.values, self.ggml_shape, self._dtype = values, ggml_shape, dtype
        self.readable, self.convertible = readable, convertible

    def dtype(self):
        return self._dtype

    def shape(self):
        return self.ggml_shape

    def floats(self):
        import numpy as np

        from mlplug.errors import NotComputedError, UnsupportedOpError

        if not self.readable:
            raise NotComputedError("floats: not computed")
        if not self.convertible:
            raise UnsupportedOpError("floats: no conversion to F32")
        return np.asarray(self.values, dtype=np.float32)

    def numpy(self):
        import numpy as np

        from mlplug.errors import NotComputedError

        if not self.readable:
            raise NotComputedError("numpy: not computed")
        return np.asarray(self.values, dtype=np.int64).reshape(tuple(reversed(self.ggml_shape)))


class FakeContext:
    def __init__(self):
        self.calls = []

    def forward(self, *ts):
        self.calls.append(("forward", ts))
        return self

    def compute(self, *ts):
        self.calls.append(("compute", ts))
        for t in ts:
            t.readable = True


def test_dump_readable_float_tensor_is_not_recomputed():
    from mlplug.dtype import DType
    from mlplug.dump import dump

    ctx, t = FakeContext(), FakeTensor(range(6), (3, 2), DType.F32)
    assert dump(ctx, t) == "[[ 0.0000,  1.0000,  2.0000],\n [ 3.0000,  4.0000,  5.0000]]"
    assert ctx.calls == []


def test_dump_computes_unreadable_tensor():
    from mlplug.dtype import DType
    from mlplug.dump import dump

    ctx, t = FakeContext(), FakeTensor([1.5, -2.0], (2,), DType.F32, readable=False)
    assert dump(ctx, t, precision=1) == "[ 1.5, -2.0]"
    assert ctx.calls == [("forward", (t,)), ("compute", (t,))]


@pytest.mark.parametrize("dtype_name", ["I8", "I16", "I32", "I64"])
def test_dump_integer_dtypes_print_integers(dtype_name):
    from mlplug.dtype import DType
    from mlplug.dump import dump

    t = FakeTensor([0, -1, 2**31 - 1], (3,), DType[dtype_name])
    assert dump(FakeContext(), t) == "[ 0, -1,  2147483647]"


def test_dump_unsupported_dtype():
    from mlplug.dtype import DType
    from mlplug.dump import dump

    t = FakeTensor([0.0] * 32, (32,), DType.IQ2_XXS, convertible=False)
    assert dump(FakeContext(), t) == "<unsupported>"
    t = FakeTensor([0.0] * 32, (32,), DType.IQ2_XXS, readable=False, convertible=False)
    assert dump(FakeContext(), t) == "<unsupported>"


def test_dump_options_pass_through_and_negative():
    from mlplug.dtype import DType
    from mlplug.dump import dump

    t = FakeTensor(range(10), (10,), DType.F32)
    opts = DumpOptions(precision=1, threshold=5, edge_items=1)
    assert dump(FakeContext(), t, **dataclasses.asdict(opts)) == "[ 0.0, ...,  9.0]"
    with pytest.raises(ValueError):
        dump(FakeContext(), t, edge_items=-1)
