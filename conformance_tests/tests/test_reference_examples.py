"""The float64 reference reproduces every worked example of SEMANTICS §4.3 and §5 exactly.

No backend is involved: operands are logical values, layouts come from the ops table, and
results are compared as float64 (rounded to the result dtype where the example lists stored
values, e.g. ``arange`` to I32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from mlplug.dtype import DType
from mlplug.ops import OPS, Meta
from mlplug_conformance import convert
from mlplug_conformance.reference import evaluate, numpy_shape

F32, I32 = DType.F32, DType.I32
INF = math.inf


def t(values: Sequence[float], *ne: int, dtype: DType = F32) -> tuple[Meta, np.ndarray]:
    """An operand: ggml shape ``ne`` holding flat ``values`` (dim 0 fastest)."""
    meta = Meta.fresh(dtype, ne)
    arr = np.asarray(values, dtype=np.int64 if convert.is_int(dtype) else np.float64)
    return meta, arr.reshape(numpy_shape(meta.ne))


def ref(
    op: str, *operands: tuple[Meta, np.ndarray] | None, **params: Any
) -> tuple[tuple[int, ...], list[float]]:
    """Return the result's ``shape()`` and flat values (rounded to the result dtype)."""
    metas = [None if o is None else o[0] for o in operands]
    result = OPS[op].infer(metas, params)
    out = evaluate(op, [None if o is None else o[1] for o in operands], result.params, result.meta)
    out = convert.round_to(out, result.meta.dtype)
    ne = result.meta.ne
    k = max((i for i in range(4) if ne[i] > 1), default=0) + 1
    return (0,) if ne[0] == 0 else tuple(ne[:k]), out.reshape(-1).tolist()


def r(n: int) -> list[float]:
    return list(range(n))


# §4.3 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "dtype", "want"),
    [
        ((0, 5, 2), F32, [0, 2, 4]),
        ((0, 1, 0.25), I32, [0, 0, 0, 0]),
        ((5, 0, -2), F32, [5, 3, 1]),
        ((0, 1, 0.3), F32, [0, np.float32(0.3), np.float32(0.6), np.float32(0.9)]),
    ],
)
def test_arange(args: tuple[float, float, float], dtype: DType, want: list[float]) -> None:
    start, stop, step = args
    shape, values = ref("arange", start=start, stop=stop, step=step, dtype=dtype)
    assert shape == (len(want),)
    assert values == [float(np.float32(w)) for w in want]


def test_arange_empty() -> None:
    assert ref("arange", start=3, stop=3, step=1, dtype=I32) == ((0,), [])


# §5.2 ------------------------------------------------------------------------------------------


def test_add_tiles_three_over_six() -> None:
    assert ref("add", t(r(12), 6, 2), t([100, 200, 300], 3)) == (
        (6, 2),
        [100, 201, 302, 103, 204, 305, 106, 207, 308, 109, 210, 311],
    )


def test_add_broadcasts_rows() -> None:
    assert ref("add", t(r(12), 6, 2), t([100, 200], 1, 2))[1] == [
        *range(100, 106),
        *range(206, 212),
    ]


# §5.3, §5.5 ------------------------------------------------------------------------------------


def test_softmax() -> None:
    _, values = ref("softmax", t([1, 2, 3], 3))
    assert np.round(values, 4).tolist() == [0.09, 0.2447, 0.6652]


@pytest.mark.parametrize(
    ("op", "want"),
    [
        ("mean", [2, 6]),
        ("sum_rows", [6, 18]),
        ("variance", [0.6667, 2.6667]),
        ("stddev", [0.8165, 1.6330]),
    ],
)
def test_row_reductions(op: str, want: list[float]) -> None:
    shape, values = ref(op, t([1, 2, 3, 4, 6, 8], 3, 2))
    assert shape == (1, 2)
    assert np.round(values, 4).tolist() == want


def test_rms_norm() -> None:
    _, values = ref("rms_norm", t([1, 2, 3, 4], 4), None, eps=1e-6)
    assert np.round(values, 4).tolist() == [0.3651, 0.7303, 1.0954, 1.4606]


def test_layer_norm() -> None:
    _, values = ref("layer_norm", t([1, 2, 3, 4], 4), None, None, eps=1e-5)
    assert np.round(values, 4).tolist() == [-1.3416, -0.4472, 0.4472, 1.3416]


def test_layer_norm_bias_without_weight_is_applied() -> None:
    _, values = ref("layer_norm", t([1, 2, 3, 4], 4), None, t([10], 1), eps=1e-5)
    assert np.round(values, 4).tolist() == [8.6584, 9.5528, 10.4472, 11.3416]


def test_empty_rows_follow_the_formulas() -> None:
    assert ref("sum_rows", t([], 0)) == ((1,), [0.0])
    assert math.isnan(ref("mean", t([], 0))[1][0])


def test_gelu_is_the_tanh_form() -> None:
    x = 1.5
    want = 0.5 * x * (1 + math.tanh(0.7978845608 * x * (1 + 0.044715 * x * x)))
    assert ref("gelu", t([x], 1))[1] == [float(np.float32(want))]


def test_clamp_lo_wins() -> None:
    assert ref("clamp", t([-2, 0, 2], 3), lo=0.5, hi=-0.5)[1] == [0.5, 0.5, 0.5]


def test_sqrt_of_negative_is_nan() -> None:
    assert math.isnan(ref("sqrt", t([-1.0], 1))[1][0])


# §5.4 ------------------------------------------------------------------------------------------


def test_mulmat_examples() -> None:
    assert ref("mulmat", t([0, 1, 2], 3), t([0, 1, 2], 3)) == ((1,), [5])
    assert ref("mulmat", t(r(4), 4), t(r(12), 4, 3)) == ((1, 3), [14, 38, 62])
    shape, values = ref("mulmat", t(r(20), 4, 5), t(r(120), 4, 3, 10))
    assert shape == (5, 3, 10)
    assert values[:10] == [14, 38, 62, 86, 110, 38, 126, 214, 302, 390]


def test_mulmat_gqa_block_repeat() -> None:
    # k [2, 5, 2] (2 KV heads) x q [2, 3, 4] (4 query heads): heads 0, 1 use KV head 0.
    k = np.arange(20, dtype=np.float64)
    q = np.ones(24)
    shape, values = ref("mulmat", t(k, 2, 5, 2), t(q, 2, 3, 4))
    assert shape == (5, 3, 4)
    out = np.asarray(values).reshape(4, 3, 5)
    kv = k.reshape(2, 5, 2).sum(axis=-1)  # per KV head, per row m
    for h in range(4):
        assert out[h, 0].tolist() == kv[h // 2].tolist()


def test_mulmat_id_example() -> None:
    b = [1, 0, 0, 0, 0, 1, 0, 0]
    assert ref("mulmat_id", t(r(60), 4, 3, 5), t(b, 4, 1, 2), t([4, 1, 0, 4], 2, 2, dtype=I32)) == (
        (3, 2, 2),
        [48, 52, 56, 12, 16, 20, 1, 5, 9, 49, 53, 57],
    )


def test_mulmat_id_out_of_range_raises_index_error() -> None:
    with pytest.raises(IndexError):
        ref("mulmat_id", t(r(60), 4, 3, 5), t(r(8), 4, 1, 2), t([5, 0, 0, 0], 2, 2, dtype=I32))


# §5.6 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "args", "shape", "want"),
    [
        (16, (4,), (4,), [4, 5, 6, 7]),
        (4, (2, 16, 3), (2, 3), [1, 2, 5, 6, 9, 10]),
        (0, (2, 8, 2, 16, 3), (2, 2, 3), r(12)),
    ],
)
def test_view_examples(
    offset: int, args: tuple[int, ...], shape: tuple[int, ...], want: list[float]
) -> None:
    assert ref("view", t(r(12), 4, 3), offset=offset, args=args) == (shape, want)


def test_view_kv_cache_cells() -> None:
    cache = np.arange(128 * 8 * 16, dtype=np.float64) % 1000
    shape, values = ref(
        "view", t(cache, 128, 8, 16, dtype=DType.F16), offset=2048 * 5, args=(128, 256, 8, 2048, 3)
    )
    assert shape == (128, 8, 3)
    assert values == cache.reshape(16, 8, 128)[5:8].reshape(-1).tolist()


def test_view_of_block_dtype_counts_blocks() -> None:
    # Q8_0 [64, 2]: nb = [34, 68, 136, 136]; the second row is 2 blocks further.
    values = convert.round_to(np.arange(128, dtype=np.float64) % 50, DType.Q8_0)
    assert (
        ref("view", t(values, 64, 2, dtype=DType.Q8_0), offset=68, args=(64,))[1]
        == values[64:].tolist()
    )


@pytest.mark.parametrize(
    ("ne", "axes", "shape", "head"),
    [
        ((3, 2), (1, 0, 2, 3), (2, 3), [0, 3, 1, 4, 2, 5]),
        ((2, 3, 5), (2, 0, 1, 3), (3, 5, 2), [0, 2, 4, 6, 8, 10]),
    ],
)
def test_permute_examples(
    ne: tuple[int, ...], axes: tuple[int, ...], shape: tuple[int, ...], head: list[float]
) -> None:
    got_shape, values = ref("permute", t(r(int(np.prod(ne))), *ne), axes=axes)
    assert got_shape == shape
    assert values[: len(head)] == head


def test_permute_second_half() -> None:
    _, values = ref("permute", t(r(30), 2, 3, 5), axes=(2, 0, 1, 3))
    assert values[15:18] == [1, 3, 5]


def test_permute_0213_swaps_dims_1_and_2() -> None:
    shape, _ = ref("permute", t(r(24), 2, 3, 4), axes=(0, 2, 1, 3))
    assert shape == (2, 4, 3)


def test_reshape_is_c_order() -> None:
    assert ref("reshape", t(r(12), 4, 3), shape=(2, 6)) == ((2, 6), r(12))


def test_copy_converts_and_reshapes() -> None:
    dst = Meta.fresh(DType.F16, (3, 2)), np.zeros((1, 1, 2, 3))
    assert ref("copy", t([0.1, 1, 2, 3, 4, 65520], 6), dst)[1] == [
        float(np.float16(0.1)),
        1,
        2,
        3,
        4,
        INF,
    ]


# §5.7 ------------------------------------------------------------------------------------------


def test_set_examples() -> None:
    zeros = t([0] * 12, 4, 3)
    assert ref("set", zeros, t([1, 2, 3, 4], 2, 2), offset=4, strides=(16,))[1] == [
        0,
        1,
        2,
        0,
        0,
        3,
        4,
        0,
        0,
        0,
        0,
        0,
    ]
    assert ref("set", zeros, t([7, 8, 9], 3), offset=8, strides=())[1] == [
        0,
        0,
        7,
        8,
        9,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]


def test_pad_examples() -> None:
    assert ref("pad", t(r(6), 2, 3), pads=(1, 2, 0, 0)) == (
        (3, 5),
        [0, 1, 0, 2, 3, 0, 4, 5, 0, 0, 0, 0, 0, 0, 0],
    )
    assert ref("pad", t(r(6), 2, 3), pads=(0, 0, 0, 1)) == ((2, 3, 1, 2), [*r(6), *[0] * 6])


def test_concat_examples() -> None:
    assert ref("concat", t(r(6), 2, 3), t([10, 11], 2, 1), dim=1) == ((2, 4), [*r(6), 10, 11])
    assert ref("concat", t(r(6), 2, 3), t([20, 21, 22], 1, 3), dim=0) == (
        (3, 3),
        [0, 1, 20, 2, 3, 21, 4, 5, 22],
    )


def test_stack_examples() -> None:
    vs = [t([1, 2, 3], 3), t([4, 5, 6], 3), t([7, 8, 9], 3)]
    assert ref("stack", *vs, dim=1) == ((3, 3), list(range(1, 10)))
    assert ref("stack", *vs, dim=0) == ((9,), list(range(1, 10)))
    assert ref("stack", vs[0], dim=0) == ((3,), [1, 2, 3])


def test_repeat_examples() -> None:
    assert ref("repeat", t(r(6), 2, 3), dim=0, n=2) == (
        (4, 3),
        [0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5],
    )
    assert ref("repeat", t(r(6), 2, 3), dim=1, n=2) == ((2, 6), [*r(6), *r(6)])


def test_rows_examples() -> None:
    assert ref("rows", t(r(12), 3, 4), t([2, 0, 2], 3, dtype=I32)) == (
        (3, 3),
        [6, 7, 8, 0, 1, 2, 6, 7, 8],
    )
    assert ref("rows", t(r(16), 2, 4, 2), t([3, 0, 1, 1, 1, 2], 3, 2, dtype=I32)) == (
        (2, 3, 2),
        [6, 7, 0, 1, 2, 3, 10, 11, 10, 11, 12, 13],
    )


def test_set_rows_examples() -> None:
    zeros = t([0] * 8, 2, 4)
    assert ref("set_rows", t([1, 2, 3, 4], 2, 2), zeros, t([3, 0], 2, dtype=I32)) == (
        (2, 4),
        [3, 4, 0, 0, 0, 0, 1, 2],
    )
    assert ref("set_rows", t(r(7)[1:], 2, 3), zeros, t([1, 1, 2], 3, dtype=I32)) == (
        (2, 4),
        [0, 0, 3, 4, 5, 6, 0, 0],
    )


def test_rows_keeps_i32() -> None:
    shape, values = ref("rows", t([5, 6, 7, 8], 2, 2, dtype=I32), t([1], 1, dtype=I32))
    assert (shape, values) == ((2,), [7, 8])


# §5.8 ------------------------------------------------------------------------------------------


def test_argsort_example() -> None:
    assert ref("argsort", t([3, 1, 4, 1, 5], 5))[1] in ([1, 3, 0, 2, 4], [3, 1, 0, 2, 4])


def test_topk_example() -> None:
    assert ref("topk", t([0.1, 0.9, 0.5, 0.3, 4, 3, 2, 1], 4, 2), k=2) == ((2, 2), [1, 2, 0, 1])


# §5.9 ------------------------------------------------------------------------------------------


def test_conv_2d_example_shape() -> None:
    kernel = t(np.ones(3 * 3 * 3 * 16), 3, 3, 3, 16)
    image = t(np.ones(32 * 24 * 3), 32, 24, 3, 1)
    p = {"s0": 1, "s1": 1, "p0": 1, "p1": 1, "d0": 1, "d1": 1}
    shape, values = ref("conv_2d", kernel, image, **p)
    assert shape == (32, 24, 16)
    out = np.asarray(values).reshape(16, 24, 32)
    assert out[0, 0, 0] == 12  # a corner sees 2x2 of the 3x3 window, 3 channels
    assert out[0, 5, 5] == 27
    assert ref("im2col", kernel, image, **p)[0] == (27, 32, 24)


def test_conv_2d_equals_mulmat_of_im2col() -> None:
    rng = np.random.default_rng(0)
    kernel = t(rng.normal(size=2 * 3 * 2 * 4), 2, 3, 2, 4)
    image = t(rng.normal(size=7 * 6 * 2 * 2), 7, 6, 2, 2)
    p = {"s0": 2, "s1": 1, "p0": 1, "p1": 2, "d0": 1, "d1": 2}
    shape, conv = ref("conv_2d", kernel, image, **p)
    cshape, cols = ref("im2col", kernel, image, **p)
    flat = t(kernel[1].reshape(-1), 12, 4)
    _, prod = ref("mulmat", flat, t(cols, *cshape))  # [OC, OW, OH, N]
    ow, oh, oc, n = shape
    via = np.asarray(prod).reshape(n, oh, ow, oc).transpose(0, 3, 1, 2).reshape(-1)
    assert np.allclose(via, conv, rtol=1e-6, atol=1e-6)  # both rounded to F32


def test_avg_pool_counts_padding() -> None:
    shape, values = ref("avg_pool_2d", t([4.0] * 4, 2, 2), k=2, s=2, p=1)
    assert shape == (2, 2)
    assert values == [1.0, 1.0, 1.0, 1.0]


# §8.7 ------------------------------------------------------------------------------------------


def _attention_unfused(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, m: np.ndarray, scale: float
) -> np.ndarray:
    """The equivalent un-fused graph of §8.7 with the reference's own mulmat/softmax."""
    tokens, heads, dk = q.shape[1:]
    length, hkv = k.shape[1], k.shape[2]
    qm = t(q.reshape(-1), dk, heads, tokens)
    qp = ref("permute", qm, axes=(0, 2, 1, 3))[1]
    kp = ref("permute", t(k.reshape(-1), dk, hkv, length), axes=(0, 2, 1, 3))[1]
    _, kq = ref("mulmat", t(kp, dk, length, hkv), t(qp, dk, tokens, heads))
    kq = np.asarray(kq).reshape(heads, tokens, length) * scale + m.reshape(-1, length)[:tokens]
    e = np.exp(kq - kq.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    vv = v.reshape(length, hkv, -1)  # numpy of [Dv, Hkv, L]
    g = heads // hkv
    out = np.einsum("htl,hld->thd", p, np.repeat(vv.transpose(1, 0, 2), g, axis=0))
    return out.reshape(-1)


@pytest.mark.parametrize("permuted_v", [False, True])
def test_attention_matches_the_unfused_graph(permuted_v: bool) -> None:
    rng = np.random.default_rng(1)
    dk, dv, heads, hkv, length, tokens = 8, 4, 4, 2, 5, 3
    q = rng.normal(size=(1, tokens, heads, dk))
    k = rng.normal(size=(1, length, hkv, dk))
    v = rng.normal(size=(1, length, hkv, dv))
    m = rng.normal(size=(1, 1, tokens + 1, length))
    m[0, 0, 1, 3] = -INF
    value = (
        t(v.transpose(0, 2, 3, 1).reshape(-1), length, dv, hkv)
        if permuted_v
        else t(v.reshape(-1), dv, hkv, length)
    )
    shape, out = ref(
        "scaled_dot_product_attention",
        t(q.reshape(-1), dk, heads, tokens),
        t(k.reshape(-1), dk, hkv, length),
        value,
        t(m.reshape(-1), length, tokens + 1),
        scale=0.3,
        permuted_v=permuted_v,
    )
    assert shape == (dv, heads, tokens)
    assert np.allclose(out, _attention_unfused(q, k, v, m, 0.3), rtol=1e-6, atol=1e-7)
