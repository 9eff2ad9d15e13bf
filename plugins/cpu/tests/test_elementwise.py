"""Unary and tiled binary ops (SEMANTICS §5.2-§5.3), dtypes and strided operands."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from mlplug.device import OPS, DType, Meta, category
from mlplug_conformance.reference import evaluate

RNG = np.random.default_rng(0)


def _bf16(values: np.ndarray) -> np.ndarray:
    """F32 values rounded through BF16 by gguf (an independent reference)."""
    q = gguf.quants.quantize(
        values.astype(np.float32).reshape(1, -1), gguf.GGMLQuantizationType.BF16
    )
    return (q.view(np.uint16).astype(np.uint32) << 16).view(np.float32).ravel()


def test_add_tiles_b_over_a(h) -> None:
    a = h.tensor(np.arange(12), 6, 2)
    out = h.run("add", a, h.tensor([100, 200, 300], 3))
    assert h.values(out).tolist() == [100, 201, 302, 103, 204, 305, 106, 207, 308, 109, 210, 311]
    out = h.run("add", a, h.tensor([100, 200], 1, 2))
    assert h.values(out).tolist() == [*range(100, 106), *range(206, 212)]


def test_bias_of_a_linear_layer(h) -> None:
    x = RNG.standard_normal((5, 8)).astype(np.float32)  # [8, 5]: 5 tokens
    bias = RNG.standard_normal(8).astype(np.float32)
    out = h.run("add", h.tensor(x, 8, 5), h.tensor(bias, 8))
    np.testing.assert_array_equal(h.array(out)[0, 0], x + bias)


def _reference(op: str, out, *srcs: np.ndarray, **params) -> np.ndarray:
    """The conformance reference's float64 result for ``op``, shaped like ``out``'s values."""
    meta = Meta(out.ne, out.nb, out.dtype, 0, 0)
    return evaluate(op, [s.astype(np.float64) for s in srcs], params, meta)


@pytest.mark.parametrize("op", category("binary"))
def test_binary_tiling_in_every_dim(h, op) -> None:
    a = RNG.standard_normal((4, 6, 3, 8)).astype(np.float32)  # ggml [8, 3, 6, 4]
    b = RNG.standard_normal((2, 3, 1, 4)).astype(np.float32) + 3  # ggml [4, 1, 3, 2]
    out = h.run(op, h.tensor(a, 8, 3, 6, 4), h.tensor(b, 4, 1, 3, 2))
    # +, -, *, / of F32 values in float64, rounded once to F32, are the correctly rounded results.
    expected = _reference(op, out, a, b).astype(np.float32)
    np.testing.assert_array_equal(h.array(out), expected)


def test_binary_on_permuted_operands(h) -> None:
    base = RNG.standard_normal((5, 3)).astype(np.float32)  # ggml [3, 5]
    a = h.permuted(h.tensor(base, 3, 5), 1, 0, 2, 3)  # ggml [5, 3] view, numpy base.T
    b = h.permuted(h.tensor(np.arange(5.0), 1, 5), 1, 0, 2, 3)  # [5, 1] strided
    out = h.run("mul", a, b)
    np.testing.assert_array_equal(h.array(out)[0, 0], base.T * np.arange(5.0, dtype=np.float32))


def test_mixed_float_dtypes_round_once(h) -> None:
    x = RNG.standard_normal(64).astype(np.float32)
    y = RNG.standard_normal(64).astype(np.float32)
    a16 = h.tensor(x, 64, dtype=DType.F16)
    out = h.run("add", a16, h.tensor(y, 64))
    assert out.dtype == DType.F16
    x16 = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(h.values(out), (x16 + y).astype(np.float16).astype(np.float32))
    abf = h.tensor(x, 64, dtype=DType.BF16)
    out = h.run("mul", abf, a16)
    assert out.dtype == DType.BF16
    np.testing.assert_array_equal(h.values(out), _bf16(_bf16(x) * x16))


# Every unary op without parameters (scale and clamp are tested below).
UNARY = [op for op in category("unary") if not OPS[op].params]


@pytest.mark.parametrize("op", UNARY)
def test_unary_ops(h, op) -> None:
    x = (RNG.standard_normal(257) * 4).astype(np.float32)
    if op == "sqrt":
        x = np.abs(x)
    out = h.run(op, h.tensor(x, 257))
    expected = _reference(op, out, x.reshape(1, 1, 1, 257)).ravel()
    np.testing.assert_allclose(h.values(out), expected, rtol=2e-6, atol=1e-6)


def test_sqrt_of_negative_is_nan(h) -> None:
    assert np.isnan(h.values(h.run("sqrt", h.tensor([-1.0], 1)))[0])


def test_scale_and_clamp(h) -> None:
    x = h.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], 5)
    assert h.values(h.run("scale", x, s=0.1)).tolist() == list(
        np.array([-2.0, -0.5, 0.0, 0.5, 3.0], np.float32) * np.float32(0.1)
    )
    assert h.values(h.run("clamp", x, lo=-1, hi=1)).tolist() == [-1, -0.5, 0, 0.5, 1]
    assert h.values(h.run("clamp", x, lo=2, hi=1)).tolist() == [2] * 5  # lo wins


def test_unary_keeps_f16_and_bf16(h) -> None:
    x = (RNG.standard_normal(33) * 3).astype(np.float32)
    out = h.run("silu", h.tensor(x, 33, dtype=DType.F16))
    assert out.dtype == DType.F16
    x16 = x.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(
        h.values(out), (x16 / (1 + np.exp(-x16))).astype(np.float16), rtol=1e-3
    )
    out = h.run("neg", h.tensor(x, 33, dtype=DType.BF16))
    np.testing.assert_array_equal(h.values(out), -_bf16(x))


def test_zero_element_operands(h) -> None:
    empty = h.empty(DType.F32, 0)
    assert h.run("tanh", empty).n == 0
    assert h.run("add", empty, h.empty(DType.F32, 0)).n == 0
