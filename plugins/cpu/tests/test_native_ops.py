"""The native small-op kernels (``_native_ops.c``) against numpy and float64, on every ISA.

Each test runs the cpu kernel through the single-node harness with the numpy path made to fail
loudly, so a pass means the C code computed the result: odd row lengths (vector tails), tiled
second operands, strided (permuted) operands, F16/BF16 results rounded exactly as numpy and
mlplug's encoder round (ties included), NaN and infinities, ids out of range, and prompt-sized
calls split over the pool's threads. The declared fallbacks (partial overlap of output and
input, block-quantised caches, other weight types) are checked to take the numpy path and still
give the right answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from mlplug.device import DType, Node, TensorRef
from mlplug_conformance.harness import Harness
from mlplug_cpu.kernels import elementwise, movement, native, quant, reduce

NATIVE_BUILT = native.extension() is not None
RNG = np.random.default_rng(7)
FLOATS = (DType.F32, DType.F16, DType.BF16)


def _isas() -> list[str]:
    if not NATIVE_BUILT:
        return ["none"]
    return ["avx2", "generic"] if native.extension().ops_isa() == "avx2" else ["generic"]  # type: ignore[union-attr]


def _numpy_ran(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the numpy path ran")


@pytest.fixture(params=_isas())
def isa(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test on each kernel set the CPU has, with the numpy paths made to fail."""
    if request.param == "none":
        pytest.skip("mlplug_cpu._native is not built")
    ext = native.extension()
    assert ext is not None
    before = ext.ops_isa()
    assert ext.ops_set_isa(request.param)
    for module in (elementwise, reduce):
        monkeypatch.setattr(module, "load", _numpy_ran)
    monkeypatch.setattr(movement, "raw", _numpy_ran)
    yield request.param
    ext.ops_set_isa(before)


def _decode(h: Harness, ref: TensorRef) -> np.ndarray:
    return h.array(ref).astype(np.float32)


def _round(values: np.ndarray, dtype: DType) -> np.ndarray:
    """F32 values rounded to dtype and back (the one rounding a result gets)."""
    return quant.decode(quant.encode(values.astype(np.float32), dtype), dtype)


def _tile(b: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.tile(b, np.array(shape) // np.array(b.shape))


def _values(n: int, specials: bool = False) -> np.ndarray:
    x = (RNG.standard_normal(n) * 3).astype(np.float32)
    if specials and n >= 8:
        x[[1, 3, 5, 7]] = [np.nan, np.inf, -np.inf, -0.0]
    return x


# ---- add, sub, mul, div ------------------------------------------------------------------------

BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}


@pytest.mark.parametrize("op", sorted(BINARY))
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(
    ("a_ne", "b_ne"),
    [
        ((7, 3), (7, 3)),
        ((33, 2, 2), (33, 1, 1)),
        ((1000, 2), (1, 1)),
        ((6, 2), (3, 1)),  # b repeats inside a row (tiling, not broadcasting)
        ((5, 4, 3), (5, 2, 1)),
        ((4099,), (4099,)),
    ],
)
def test_binary_matches_numpy_exactly(
    isa: str, h: Harness, op: str, dtype: DType, a_ne: tuple[int, ...], b_ne: tuple[int, ...]
) -> None:
    a = _values(int(np.prod(a_ne)), specials=True)
    b = _values(int(np.prod(b_ne)), specials=op != "div")
    ra, rb = h.tensor(a, *a_ne, dtype=dtype), h.tensor(b, *b_ne, dtype=DType.F32)
    out = h.run(op, ra, rb)
    assert out.dtype == dtype
    x, y = _decode(h, ra), _decode(h, rb)
    with np.errstate(all="ignore"):
        want = _round(BINARY[op](x, _tile(y, x.shape)), dtype)
    np.testing.assert_array_equal(_decode(h, out), want)


def test_binary_reads_permuted_and_f16_operands(isa: str, h: Harness) -> None:
    a = h.tensor(_values(5 * 7 * 3), 5, 7, 3)
    at = Harness.permuted(a, 1, 0, 2, 3)  # [7, 5, 3], dim 0 strided
    b = h.tensor(_values(7), 7, dtype=DType.F16)
    out = h.run("mul", at, b)
    want = _decode(h, at) * _tile(_decode(h, b).reshape(1, 1, 1, 7), (1, 3, 5, 7))
    np.testing.assert_array_equal(_decode(h, out), want)


def test_an_output_partly_overlapping_its_input_falls_back_to_numpy(h: Harness) -> None:
    if not NATIVE_BUILT:
        pytest.skip("mlplug_cpu._native is not built")
    ext = native.extension()
    assert ext is not None
    a = h.tensor(np.arange(16, dtype=np.float32), 16)
    src = Harness.view(a, 0, (12,), (4,))
    dst = Harness.view(a, 16, (12,), (4,))  # elements 4..15: overlaps src shifted by 4
    one = h.tensor([1.0], 1)
    assert not ext.ops_binary(0, dst, src, one, 1)  # declined, nothing written
    np.testing.assert_array_equal(_decode(h, a).ravel(), np.arange(16))
    elementwise.KERNELS["add"](Node("add", dst, (src, one)))  # the numpy path handles it
    np.testing.assert_array_equal(_decode(h, a).ravel(), [0, 1, 2, 3, *range(1, 13)])


def test_in_place_binary_is_exact(isa: str, h: Harness) -> None:
    x = _values(37 * 3)
    a = h.tensor(x, 37, 3)
    b = h.tensor(_values(37), 37)
    elementwise.KERNELS["add"](Node("add", a, (a, b)))
    np.testing.assert_array_equal(_decode(h, a), x.reshape(1, 1, 3, 37) + _decode(h, b))


# ---- rms_norm, rms_norm_add, softmax -----------------------------------------------------------


def _rms64(x: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [1, 7, 64, 2048, 2051])
def test_rms_norm_with_weight_and_residual(isa: str, h: Harness, dtype: DType, n: int) -> None:
    x = h.tensor(_values(n * 3), n, 3, dtype=dtype)
    w = h.tensor(_values(n), n, dtype=dtype)
    r = h.tensor(_values(n * 3), n, 3)
    eps = 1e-6
    xs, ws, rs = _decode(h, x), _decode(h, w), _decode(h, r)
    out = h.run("rms_norm", x, w, eps=eps)
    want = _rms64(xs, eps) * ws
    tol = 4 * 2.0**-23 * np.sqrt(n) * np.abs(want) + 1e-7
    if dtype != DType.F32:
        tol += np.abs(want) * (2.0**-10 if dtype == DType.F16 else 2.0**-7)
    assert np.all(np.abs(_decode(h, out) - want) <= tol)
    fused = h.run("rms_norm_add", x, w, r, eps=eps)
    want = _rms64(xs, eps) * ws + rs
    tol = 4 * 2.0**-23 * np.sqrt(n) * (np.abs(want) + np.abs(rs)) + 1e-7
    if dtype != DType.F32:
        tol += np.abs(want) * (2.0**-10 if dtype == DType.F16 else 2.0**-7)
    assert np.all(np.abs(_decode(h, fused) - want) <= tol)


def test_rms_norm_propagates_nan_and_inf(isa: str, h: Harness) -> None:
    rows = np.array([[1, 2, np.nan, 4], [1, np.inf, 3, 4], [3, 4, 0, 0]], np.float32)
    out = _decode(h, h.run("rms_norm", h.tensor(rows.ravel(), 4, 3), None, eps=0.0))[0, 0]
    assert np.isnan(out[0]).all()
    np.testing.assert_array_equal(out[1], [0, np.nan, 0, 0])  # x / inf, and inf / inf
    np.testing.assert_allclose(out[2], [1.2, 1.6, 0, 0], rtol=1e-6)


def test_rms_norm_worked_example(isa: str, h: Harness) -> None:
    out = h.run("rms_norm", h.tensor([1, 2, 3, 4], 4), None, eps=1e-6)
    np.testing.assert_allclose(_decode(h, out).ravel(), [0.3651, 0.7303, 1.0954, 1.4606], atol=1e-4)
    fused = h.run("rms_norm_add", h.tensor([3, 4], 2), None, h.tensor([1, 1], 2), eps=0.0)
    np.testing.assert_allclose(_decode(h, fused).ravel(), [1.8485, 2.1314], atol=1e-4)


@pytest.mark.parametrize("n", [1, 3, 17, 96, 1000, 32000])
def test_softmax_against_float64(isa: str, h: Harness, n: int) -> None:
    x = _values(n * 2) * 4
    x[: n // 3] = -np.inf  # masked cells
    out = _decode(h, h.run("softmax", h.tensor(x, n, 2)))[0, 0]
    x64 = x.reshape(2, n).astype(np.float64)
    e = np.exp(x64 - x64.max(axis=-1, keepdims=True))
    want = e / e.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(out, want, rtol=2e-6 * np.sqrt(n), atol=1e-9)


def test_softmax_rows_with_nan_or_only_minus_inf_are_nan(isa: str, h: Harness) -> None:
    rows = np.full((3, 20), -np.inf, np.float32)
    rows[1, :] = 1.0
    rows[1, 13] = np.nan
    rows[2, :] = np.arange(20)
    out = _decode(h, h.run("softmax", h.tensor(rows.ravel(), 20, 3)))[0, 0]
    assert np.isnan(out[0]).all() and np.isnan(out[1]).all()
    np.testing.assert_allclose(out[2].sum(), 1.0, rtol=1e-6)


# ---- swiglu, geglu (the exp) -------------------------------------------------------------------

_WIDE = np.concatenate(
    [
        np.linspace(-120, 120, 4001, dtype=np.float32),
        np.array([0, -0.0, 1e-30, -1e-30, 88.5, 89.5, -87.5, -103.5, -110], np.float32),
        np.array([np.inf, -np.inf, np.nan], np.float32),
    ]
)


def _silu64(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return x / (1 + np.exp(-x))


def _gelu64(x: np.ndarray) -> np.ndarray:
    # 0.5·x·(1 + tanh(y)) = x / (1 + e^(-2y)): the second form keeps the tiny values of x << 0,
    # which the first loses to cancellation even in float64.
    with np.errstate(all="ignore"):
        return x / (1 + np.exp(-2 * 0.7978845608 * x * (1 + 0.044715 * x * x)))


def test_silu_is_within_a_few_ulp_everywhere(isa: str, h: Harness) -> None:
    # The exp gets an exact argument here: about 1 ulp, and 2 more from 1 + e and the division.
    x = np.linspace(-87, 87, 100_001, dtype=np.float32)
    out = _decode(h, h.run("swiglu", h.tensor(x, len(x)), h.tensor(np.ones(len(x)), len(x))))
    want = _silu64(x.astype(np.float64))
    ulp = np.abs(out.ravel() - want) / np.spacing(np.abs(want).astype(np.float32))
    assert ulp.max() <= 3.5


# rtol: GELU's argument 2y is rounded in F32 before the exp, which costs |2y|·2^-24 relative (up
# to 1e-5 before the result underflows).
@pytest.mark.parametrize(("op", "f", "rtol"), [("swiglu", _silu64, 5e-7), ("geglu", _gelu64, 2e-5)])
def test_gated_activations_over_the_whole_float_range(
    isa: str, h: Harness, op: str, f: Any, rtol: float
) -> None:
    x = _WIDE
    b = _values(len(x))
    b[-3:] = 1.0
    out = _decode(h, h.run(op, h.tensor(x, len(x)), h.tensor(b, len(x)))).ravel()
    want = f(x.astype(np.float64)) * b
    # atol: where e^-x overflows F32 (x < -88.7) the F32 formula gives ±0 for |f| < 3e-37.
    bad = ~np.isclose(out, want, rtol=rtol, atol=1e-35, equal_nan=True)
    assert not bad.any(), list(zip(x[bad], out[bad], want[bad], strict=True))[:5]


@pytest.mark.parametrize("dtype", FLOATS)
def test_gated_with_tiled_gate_and_rounded_result(isa: str, h: Harness, dtype: DType) -> None:
    a = h.tensor(_values(24 * 3), 24, 3, dtype=dtype)
    b = h.tensor(_values(8), 8, dtype=dtype)
    out = h.run("swiglu", a, b)
    x, y = _decode(h, a).astype(np.float64), _decode(h, b).astype(np.float64)
    want = _silu64(x) * _tile(y, x.shape)
    rel = {DType.F32: 2.0**-20, DType.F16: 2.0**-10, DType.BF16: 2.0**-7}[dtype]
    np.testing.assert_allclose(_decode(h, out), want, rtol=rel, atol=1e-30)


# ---- unary ops, scale, clamp -------------------------------------------------------------------

_EXACT_UNARY: dict[str, Any] = {
    "neg": np.negative,
    "sqr": np.square,
    "sqrt": np.sqrt,
    "relu": lambda x: np.maximum(x, np.float32(0)),
}


@pytest.mark.parametrize("op", sorted(_EXACT_UNARY))
@pytest.mark.parametrize("dtype", FLOATS)
def test_exact_unary_ops_match_numpy(isa: str, h: Harness, op: str, dtype: DType) -> None:
    a = h.tensor(_values(4099, specials=True), 4099, dtype=dtype)
    x = _decode(h, a)
    with np.errstate(all="ignore"):
        want = _round(_EXACT_UNARY[op](x), dtype)
    np.testing.assert_array_equal(_decode(h, h.run(op, a)), want)


@pytest.mark.parametrize("dtype", FLOATS)
def test_scale_and_clamp_match_numpy(isa: str, h: Harness, dtype: DType) -> None:
    x = _values(1001)
    a = h.tensor(x, 1001, dtype=dtype)
    xs = _decode(h, a)
    got = _decode(h, h.run("scale", a, s=0.1))
    np.testing.assert_array_equal(got, _round(xs * np.float32(0.1), dtype))
    got = _decode(h, h.run("clamp", a, lo=-1.5, hi=2.0))
    np.testing.assert_array_equal(got, _round(np.maximum(np.minimum(xs, 2.0), -1.5), dtype))


def _exp64(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.exp(x)


def _sigmoid64(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize(
    ("op", "f", "rtol"),
    [("exp", _exp64, 4e-7), ("sigmoid", _sigmoid64, 5e-7), ("silu", _silu64, 5e-7)],
)
def test_transcendental_unary_ops_against_float64(
    isa: str, h: Harness, op: str, f: Any, rtol: float
) -> None:
    x = _WIDE
    out = _decode(h, h.run(op, h.tensor(x, len(x)))).ravel()
    with np.errstate(all="ignore"):
        want = f(x.astype(np.float64)).astype(np.float32).astype(np.float64)  # F32 overflow
    # atol: the F32 formulas give ±0 where e^-x overflows (silu at x < -88.7: |silu| < 3e-37).
    bad = ~np.isclose(out, want, rtol=rtol, atol=1e-36, equal_nan=True)
    assert not bad.any(), list(zip(x[bad], out[bad], want[bad], strict=True))[:5]


def test_gelu_against_float64(isa: str, h: Harness) -> None:
    x = _WIDE
    out = _decode(h, h.run("gelu", h.tensor(x, len(x)))).ravel()
    assert np.allclose(out, _gelu64(x.astype(np.float64)), rtol=2e-5, atol=1e-35, equal_nan=True)


# ---- rope --------------------------------------------------------------------------------------


def _rope64(x: np.ndarray, c: np.ndarray, s: np.ndarray, mode: int) -> np.ndarray:
    # x (T, H, D), c/s (T, n/2)
    x = x.astype(np.float64)
    out = x.copy()
    h = c.shape[-1]
    if mode == 0:
        a, b = x[..., 0 : 2 * h : 2], x[..., 1 : 2 * h : 2]
        out[..., 0 : 2 * h : 2] = a * c[:, None] - b * s[:, None]
        out[..., 1 : 2 * h : 2] = a * s[:, None] + b * c[:, None]
    else:
        a, b = x[..., :h], x[..., h : 2 * h]
        out[..., :h] = a * c[:, None] - b * s[:, None]
        out[..., h : 2 * h] = a * s[:, None] + b * c[:, None]
    return out


@pytest.mark.parametrize("mode", [0, 2])
@pytest.mark.parametrize(("d", "n_rot", "heads", "tokens"), [(64, 64, 4, 1), (10, 6, 3, 5)])
def test_rope_against_float64(
    isa: str, h: Harness, mode: int, d: int, n_rot: int, heads: int, tokens: int
) -> None:
    x = _values(d * heads * tokens)
    angles = RNG.uniform(-10, 10, (tokens, n_rot // 2))
    c, s = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    rc, rs = h.tensor(c.ravel(), n_rot // 2, tokens), h.tensor(s.ravel(), n_rot // 2, tokens)
    out = h.run("rope", h.tensor(x, d, heads, tokens), rc, rs, mode=mode)
    want = _rope64(x.reshape(tokens, heads, d), c, s, mode)
    np.testing.assert_allclose(_decode(h, out)[0], want, rtol=1e-6, atol=1e-6)


def test_rope_in_place(isa: str, h: Harness) -> None:
    x = _values(16 * 2 * 3)
    a = h.tensor(x, 16, 2, 3)
    angles = RNG.uniform(-3, 3, (3, 8))
    c, s = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    srcs = (a, h.tensor(c.ravel(), 8, 3), h.tensor(s.ravel(), 8, 3))
    elementwise.KERNELS["rope"](Node("rope", a, srcs, {"mode": 2, "n_rot": 16}))
    want = _rope64(x.reshape(3, 2, 16), c, s, 2)
    np.testing.assert_allclose(_decode(h, a)[0], want, rtol=1e-6, atol=1e-6)


# ---- set_rows and its conversions --------------------------------------------------------------


def _tie_values() -> np.ndarray:
    """F32 values at, just below and just above every midpoint between adjacent halves."""
    halves = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mid = ((halves[:-1] + halves[1:]) / 2).astype(np.float32)  # exact in F32
    below, above = np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(np.inf))
    edges = np.array(
        [65504, 65519.996, 65520, 65536, 1e10, 2.0**-25, 2.0**-26, 2.0**-24], np.float32
    )
    v = np.concatenate([mid, below, above, edges])
    return np.concatenate([v, -v])


def _bit_patterns(n: int) -> np.ndarray:
    bits = RNG.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    bits[:6] = [0x7F800001, 0xFF800001, 0x7FA00000, 0x7FC00000, 0x7F802000, 0x00000001]
    return bits.view(np.float32)


@pytest.mark.parametrize("dst_dtype", FLOATS)
@pytest.mark.parametrize("values", ["ties", "bits"])
def test_set_rows_converts_exactly_like_numpy(
    isa: str, h: Harness, dst_dtype: DType, values: str
) -> None:
    x = _tie_values() if values == "ties" else _bit_patterns(1 << 16)
    n = len(x) // 8 * 8
    x = x[:n]
    width = n // 8
    a = h.raw_tensor(x.tobytes(), DType.F32, width, 8)
    dst = h.empty(dst_dtype, width, 10)
    ids = h.tensor(np.arange(8) + 1, 8, dtype=DType.I32)
    h.run("set_rows", a, dst, ids)
    got = np.frombuffer(h.bytes(dst), np.uint8).reshape(10, -1)
    with np.errstate(all="ignore"):
        want = quant.encode(x.reshape(8, width), dst_dtype).view(np.uint8).reshape(8, -1)
    np.testing.assert_array_equal(got[1:9], want)
    assert not got[0].any() and not got[9].any()


def test_f16_to_f32_keeps_every_half_exactly(isa: str, h: Harness) -> None:
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    a = h.raw_tensor(halves.tobytes(), DType.F16, 1 << 13, 8)
    dst = h.empty(DType.F32, 1 << 13, 8)
    h.run("set_rows", a, dst, h.tensor(np.arange(8), 8, dtype=DType.I32))
    want = halves.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(np.frombuffer(h.bytes(dst), np.uint32), want.view(np.uint32))


def test_set_rows_last_write_wins_and_strided_cache_rows(isa: str, h: Harness) -> None:
    dst = h.tensor(np.full(8, 9.0), 2, 4)
    a = h.tensor([1, 2, 3, 4, 5, 6], 2, 3)
    h.run("set_rows", a, dst, h.tensor([1, 1, 2], 3, dtype=DType.I32))
    np.testing.assert_array_equal(_decode(h, dst).ravel(), [9, 9, 3, 4, 5, 6, 9, 9])
    # The transposed value cache: each element its own row of a [1, L·Dv] F16 view.
    cache = h.empty(DType.F16, 6, 4)  # [cells 6, Dv 4]
    flat = Harness.view(cache, 0, (1, 24), (2, 2))
    v = h.tensor([10, 20, 30, 40], 1, 4)
    cells = h.tensor([2 + 6 * d for d in range(4)], 4, dtype=DType.I32)  # cell 2 of each row
    h.run("set_rows", v, flat, cells)
    got = _decode(h, cache)[0, 0]
    np.testing.assert_array_equal(got[:, 2], [10, 20, 30, 40])
    assert not np.delete(got, 2, axis=1).any()


@pytest.mark.parametrize("op", ["set_rows", "rows"])
def test_an_id_out_of_range_raises_before_writing(isa: str, h: Harness, op: str) -> None:
    table = h.tensor(np.ones(12), 3, 4)
    if op == "set_rows":
        dst = h.empty(DType.F16, 3, 4)
        with pytest.raises(IndexError, match=r"\[set_rows\] index 4 out of range 0..3"):
            h.run("set_rows", h.tensor(np.ones(6), 3, 2), dst, h.tensor([0, 4], 2, dtype=DType.I32))
        assert not _decode(h, dst).any()
    else:
        with pytest.raises(IndexError, match=r"\[rows\] index -1 out of range 0..3"):
            h.run("rows", table, h.tensor([1, -1, 7], 3, dtype=DType.I32))


def _quant_blocks() -> np.ndarray:
    """Blocks of 32 that probe the quantisers, 64 blocks in all.

    Random blocks, zeros, a negative extreme; Q8_0 ties (max 127, so 1/d = 1 and x·1/d = k + ½
    exactly: half away from zero, not to even); Q4_0 blocks of (m + ½)·d, where x·1/d + 8.5
    lands within an ulp of an integer, so a fused multiply-add would truncate differently.
    """
    x = _values(32 * 64).reshape(64, 32)
    x[1, :] = 0.0
    x[2, 5] = -40.0
    x[3] = np.concatenate([[127.0], np.arange(31) - 15.5])
    d = -RNG.uniform(1, 8, 58).astype(np.float32) / np.float32(-8)
    m = np.concatenate([np.arange(-8, 8), np.arange(-8, 7)]) + 0.5  # 31 values
    x[6:, 0] = -8 * d
    x[6:, 1:] = m[None, :] * d[:, None]
    return x.astype(np.float32)


@pytest.mark.parametrize("dst_dtype", [DType.Q8_0, DType.Q4_0])
@pytest.mark.parametrize("src_dtype", [DType.F32, DType.F16])
def test_set_rows_quantises_like_gguf(
    isa: str, h: Harness, dst_dtype: DType, src_dtype: DType
) -> None:
    x = _quant_blocks().reshape(4, 512)  # 4 rows of 16 blocks
    a = h.tensor(x, 512, 4, dtype=src_dtype)
    dst = h.empty(dst_dtype, 512, 6)
    h.run("set_rows", a, dst, h.tensor([4, 0, 2, 5], 4, dtype=DType.I32))
    got = np.frombuffer(h.bytes(dst), np.uint8).reshape(6, -1)
    want = quant.encode(_decode(h, a)[0, 0], dst_dtype).reshape(4, -1)
    np.testing.assert_array_equal(got[[4, 0, 2, 5]], want)
    assert not got[[1, 3]].any()


def test_set_rows_of_inf_into_a_quantised_cache_takes_the_numpy_path(h: Harness) -> None:
    if not NATIVE_BUILT:
        pytest.skip("mlplug_cpu._native is not built")
    ext = native.extension()
    assert ext is not None
    x = _values(64)
    x[3] = np.inf
    a, ids = h.tensor(x, 32, 2), h.tensor([1, 0], 2, dtype=DType.I32)
    dst = h.empty(DType.Q8_0, 32, 2)
    assert not ext.ops_set_rows(dst, a, ids)  # declined, nothing written
    assert not any(h.bytes(dst))
    h.run("set_rows", a, dst, ids)  # the numpy path
    with np.errstate(all="ignore"):
        want = quant.encode(x.reshape(2, 32), DType.Q8_0)
    np.testing.assert_array_equal(
        np.frombuffer(h.bytes(dst), np.uint8).reshape(2, -1)[[1, 0]], want.reshape(2, -1)
    )


# ---- rows --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", [DType.F32, DType.F16, DType.BF16, DType.I32, DType.Q8_0, DType.Q4_0]
)
def test_rows_gathers_and_decodes_like_gguf(isa: str, h: Harness, dtype: DType) -> None:
    width = 64
    x = _values(width * 5 * 2)
    table = h.tensor(np.round(x) if dtype == DType.I32 else x, width, 5, 2, dtype=dtype)
    ids = h.tensor([4, 0, 4, 1, 3, 3], 3, 2, dtype=DType.I32)
    out = h.run("rows", table, ids)
    assert out.dtype == (DType.I32 if dtype == DType.I32 else DType.F32)
    t = _decode(h, table)[0]  # (2, 5, width)
    want = np.stack([t[0][[4, 0, 4]], t[1][[1, 3, 3]]])
    np.testing.assert_array_equal(_decode(h, out)[0], want)


def test_rows_of_other_weight_types_take_the_numpy_path(h: Harness) -> None:
    import gguf

    x = _values(256 * 3).reshape(3, 256)
    blocks = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q5_0)
    table = h.raw_tensor(blocks.tobytes(), DType.Q5_0, 256, 3)
    out = h.run("rows", table, h.tensor([2, 0], 2, dtype=DType.I32))
    want = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q5_0)[[2, 0]]
    np.testing.assert_array_equal(_decode(h, out)[0, 0], want)


# ---- prompt-sized calls on the pool ------------------------------------------------------------


@pytest.mark.parametrize("op", ["add", "rms_norm", "swiglu", "softmax", "rope", "exp"])
def test_prompt_sized_calls_on_two_threads_equal_one(isa: str, h: Harness, op: str) -> None:
    d, heads, tokens = 64, 16, 96  # 98304 elements: above the kernels' threading threshold
    x = h.tensor(_values(d * heads * tokens), d, heads, tokens)
    y = h.tensor(_values(d * heads * tokens), d, heads, tokens)
    c = h.tensor(np.cos(_values(d // 2 * tokens)), d // 2, tokens)
    s = h.tensor(np.sin(_values(d // 2 * tokens)), d // 2, tokens)
    args: dict[str, tuple[tuple[TensorRef | None, ...], dict[str, Any]]] = {
        "add": ((x, y), {}),
        "rms_norm": ((x, None), {"eps": 1e-5}),
        "swiglu": ((x, y), {}),
        "softmax": ((x,), {}),
        "rope": ((x, c, s), {"mode": 0}),
        "exp": ((x,), {}),
    }
    srcs, params = args[op]
    one = _decode(h, h.run(op, *srcs, **params))
    with native.thread_count(2):
        two = _decode(h, h.run(op, *srcs, **params))
    np.testing.assert_array_equal(one, two)
