"""Dtype conversions (SEMANTICS §3.2): bit-exact with ``gguf`` where §3.2 says they are."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize, quantize

from mlplug.dtype import DType
from mlplug_conformance import convert
from mlplug_conformance.weights import WEIGHT_ONLY, random_weight_bytes


def _samples(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(32 * 48) * rng.choice([1e-4, 1.0, 300.0])).astype(np.float32)
    x[:32] = 0.0  # d = 0
    x[32:64] = np.float32(0.49999997)  # rounding edge of round-half-away-from-zero
    x[64:96] = np.where(np.arange(32) % 2, 1.0, -1.0)  # equal magnitudes: the first one wins
    x[rng.integers(0, x.size, 20)] = 0.0
    return x


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_0, DType.BF16])
def test_quantisers_are_bit_exact_with_gguf(dtype: DType, seed: int) -> None:
    x = _samples(seed)
    want = quantize(x.reshape(4, -1), GGMLQuantizationType(dtype.ggml_type)).tobytes()
    assert convert.encode(x, dtype) == want


@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_0])
def test_quantised_values_are_within_one_step(dtype: DType) -> None:
    # (With d in the fp16 subnormal range, max|x| below ~8e-3, even gguf's quantiser can miss
    # by more than one step: its codes use the unrounded d.)
    x = _samples(9).astype(np.float64)
    x[np.abs(x) < 1e-2] = 0.0
    y = convert.round_to(x, dtype)
    raw = np.frombuffer(convert.encode(x, dtype), np.uint8).reshape(-1, dtype.type_size)
    d = np.abs(raw[:, :2].copy().view("<f2").astype(np.float64))
    assert (np.abs(y - x).reshape(-1, 32) <= d * (1 + 2**-10)).all()


def test_quantised_values_are_a_fixed_point() -> None:
    # What the cases rely on: rounded inputs re-quantise to the same values on any device
    # (bytes may differ in the sign of a zero block's scale).
    for dtype in (DType.Q8_0, DType.Q4_0):
        for seed in range(10):
            y = convert.round_to(_samples(seed).astype(np.float64), dtype)
            np.testing.assert_array_equal(convert.round_to(y, dtype), y)


def test_f16_rounds_to_nearest_even_and_overflows() -> None:
    x = np.array([1 + 2**-11, 1 + 3 * 2**-11, 65519.0, 65520.0, -1e6, 2.0**-25, 2.0**-24 * 1.5])
    assert convert.round_to(x, DType.F16).tolist() == [
        1.0,
        1 + 2**-9,
        65504.0,
        math.inf,
        -math.inf,
        0.0,
        2.0**-23,
    ]


def test_bf16_rounds_to_nearest_even_and_keeps_nan() -> None:
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 255.5, 256.5, 3.4e38, math.nan, -math.inf, -0.0])
    got = convert.round_to(x, DType.BF16)
    assert got[:5].tolist() == [1.0, 1 + 2**-6, 256.0, 256.0, math.inf]
    assert math.isnan(got[5]) and got[6] == -math.inf
    assert math.copysign(1.0, got[7]) == -1.0
    nan_bits = convert.bf16_bits(np.array([np.float32("nan")]))
    assert (nan_bits & 0x7F80) == 0x7F80 and (nan_bits & 0x007F) != 0


def test_integers_truncate_toward_zero() -> None:
    assert convert.round_to(np.array([2.9, -2.9, 0.5]), DType.I32).tolist() == [2, -2, 0]
    assert convert.decode(convert.encode(np.array([-5, 7]), DType.I8), DType.I8).tolist() == [-5, 7]


_GGUF_TYPES = [d for d in DType if d is not DType.OTHER and d.is_block and d is not DType.Q8_K]


@pytest.mark.parametrize("dtype", _GGUF_TYPES, ids=lambda d: d.name)
def test_decode_matches_gguf_dequantize(dtype: DType) -> None:
    qtype = GGMLQuantizationType(dtype.ggml_type)
    block, size = GGML_QUANT_SIZES[qtype]
    assert (block, size) == (dtype.block_size, dtype.type_size)
    raw = np.random.default_rng(dtype.value).integers(0, 256, 4 * size, dtype=np.uint8)
    raw = raw.reshape(4, size)
    raw[:, :2] = np.frombuffer(np.float16([0.5, -0.25, 1.5, 2.0]).tobytes() * 2, np.uint8)[
        :8
    ].reshape(4, 2)  # finite scales where they sit first
    want = np.asarray(dequantize(raw.reshape(-1), qtype), dtype=np.float64).reshape(-1)
    got = convert.decode(raw.reshape(-1), dtype)
    assert got.shape == (4 * block,)
    np.testing.assert_array_equal(got, want)


def test_q8_k_is_decoded_by_hand() -> None:
    block = bytearray(292)
    block[:4] = np.float32(0.5).tobytes()
    q = np.arange(-128, 128, dtype=np.int8)
    block[4:260] = q.tobytes()
    assert convert.decode(bytes(block), DType.Q8_K).tolist() == (q * 0.5).tolist()


def test_eps_of_the_dtypes() -> None:
    assert convert.eps(DType.F32) == 2.0**-23
    assert convert.eps(DType.F16) == 2.0**-10
    assert convert.eps(DType.I32) == 0.0
    assert convert.eps(DType.Q4_K) == 2.0**-7


@pytest.mark.parametrize("dtype", sorted(WEIGHT_ONLY, key=lambda d: d.value), ids=lambda d: d.name)
def test_random_weight_blocks_are_well_formed(dtype: DType) -> None:
    rng = np.random.default_rng(dtype.value)
    n = 512 if dtype.is_block else 64
    raw = random_weight_bytes(rng, dtype, n)
    assert len(raw) == dtype.nbytes(n)
    values = convert.decode(raw, dtype)
    assert values.shape == (n,) and np.isfinite(values).all() and np.abs(values).max() > 0
    if dtype is DType.Q8_K:
        blocks = np.frombuffer(raw, np.uint8).reshape(-1, 292)
        q = blocks[:, 4:260].copy().view(np.int8).astype(np.int64).reshape(-1, 16, 16)
        sums = blocks[:, 260:].copy().view("<i2").astype(np.int64)
        assert (q.sum(axis=2) == sums).all()


def test_creatable_dtypes_are_not_made_as_file_weights() -> None:
    with pytest.raises(ValueError):
        random_weight_bytes(np.random.default_rng(0), DType.Q4_0, 32)
