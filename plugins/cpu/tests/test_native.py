"""The native weight products (mlplug_cpu._native) and the numpy fallback, against float64.

Weights are decoded by ``gguf.quants.dequantize`` (independent of the native decoders). Block
types multiply an int8-quantised activation (module doc of kernels/native.py): the expected
value is then the product with that activation, quantised here by the same rule in numpy
(d = max|x|/127 per 32-block, q = round-half-even(x·127/max|x|)), to F32 rounding; the numpy
path is held to the exact product.
"""

from __future__ import annotations

from collections.abc import Iterator

import gguf
import numpy as np
import pytest

from mlplug.device import DType, TensorRef
from mlplug_cpu import device as cpu_device
from mlplug_cpu.kernels import native, quant

RNG = np.random.default_rng(11)
BLOCK_TYPES = [
    DType.Q4_0,
    DType.Q4_1,
    DType.Q5_0,
    DType.Q5_1,
    DType.Q8_0,
    DType.Q2_K,
    DType.Q3_K,
    DType.Q4_K,
    DType.Q5_K,
    DType.Q6_K,
]
K_QUANTS = [DType.Q2_K, DType.Q3_K, DType.Q4_K, DType.Q5_K, DType.Q6_K]
# Byte offsets of the F16 scale fields in a block of each K-quant (the rest is random codes).
_SCALE_FIELDS = {
    DType.Q2_K: (80, 82),
    DType.Q3_K: (108,),
    DType.Q4_K: (0, 2),
    DType.Q5_K: (0, 2),
    DType.Q6_K: (208,),
}
ALL_TYPES = [DType.F32, DType.F16, DType.BF16, *BLOCK_TYPES]
NATIVE_BUILT = native._native is not None


@pytest.fixture(params=["native", "numpy"])
def path(request, monkeypatch) -> Iterator[str]:
    """Run a test once on the native kernels (skipped if not built) and once on numpy."""
    if request.param == "native" and not NATIVE_BUILT:
        pytest.skip("mlplug_cpu._native is not built")
    monkeypatch.setenv(native.ENV_NATIVE, "1" if request.param == "native" else "0")
    native.configure_from_env()
    yield request.param
    monkeypatch.delenv(native.ENV_NATIVE)
    native.configure_from_env()


def _weight(h, dtype: DType, k: int, m: int, batch: tuple[int, int] = (1, 1)) -> TensorRef:
    """A random ``[k, m, *batch]`` weight; K-quants get random bytes with small scales."""
    shape = (batch[1], batch[0], m, k)
    if dtype in K_QUANTS:  # gguf cannot quantise these: random codes, sane scales
        blocks = RNG.integers(0, 256, (*shape[:-1], k // 256, dtype.type_size), dtype=np.uint8)
        scales = (RNG.standard_normal((*blocks.shape[:-1], 2)) * 0.01).astype(np.float16)
        for i, offset in enumerate(_SCALE_FIELDS[dtype]):
            blocks[..., offset : offset + 2] = scales[..., i : i + 1].view(np.uint8)
        return h.raw_tensor(blocks.tobytes(), dtype, k, m, *batch)
    return h.tensor(RNG.standard_normal(shape), k, m, *batch, dtype=dtype)


def _reference(ref: TensorRef) -> np.ndarray:
    """Weight values in float64, decoded by gguf (independent of the native decoder)."""
    stored = np.ascontiguousarray(quant.raw(ref))
    if ref.dtype == DType.F32:
        return stored.astype(np.float64)
    if ref.dtype == DType.BF16:
        return (stored.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if ref.dtype == DType.F16:
        return stored.astype(np.float64)
    kind = gguf.GGMLQuantizationType(ref.dtype.ggml_type)
    flat = gguf.quants.dequantize(stored.reshape(1, -1), kind)
    return flat.reshape(quant.np_shape(ref)).astype(np.float64)


def _check(out: np.ndarray, expected: np.ndarray, k: int) -> None:
    scale = np.abs(expected).max() + 1e-30
    assert np.abs(out - expected).max() <= 4e-6 * np.sqrt(k) * scale


def _quantised(x: np.ndarray) -> np.ndarray:
    """``x`` (last dim a multiple of 32) rounded to the kernels' int8 activation blocks."""
    blocks = x.astype(np.float32).reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    d = amax / np.float32(127)
    inverse = np.float32(127) / np.where(amax > 0, amax, np.float32(1))
    q = np.rint(blocks * np.where(amax > 0, inverse, np.float32(0)))
    return (q.astype(np.float64) * d.astype(np.float64)).reshape(x.shape)


def _check_product(path: str, dtype: DType, out: np.ndarray, x: np.ndarray, w: np.ndarray) -> None:
    """``out`` against ``x @ wᵀ`` (float64 ``w``), with ``x`` quantised where the kernel does."""
    if path == "native" and dtype in BLOCK_TYPES:
        xq = _quantised(x)
        expected, magnitude = xq @ w.swapaxes(-1, -2), np.abs(xq) @ np.abs(w).swapaxes(-1, -2)
        assert np.all(np.abs(out - expected) <= 2e-6 * magnitude + 1e-30)
    else:
        _check(out, x.astype(np.float64) @ w.swapaxes(-1, -2), x.shape[-1])


@pytest.mark.parametrize("dtype", ALL_TYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("n", [1, 3, 17, 64])
@pytest.mark.parametrize("op", ["mulmat", "mulmat_full_prec"])
def test_matches_float64_reference(h, path, dtype, n, op) -> None:
    k, m = (512, 19) if dtype in K_QUANTS else (96, 37)
    a = _weight(h, dtype, k, m)
    x = RNG.standard_normal((n, k)).astype(np.float32)
    out = h.array(h.run(op, a, h.tensor(x, k, n)))[0, 0]
    _check_product(path, dtype, out, x, _reference(a)[0, 0])


@pytest.mark.parametrize("dtype", BLOCK_TYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_model_shaped_products(h, path, dtype, n) -> None:
    """A decode-sized product at a model's width, rows not a multiple of the 4-row tile."""
    k, m = 2048, 66
    a = _weight(h, dtype, k, m)
    x = (RNG.standard_normal((n, k)) * RNG.uniform(0.01, 100, (n, 1))).astype(np.float32)
    out = h.array(h.run("mulmat", a, h.tensor(x, k, n)))[0, 0]
    _check_product(path, dtype, out, x, _reference(a)[0, 0])


@pytest.mark.skipif(not NATIVE_BUILT, reason="mlplug_cpu._native is not built")
@pytest.mark.parametrize("dtype", BLOCK_TYPES, ids=lambda d: d.name)
def test_every_instruction_set_agrees(h, dtype) -> None:
    """Each kernel set this CPU can run (CPUID dispatch) gives the same products."""
    assert native._native is not None
    ext, chosen = native._native, native._native.isa()
    k, m, n = 512, 13, 6
    a = _weight(h, dtype, k, m)
    x = RNG.standard_normal((n, k)).astype(np.float32)
    results = {}
    try:
        for isa in ("generic", "avx2", "avx512vnni"):
            if ext.set_isa(isa):
                results[isa] = h.array(h.run("mulmat", a, h.tensor(x, k, n)))[0, 0]
    finally:
        assert ext.set_isa(chosen)
    assert "generic" in results
    w = _reference(a)[0, 0]
    magnitude = np.abs(_quantised(x)) @ np.abs(w).T
    for isa, out in results.items():
        _check_product("native", dtype, out, x, w)
        assert np.all(np.abs(out - results["generic"]) <= 4e-6 * magnitude), isa


@pytest.mark.parametrize("dtype", [DType.Q4_0, DType.Q6_K], ids=lambda d: d.name)
def test_non_finite_activation_takes_the_exact_path(h, path, dtype) -> None:
    k, m = 256, 5
    a = _weight(h, dtype, k, m)
    x = RNG.standard_normal((2, k)).astype(np.float32)
    x[0, 7], x[1, 40] = np.inf, np.nan
    out = h.array(h.run("mulmat", a, h.tensor(x, k, 2)))[0, 0]
    with np.errstate(all="ignore"):
        expected = x.astype(np.float64) @ _reference(a)[0, 0].T
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(expected))


@pytest.mark.parametrize("dtype", [DType.F16, DType.BF16], ids=lambda d: d.name)
def test_float_rows_with_a_tail(h, path, dtype) -> None:
    k, m = 45, 5  # not a multiple of 32: the native path adds a scalar tail
    a = _weight(h, dtype, k, m)
    x = RNG.standard_normal((2, k)).astype(np.float32)
    out = h.array(h.run("mulmat", a, h.tensor(x, k, 2)))[0, 0]
    _check(out, x.astype(np.float64) @ _reference(a)[0, 0].T, k)


@pytest.mark.parametrize("dtype", [DType.F16, DType.Q8_0, DType.Q4_0], ids=lambda d: d.name)
def test_grouped_batches_and_permuted_operands(h, path, dtype) -> None:
    k, m, n = 64, 6, 3
    a = _weight(h, dtype, k, m, (2, 3))  # ggml [64, 6, 2, 3]
    x = RNG.standard_normal((6, 4, n, k)).astype(np.float32)  # ggml [64, 3, 4, 6]
    out = h.array(h.run("mulmat", a, h.tensor(x, k, n, 4, 6)))
    w = np.repeat(np.repeat(_reference(a), 2, axis=0), 2, axis=1)
    _check_product(path, dtype, out, x, w)
    # A permuted F16 key cache against permuted queries (attention scores).
    if dtype == DType.F16:
        values = RNG.standard_normal((6, 2, k))  # ggml [k, 2 heads, 6 positions]
        key = h.permuted(h.tensor(values, k, 2, 6, dtype=dtype), 0, 2, 1, 3)
        query = RNG.standard_normal((3, 4, k)).astype(np.float32)
        q = h.permuted(h.tensor(query, k, 4, 3), 0, 2, 1, 3)
        scores = h.array(h.run("mulmat_full_prec", key, q))[0]  # (4 heads, 3, 6)
        kv = values.astype(np.float16).astype(np.float64)
        for head in range(4):
            _check(scores[head], query[:, head] @ kv[:, head // 2].T, k)


@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_K, DType.Q5_1], ids=lambda d: d.name)
def test_mulmat_id_experts(h, path, dtype) -> None:
    k, rows, n_expert, tokens = 256, 8, 4, 5
    experts = _weight(h, dtype, k, rows, (n_expert, 1))
    b = RNG.standard_normal((tokens, 1, k)).astype(np.float32)  # ggml [k, 1, T]
    ids = RNG.integers(0, n_expert, (tokens, 2)).astype(np.int32)  # ggml [2, T]
    out = h.array(
        h.run(
            "mulmat_id",
            experts,
            h.tensor(b, k, 1, tokens),
            h.tensor(ids, 2, tokens, dtype=DType.I32),
        )
    )
    w = _reference(experts)[0]
    for t in range(tokens):
        for slot in range(2):
            _check_product(path, dtype, out[0, t, slot], b[t, 0], w[ids[t, slot]])


def test_env_switch_is_read_at_load(monkeypatch) -> None:
    monkeypatch.setenv(native.ENV_NATIVE, "0")
    cpu_device.load(cpu_device.BackendParams())
    assert native.active() == "numpy"
    monkeypatch.setenv(native.ENV_NATIVE, "1")
    cpu_device.load(cpu_device.BackendParams())
    assert native.active() == ("numpy" if not NATIVE_BUILT else f"native-{native._native.isa()}")


@pytest.mark.skipif(not NATIVE_BUILT, reason="mlplug_cpu._native is not built")
def test_extension_checks_its_windows() -> None:
    ext = native._native
    w = np.zeros((4, 34), np.uint8)
    x = np.zeros(96, np.float32)
    o = np.zeros(8, np.float32)
    q8 = DType.Q8_0.ggml_type
    assert ext.matmul(q8, w, 0, 34, x, 0, 128, o, 0, 16, 4, 32, 2, 1) is True
    with pytest.raises(ValueError, match="weight"):
        ext.matmul(q8, w, 0, 34, x, 0, 128, o, 0, 16, 5, 32, 2, 1)
    with pytest.raises(ValueError, match="out"):
        ext.matmul(q8, w, 0, 34, x, 0, 128, o, 0, 16, 4, 32, 3, 1)
    with pytest.raises(ValueError, match="block"):
        ext.matmul(q8, w, 0, 34, x, 0, 128, o, 0, 16, 4, 31, 2, 1)
    # An output overlapping an input is refused, nothing written.
    assert ext.matmul(q8, w, 0, 34, x, 0, 128, x, 0, 16, 4, 32, 2, 1) is False
    assert not ext.supported(DType.Q4_K.ggml_type, 32) and ext.supported(DType.F16.ggml_type, 3)


@pytest.mark.skipif(not NATIVE_BUILT, reason="mlplug_cpu._native is not built")
@pytest.mark.parametrize("dtype", ALL_TYPES[1:], ids=lambda d: d.name)
def test_native_path_takes_supported_weights(h, path, dtype) -> None:
    k = 256
    a, b = _weight(h, dtype, k, 4), h.tensor(RNG.standard_normal((2, k)), k, 2)
    out, _ = h.out_for("mulmat", [a, b])
    assert native.weight_product(a, b, out) is (path == "native")


@pytest.mark.skipif(not NATIVE_BUILT, reason="mlplug_cpu._native is not built")
@pytest.mark.parametrize("dtype", [DType.F16, DType.BF16, *BLOCK_TYPES], ids=lambda d: d.name)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_padded_rows_and_every_isa(h, dtype, threads) -> None:
    """Products straight through the extension: 1-3 threads, rows not a multiple of the
    16-row tile, a row stride larger than a row (padding), decode and prompt batch sizes, on
    every instruction set this CPU has; each against gguf's dequantisation (F16/BF16: a row
    length that is not a multiple of the 16-wide steps)."""
    assert native._native is not None
    ext, chosen = native._native, native._native.isa()
    k, m, pad = (512 if dtype in BLOCK_TYPES else 517), 149, 40
    a = _weight(h, dtype, k, m)
    w = _reference(a)[0, 0]
    stored = np.ascontiguousarray(quant.raw(a)[0, 0]).view(np.uint8).reshape(m, -1)
    padded = np.zeros((m, stored.shape[1] + pad), np.uint8)
    padded[:, : stored.shape[1]] = stored
    try:
        for isa in ("generic", "avx2", "avx512vnni"):
            if not ext.set_isa(isa):
                continue
            for n in (1, 3, 9, 20):
                x = (RNG.standard_normal((n, k)) * RNG.uniform(0.01, 100, (n, 1))).astype(
                    np.float32
                )
                out = np.full((n, m), np.nan, np.float32)
                assert ext.matmul(
                    dtype.ggml_type, padded, 0, padded.shape[1], x, 0, 4 * k, out, 0, 4 * m,
                    m, k, n, threads,
                )  # fmt: skip
                _check_product("native", dtype, out, x, w)
    finally:
        assert ext.set_isa(chosen)
