"""Every op family on the MLX device, against the CPU plugin's kernels on the same bytes.

The CPU plugin is checked against the conformance reference; here each case builds identical
operands (often strided views, block dtypes, tiling and grouped-query shapes) on both devices
and compares: bit-exact for exact ops and conversions, within a few F32 ulps otherwise. The
SEMANTICS worked examples are checked with their exact values as well.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mlplug.device import OPS, DType, Node, TensorRef, category

pytest.importorskip(
    "mlx.core", reason="MLX is not installed (pip install 'mlx[cpu]')", exc_type=ImportError
)

Build = Callable[[Any], tuple[str, tuple[TensorRef | None, ...], dict[str, Any]]]


def _rand(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _ids(seed: int, high: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape).astype(np.int32)


def _case(op: str, *srcs: Callable[[Any], TensorRef | None], **params: Any) -> Build:
    def build(h: Any) -> tuple[str, tuple[TensorRef | None, ...], dict[str, Any]]:
        return op, tuple(s(h) for s in srcs), params

    return build


def _t(
    seed: int, *ne: int, dtype: DType = DType.F32, scale: float = 1.0
) -> Callable[[Any], TensorRef]:
    return lambda h: h.tensor(_rand(seed, *ne, scale=scale), *ne, dtype=dtype)


def _perm(src: Callable[[Any], TensorRef], *axes: int) -> Callable[[Any], TensorRef]:
    return lambda h: h.permuted(src(h), *axes)


def _i(seed: int, high: int, *ne: int) -> Callable[[Any], TensorRef]:
    return lambda h: h.tensor(_ids(seed, high, *ne), *ne, dtype=DType.I32)


CASES: dict[str, Build] = {}
for _op in (op for op in category("unary") if not OPS[op].params):
    CASES[f"{_op}/f32-permuted"] = _case(_op, _perm(_t(1, 5, 7, 3), 1, 0, 2, 3))
    CASES[f"{_op}/f16"] = _case(_op, _t(2, 33, 4, dtype=DType.F16))
CASES["scale/bf16"] = _case("scale", _t(3, 31, 3, dtype=DType.BF16), s=0.37)
CASES["clamp/f32"] = _case("clamp", _t(4, 17, 5), lo=-0.5, hi=0.25)
for _op in ("add", "sub", "mul", "div"):
    CASES[f"{_op}/tiled"] = _case(_op, _t(5, 6, 4, 3), _t(6, 3, 2, 1))
    CASES[f"{_op}/f16-with-bf16-strided"] = _case(
        _op, _t(7, 8, 3, dtype=DType.F16), _perm(_t(8, 3, 8, dtype=DType.BF16), 1, 0, 2, 3)
    )
CASES.update(
    {
        "softmax/f32": _case("softmax", _t(10, 33, 5, scale=4.0)),
        "softmax/f16-permuted": _case("softmax", _perm(_t(11, 4, 9, dtype=DType.F16), 1, 0, 2, 3)),
        "layer_norm/w-b": _case(
            "layer_norm", _t(12, 16, 3, 2), _t(13, 16), _t(14, 16, 3), eps=1e-5
        ),
        "layer_norm/bias-only": _case(
            "layer_norm", _t(15, 8, 4), lambda h: None, _t(16, 8), eps=1e-3
        ),
        "rms_norm/w": _case("rms_norm", _t(17, 32, 4), _t(18, 32), eps=1e-6),
        "rms_norm/none-f16": _case(
            "rms_norm", _t(19, 31, 3, dtype=DType.F16), lambda h: None, eps=0.0
        ),
        "sum_rows/bf16": _case("sum_rows", _t(20, 40, 3, dtype=DType.BF16)),
        "mean/permuted": _case("mean", _perm(_t(21, 7, 6), 1, 0, 2, 3)),
        "variance/f32": _case("variance", _t(22, 9, 4, 2)),
        "stddev/f16": _case("stddev", _t(23, 12, 3, dtype=DType.F16)),
        "argsort/f32": _case("argsort", _t(24, 37, 3)),
        "topk/f32": _case("topk", _t(25, 37, 3), k=5),
        "contiguous/permuted-f16": _case(
            "contiguous", _perm(_t(26, 2, 3, 5, dtype=DType.F16), 2, 0, 1, 3)
        ),
        "duplicate/q8_0": _case("duplicate", _t(27, 64, 3, dtype=DType.Q8_0)),
        "duplicate/q4_0-rows-view": _case(
            "duplicate",
            lambda h: h.view(
                h.tensor(_rand(28, 64, 4), 64, 4, dtype=DType.Q4_0), 36, (64, 2), (18, 72)
            ),
        ),
        "duplicate/zero-stride-view": _case(
            "duplicate", lambda h: h.view(h.tensor(np.arange(12), 4, 3), 8, (2, 3), (4, 0))
        ),
        "copy/f32-to-f16-strided": _case(
            "copy",
            _t(29, 4, 2, 3),
            lambda h: h.view(h.empty(DType.F16, 4, 2, 8), 2 * 8 * 2, (4, 2, 3), (2, 8, 16)),
        ),
        "copy/f32-to-q8_0": _case("copy", _t(30, 64, 2), lambda h: h.empty(DType.Q8_0, 128)),
        "copy/f32-to-q4_0": _case(
            "copy", _t(31, 32, 3, scale=3.0), lambda h: h.empty(DType.Q4_0, 96)
        ),
        "copy/q8_0-to-f32": _case(
            "copy", _t(32, 64, dtype=DType.Q8_0), lambda h: h.empty(DType.F32, 64)
        ),
        "copy/f32-to-bf16-permuted-v": _case(
            "copy",
            _perm(_t(33, 4, 2, 3), 1, 2, 0, 3),
            lambda h: h.view(h.empty(DType.BF16, 8, 4, 2), 2 * 2, (3, 4, 2), (2, 16, 64)),
        ),
        "set/stride": _case(
            "set",
            lambda h: h.tensor(np.zeros(12), 4, 3),
            lambda h: h.tensor([1, 2, 3, 4], 2, 2),
            offset=4,
            strides=(16,),
        ),
        "set/i32-wrap": _case(
            "set",
            lambda h: h.tensor(np.zeros(12), 4, 3, dtype=DType.I32),
            lambda h: h.tensor([7, 8, 9], 3, dtype=DType.I32),
            offset=8,
            strides=(),
        ),
        "pad/f16": _case("pad", _t(34, 2, 3, dtype=DType.F16), pads=(1, 2, 0, 1)),
        "concat/dim1": _case("concat", _t(35, 2, 3), _t(36, 2, 1), dim=1),
        "stack/dim0-i32": _case("stack", _i(37, 9, 3), _i(38, 9, 3), _i(39, 9, 3), dim=0),
        "repeat/bf16": _case("repeat", _t(40, 2, 3, dtype=DType.BF16), dim=0, n=3),
        "rows/f16-batched": _case("rows", _t(41, 2, 4, 2, dtype=DType.F16), _i(42, 4, 3, 2)),
        "rows/q4_0": _case("rows", _t(43, 32, 5, dtype=DType.Q4_0), _i(44, 5, 4)),
        "rows/i32": _case("rows", _i(45, 100, 3, 4), _i(46, 4, 2)),
        "rows/i8": _case("rows", _t(47, 5, 4, dtype=DType.I8, scale=50.0), _i(48, 4, 3)),
        "contiguous/i8-permuted": _case(
            "contiguous", _perm(_t(49, 3, 4, dtype=DType.I8, scale=50.0), 1, 0, 2, 3)
        ),
        "arange/f32": _case("arange", start=0.0, stop=1.0, step=0.3, dtype=DType.F32),
        "arange/i32-negative": _case("arange", start=5.0, stop=-3.0, step=-1.5, dtype=DType.I32),
        "mulmat/f32-gqa": _case("mulmat", _t(50, 8, 5, 2), _t(51, 8, 3, 4)),
        "mulmat/f16-blockrepeat": _case(
            "mulmat", _t(52, 8, 4, 3, 2, dtype=DType.F16), _t(53, 8, 5, 6, 4)
        ),
        "mulmat/bf16-strided": _case(
            "mulmat",
            _perm(_t(54, 8, 2, 6, dtype=DType.BF16), 0, 2, 1, 3),
            _perm(_t(55, 8, 4, 3), 0, 2, 1, 3),
        ),
        "mulmat/q8_0-raw": _case("mulmat", _t(56, 64, 7, dtype=DType.Q8_0), _t(57, 64, 3)),
        "mulmat/q4_0-raw": _case("mulmat", _t(58, 96, 5, 2, dtype=DType.Q4_0), _t(59, 96, 3, 4)),
        "mulmat_full_prec/f16": _case(
            "mulmat_full_prec", _t(60, 16, 9, dtype=DType.F16), _t(61, 16, 4)
        ),
        "mulmat_id/f32": _case("mulmat_id", _t(62, 8, 3, 5), _t(63, 8, 1, 4), _i(64, 5, 2, 4)),
        "mulmat_id/q8_0-nb2": _case(
            "mulmat_id", _t(65, 32, 6, 4, dtype=DType.Q8_0), _t(66, 32, 2, 3), _i(67, 4, 4, 3)
        ),
        "conv_2d/f16-stride-dilation": _case(
            "conv_2d",
            _t(70, 3, 2, 3, 4, dtype=DType.F16),
            _t(71, 11, 9, 3, 2),
            s0=2,
            s1=1,
            p0=1,
            p1=2,
            d0=1,
            d1=2,
        ),
        "im2col/f32": _case(
            "im2col", _t(72, 3, 3, 2, 1), _t(73, 7, 6, 2, 2), s0=1, s1=2, p0=1, p1=0, d0=2, d1=1
        ),
        "avg_pool_2d/f32": _case("avg_pool_2d", _t(74, 9, 8, 3, 2), k=3, s=2, p=1),
    }
)


def _attention(permuted: bool, cache: DType, mask: bool) -> Build:
    dk, dv, heads, kv_heads, tokens, length = 32, 32, 4, 2, 3, 7

    def build(h: Any) -> tuple[str, tuple[TensorRef | None, ...], dict[str, Any]]:
        q = h.tensor(_rand(80, tokens, heads, dk), dk, heads, tokens)
        k = h.tensor(_rand(81, length, kv_heads, dk), dk, kv_heads, length, dtype=cache)
        if permuted:
            v = h.tensor(_rand(82, kv_heads, dv, length), length, dv, kv_heads, dtype=cache)
        else:
            v = h.tensor(_rand(82, length, kv_heads, dv), dv, kv_heads, length, dtype=cache)
        m = None
        if mask:
            values = np.zeros((tokens + 1, length), np.float32)
            values[np.triu_indices(tokens + 1, length - tokens + 1, length)] = -np.inf
            m = h.tensor(values, length, tokens + 1, dtype=DType.F16)
        return (
            "scaled_dot_product_attention",
            (q, k, v, m),
            {"scale": 1 / np.sqrt(dk), "permuted_v": permuted},
        )

    return build


CASES["attention/f16-permuted-mask"] = _attention(True, DType.F16, True)
CASES["attention/f32-standard"] = _attention(False, DType.F32, False)
CASES["attention/q8_0-standard-mask"] = _attention(False, DType.Q8_0, True)


def _run(h: Any, build: Build) -> tuple[TensorRef, np.ndarray]:
    op, srcs, params = build(h)
    if OPS[op].kind == "copy":
        dst = srcs[1]
        assert dst is not None
        h.device.execute([Node(op, dst, srcs, {})])
        h.device.synchronize()
        return dst, h.values(dst)
    out = h.run(op, *srcs, **params)
    return out, h.values(out)


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_result_as_the_cpu_plugin(name: str, h: Any, cpu_h: Any) -> None:
    out, got = _run(h, CASES[name])
    ref_out, want = _run(cpu_h, CASES[name])
    assert (out.ne, out.dtype) == (ref_out.ne, ref_out.dtype)
    op = "scaled_dot_product_attention" if name.startswith("attention") else name.split("/")[0]
    if OPS[op].tolerance.exact or out.dtype == DType.I32 or op in ("copy", "set"):
        if op in ("argsort", "topk"):
            assert sorted(got.tolist()) == sorted(want.tolist())  # ties may order differently
        else:
            assert h.bytes(out) == cpu_h.bytes(ref_out)
        return
    np.testing.assert_allclose(
        got,
        want,
        rtol=2e-5 if out.dtype == DType.F32 else 1e-2,
        atol=1e-5 if out.dtype == DType.F32 else 1e-2,
    )


# -- SEMANTICS worked examples ---------------------------------------------------------------


def test_binary_tiling_example(h: Any) -> None:
    a = h.tensor(np.arange(12), 6, 2)
    assert h.values(h.run("add", a, h.tensor([100, 200, 300], 3))).tolist() == [
        100,
        201,
        302,
        103,
        204,
        305,
        106,
        207,
        308,
        109,
        210,
        311,
    ]


def test_mulmat_examples(h: Any) -> None:
    out = h.run("mulmat", h.tensor(np.arange(20), 4, 5), h.tensor(np.arange(120), 4, 3, 10))
    assert out.ne == (5, 3, 10, 1)
    assert h.values(out)[:10].tolist() == [14, 38, 62, 86, 110, 38, 126, 214, 302, 390]


def test_mulmat_id_example(h: Any) -> None:
    b = np.zeros((2, 1, 4), np.float32)
    b[0, 0, 0] = b[1, 0, 1] = 1
    out = h.run(
        "mulmat_id",
        h.tensor(np.arange(60), 4, 3, 5),
        h.tensor(b, 4, 1, 2),
        h.tensor([4, 1, 0, 4], 2, 2, dtype=DType.I32),
    )
    assert h.values(out).tolist() == [48, 52, 56, 12, 16, 20, 1, 5, 9, 49, 53, 57]


def test_rows_and_set_examples(h: Any) -> None:
    out = h.run(
        "rows",
        h.tensor(np.arange(16), 2, 4, 2),
        h.tensor([3, 0, 1, 1, 1, 2], 3, 2, dtype=DType.I32),
    )
    assert h.values(out).tolist() == [6, 7, 0, 1, 2, 3, 10, 11, 10, 11, 12, 13]
    out = h.run("set", h.tensor(np.zeros(12), 4, 3), h.tensor([7, 8, 9], 3), offset=8, strides=())
    assert h.values(out).tolist() == [0, 0, 7, 8, 9, 0, 0, 0, 0, 0, 0, 0]


def test_out_of_range_ids_stay_inside_the_operand(h: Any) -> None:
    # SEMANTICS §5.4: no crash and no read outside the table; the columns are unspecified.
    out = h.run("rows", h.tensor(np.arange(12), 3, 4), h.tensor([2, 99, -5], 3, dtype=DType.I32))
    values = h.values(out)
    assert values[:3].tolist() == [6, 7, 8] and set(values[3:]) <= set(range(12))


def test_f16_conversion_keeps_nan_quiet_and_rounds_to_even(h: Any) -> None:
    x = h.tensor(np.array([np.nan, np.inf, -70000.0, 1.0 + 2**-11, 65519.0], np.float32), 5)
    dst = h.empty(DType.F16, 5)
    h.device.execute([Node("copy", dst, (x, dst), {})])
    want = np.array([np.nan, np.inf, -70000.0, 1.0 + 2**-11, 65519.0], np.float32)
    with np.errstate(over="ignore"):
        assert h.bytes(dst) == want.astype(np.float16).tobytes()
