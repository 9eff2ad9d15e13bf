"""The kernels' building blocks against independent references (gguf, float64 numpy).

The element maps (:data:`mlplug_cuda.kernels.quant.CODES`) drive both the device dequantisation
and the mmvq twin, so they are checked value by value against gguf's dequantisers; the twins of
the CUDA C kernels are checked against plain float64 arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import gguf
import numpy as np
import pytest

from mlplug.device import DType
from mlplug_cuda.kernels.attention import flash_decode_twin
from mlplug_cuda.kernels.mmvq import TYPES, mmvq_twin, quantize_q8_1_twin
from mlplug_cuda.kernels.quant import CODES, HOST_DECODED, decode, encode
from mlplug_cuda.xp import emulation

API = emulation()
BlocksMaker = Callable[[DType, int, int, int], np.ndarray]


def _gguf_values(blocks: np.ndarray, dtype: DType) -> np.ndarray:
    flat = blocks.reshape(1, -1)
    if dtype is DType.Q8_K:
        b = blocks.reshape(-1, dtype.type_size)
        d = b[:, :4].copy().view(np.float32)
        return (b[:, 4:260].view(np.int8).astype(np.float32) * d).reshape(blocks.shape[0], -1)
    kind = gguf.GGMLQuantizationType(dtype.ggml_type)
    return gguf.quants.dequantize(flat, kind).reshape(blocks.shape[0], -1)


@pytest.mark.parametrize("dtype", sorted(CODES, key=lambda d: d.value), ids=lambda d: d.name)
def test_element_maps_decode_like_gguf(dtype: DType, random_blocks: BlocksMaker) -> None:
    blocks = random_blocks(dtype, 3, 512, seed=dtype.value)
    got = decode(API, blocks, dtype)  # raw()-shaped: (rows, nblocks, S)
    want = _gguf_values(blocks, dtype)
    np.testing.assert_array_equal(got.reshape(want.shape), want)


@pytest.mark.parametrize("dtype", sorted(HOST_DECODED, key=lambda d: d.value), ids=lambda d: d.name)
def test_host_decoded_types_are_gguf_exact(dtype: DType, random_blocks: BlocksMaker) -> None:
    blocks = random_blocks(dtype, 2, 256, seed=7)
    got = decode(API, blocks, dtype)
    want = gguf.quants.dequantize(
        blocks.reshape(1, -1), gguf.GGMLQuantizationType(dtype.ggml_type)
    ).reshape(got.shape)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_0], ids=lambda d: d.name)
def test_quantisers_are_bit_exact_with_gguf(dtype: DType) -> None:
    rng = np.random.default_rng(3)
    values = rng.standard_normal((4, 128)).astype(np.float32) * 3
    values[0, :32] = 0  # a zero block
    values[1, 5] = np.float32(2.5) * 7  # a value on a rounding tie after scaling
    got = encode(API, values, dtype)
    want = gguf.quants.quantize(values, gguf.GGMLQuantizationType(dtype.ggml_type))
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_q8_1_activation_quantisation() -> None:
    y = np.array([[0.5, -1.0, 0.25, 127.0] * 8 + [0.0] * 32], np.float32)
    qy, dy, sy16 = quantize_q8_1_twin(y)
    assert dy.tolist() == [[1.0, 0.0]]
    assert qy[0, :4].tolist() == [1, -1, 0, 127]  # roundf: 0.5 → 1 (half away from zero)
    assert qy[0, 32:].tolist() == [0] * 32
    assert sy16.tolist() == [[4 * 127, 4 * 127, 0, 0]]


@pytest.mark.parametrize("dtype", sorted(TYPES, key=lambda d: d.value), ids=lambda d: d.name)
@pytest.mark.parametrize("ncols", [1, 3, 8])
def test_mmvq_twin_equals_the_integer_formula_and_approximates_the_product(
    dtype: DType, ncols: int, random_blocks: BlocksMaker
) -> None:
    k, rows = 512, 7
    blocks = random_blocks(dtype, rows, k, seed=11)
    weights = _gguf_values(blocks, dtype).astype(np.float64)
    y = np.random.default_rng(5).standard_normal((ncols, k)).astype(np.float32)
    qy, dy, sy16 = quantize_q8_1_twin(y)
    got = mmvq_twin(API, blocks, dtype, qy, dy, sy16)
    # Exactly the product of the weights with the 8-bit activation (integer sums are exact):
    y8 = (qy.reshape(ncols, -1, 32).astype(np.float64) * dy[..., None]).reshape(ncols, k)
    np.testing.assert_allclose(got, y8 @ weights.T, rtol=1e-4, atol=1e-4 * np.abs(weights).max())
    # ... and close to the exact product (8-bit activation rounding).
    exact = y.astype(np.float64) @ weights.T
    nmse = ((got - exact) ** 2).mean() / (exact**2).mean()
    assert nmse < 1e-3


@pytest.mark.parametrize(("tokens", "length", "heads", "kv_heads"), [(1, 700, 4, 2), (3, 9, 2, 2)])
def test_flash_decode_twin_equals_softmax_attention(
    tokens: int, length: int, heads: int, kv_heads: int
) -> None:
    rng = np.random.default_rng(2)
    q = rng.standard_normal((tokens, heads, 64)).astype(np.float32)
    k = rng.standard_normal((length, kv_heads, 64)).astype(np.float16)
    v = rng.standard_normal((length, kv_heads, 48)).astype(np.float16)
    mask = np.zeros((tokens, length), np.float16)
    mask[:, length - 5 :] = -np.inf
    mask[0, :] = -np.inf  # a fully masked row gives NaN, as softmax over -inf does
    got = flash_decode_twin(q, k, v, mask, 0.125, split=256)
    group = heads // kv_heads
    kk = np.repeat(k.astype(np.float64), group, axis=1)
    vv = np.repeat(v.astype(np.float64), group, axis=1)
    scores = np.einsum("thd,lhd->thl", q.astype(np.float64), kk) * 0.125 + mask[:, None, :]
    with np.errstate(invalid="ignore"):
        p = np.exp(scores - scores.max(-1, keepdims=True))
        want = np.einsum("thl,lhd->thd", p / p.sum(-1, keepdims=True), vv)
    assert np.isnan(got[0]).all() and np.isnan(want[0]).all()
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-4, atol=1e-5)
