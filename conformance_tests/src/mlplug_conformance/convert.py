"""Dtype conversions for the reference, in float64 (SEMANTICS §3.2).

Logical values are float64 for float and block dtypes and int64 for integer dtypes.

* :func:`decode` turns packed logical-order bytes of any dtype into values: F16/BF16/F32/F64
  exactly, integers numerically, every GGUF block type through ``gguf.quants.dequantize``
  except Q8_K, which ``gguf`` lacks and is written out here (F32 ``d``, 256 int8, 16 int16 sums).
* :func:`encode` turns values into packed bytes of a *create* dtype (F32, F16, BF16, I32, Q8_0,
  Q4_0) plus the numeric types I8/I16/I64/F64: F16 and BF16 round to nearest even, the
  quantisers follow §3.2 literally (written here, independent of ``gguf``; a test proves them
  bit-exact with ``gguf.quants.quantize``).
* :func:`round_to` is ``decode(encode(values))``: what a perfect device stores for an exact
  result. Integer targets truncate toward zero (``arange`` to I32). Weight-only block dtypes are
  only ever byte-copied, so their values pass through unchanged.

BF16 from float64 goes through F32 first (two roundings); for every F32 input (``copy``) that is
the single rounding §3.2 asks for.
"""

from __future__ import annotations

import numpy as np

from mlplug.dtype import DType

__all__ = [
    "ENCODABLE",
    "INT_DTYPES",
    "bf16_bits",
    "decode",
    "dequantize_q4_0",
    "dequantize_q8_0",
    "encode",
    "eps",
    "is_int",
    "quantize_q4_0",
    "quantize_q8_0",
    "round_to",
]

INT_DTYPES: dict[DType, str] = {
    DType.I8: "<i1",
    DType.I16: "<i2",
    DType.I32: "<i4",
    DType.I64: "<i8",
}
_FLOATS: dict[DType, str] = {DType.F32: "<f4", DType.F16: "<f2", DType.F64: "<f8"}

ENCODABLE: frozenset[DType] = frozenset({*INT_DTYPES, *_FLOATS, DType.BF16, DType.Q8_0, DType.Q4_0})
"""Dtypes :func:`encode` can write (every create dtype and the plain numeric ones)."""

_EPS: dict[DType, float] = {
    DType.F32: 2.0**-23,
    DType.F16: 2.0**-10,
    DType.BF16: 2.0**-7,
    DType.F64: 2.0**-52,
}
_QUANT_EPS = 2.0**-7
"""Relative step of 8-bit block quantisation: devices quantise activations to Q8_0/Q8_K in
products with quantised weights (ggml's vec-dot formats), so that is the working precision."""


def is_int(dtype: DType) -> bool:
    """Whether ``dtype`` holds integers (logical values are int64)."""
    return dtype in INT_DTYPES


def eps(dtype: DType) -> float:
    """Return the machine epsilon a result in ``dtype`` is judged by (0 for integers)."""
    if is_int(dtype):
        return 0.0
    return _EPS.get(dtype, _QUANT_EPS)


# ---------------------------------------------------------------------------------------------
# Decoding


def _bf16_to_f64(raw: np.ndarray) -> np.ndarray:
    bits = raw.view("<u2").astype(np.uint32) << np.uint32(16)
    return bits.view(np.float32).astype(np.float64)


def _q8_k_to_f64(raw: np.ndarray) -> np.ndarray:
    # Not in gguf.quants: per 292-byte block an F32 scale d, 256 int8 q, 16 int16 sums; d·q.
    blocks = raw.reshape(-1, DType.Q8_K.type_size)
    d = blocks[:, :4].copy().view("<f4").astype(np.float64)
    q = blocks[:, 4:260].copy().view(np.int8).astype(np.float64)
    return (d * q).reshape(-1)


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    """Return the float64 values of packed Q8_0 blocks (``d·q``)."""
    blocks = raw.reshape(-1, DType.Q8_0.type_size)
    d = blocks[:, :2].copy().view("<f2").astype(np.float64)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float64)
    return (d * q).reshape(-1)


def dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    """Return the float64 values of packed Q4_0 blocks (``(nibble - 8)·d``)."""
    blocks = raw.reshape(-1, DType.Q4_0.type_size)
    d = blocks[:, :2].copy().view("<f2").astype(np.float64)
    qs = blocks[:, 2:]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float64)
    return ((nibbles - 8.0) * d).reshape(-1)


def decode(raw: bytes | bytearray | memoryview | np.ndarray, dtype: DType) -> np.ndarray:
    """Return the logical values (1-D float64, or int64 for integer dtypes) of packed bytes.

    Raises:
        ValueError: ``dtype`` is ``OTHER`` or ``gguf`` cannot dequantise it.
    """
    data = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw
    data = data.reshape(-1).view(np.uint8)
    if dtype in INT_DTYPES:
        return data.view(INT_DTYPES[dtype]).astype(np.int64)
    if dtype in _FLOATS:
        return data.view(_FLOATS[dtype]).astype(np.float64)
    if dtype is DType.BF16:
        return _bf16_to_f64(data)
    if dtype is DType.Q8_0:
        return dequantize_q8_0(data)
    if dtype is DType.Q4_0:
        return dequantize_q4_0(data)
    if dtype is DType.Q8_K:
        return _q8_k_to_f64(data)
    if dtype is DType.OTHER:
        raise ValueError("decode: dtype OTHER has no values")
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    try:
        values = dequantize(data, GGMLQuantizationType(dtype.ggml_type))
    except (NotImplementedError, ValueError) as err:
        raise ValueError(f"decode: gguf cannot dequantise {dtype.name} ({err})") from err
    return np.asarray(values, dtype=np.float64).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Encoding


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """Return the BF16 bit patterns (uint16) of F32-rounded values: nearest even, NaN kept NaN."""
    bits = np.asarray(values, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    # A NaN keeps its sign and top payload bits and is made quiet, so it cannot become inf.
    quiet = (bits >> 16) | 0x0040
    return np.where(nan, quiet, rounded).astype(np.uint16)


def _f32_blocks(values: np.ndarray, dtype: DType) -> np.ndarray:
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if flat.size % dtype.block_size:
        raise ValueError(f"encode: {flat.size} values are not whole {dtype.name} blocks")
    with np.errstate(over="ignore", invalid="ignore"):
        return flat.astype(np.float32).reshape(-1, dtype.block_size)


def quantize_q8_0(values: np.ndarray) -> np.ndarray:
    """Return packed Q8_0 blocks (uint8, 34 per block) of values, per §3.2 in F32 arithmetic.

    ``d = max|x| / 127``, ``q = round_half_away_from_zero(x · (1/d))`` (``1/d = 0`` for
    ``d = 0``), ``d`` stored as fp16.
    """
    x = _f32_blocks(values, DType.Q8_0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
        scaled = np.abs(x * inv)
        # Half away from zero, exactly: floor(|v|) plus 1 when the fraction is >= 0.5
        # (floor(|v| + 0.5) would round 0.49999997 up in F32).
        whole = np.floor(scaled)
        q = np.sign(x) * (whole + np.floor(2 * (scaled - whole)))
        qs = np.nan_to_num(q, nan=0.0).astype(np.int8).view(np.uint8)
        dh = d.astype(np.float16).view(np.uint8)
    return np.concatenate([dh, qs], axis=1)


def quantize_q4_0(values: np.ndarray) -> np.ndarray:
    """Return packed Q4_0 blocks (uint8, 18 per block) of values, per §3.2 in F32 arithmetic.

    ``m`` = the first value of largest magnitude (sign kept), ``d = m / -8``,
    ``nibble = min(15, trunc(x · (1/d) + 8.5))``, ``d`` stored as fp16; byte ``j`` holds element
    ``j`` (low nibble) and ``j + 16`` (high nibble).
    """
    x = _f32_blocks(values, DType.Q4_0)
    first = np.abs(x).argmax(axis=1)[:, None]
    m = np.take_along_axis(x, first, axis=1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = m / np.float32(-8)
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
        nib = np.trunc(x * inv + np.float32(8.5))
        nib = np.nan_to_num(np.clip(nib, 0, 15), nan=0.0).astype(np.uint8)
        dh = d.astype(np.float16).view(np.uint8)
    packed = nib[:, :16] | (nib[:, 16:] << np.uint8(4))
    return np.concatenate([dh, packed], axis=1)


def encode(values: np.ndarray, dtype: DType) -> bytes:
    """Return the packed little-endian bytes of logical values in ``dtype``.

    Float targets round to nearest even (overflow to ±inf); integer targets truncate toward
    zero; Q8_0/Q4_0 quantise each block of 32 consecutive values.

    Raises:
        ValueError: ``dtype`` is not in :data:`ENCODABLE`.
    """
    flat = np.asarray(values).reshape(-1)
    if dtype in INT_DTYPES:
        ints = np.trunc(flat) if flat.dtype.kind == "f" else flat
        return ints.astype(np.int64).astype(INT_DTYPES[dtype]).tobytes()
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype in _FLOATS:
            return flat.astype(np.float64).astype(_FLOATS[dtype]).tobytes()
        if dtype is DType.BF16:
            return bf16_bits(flat.astype(np.float64).astype(np.float32)).astype("<u2").tobytes()
    if dtype is DType.Q8_0:
        return quantize_q8_0(flat).tobytes()
    if dtype is DType.Q4_0:
        return quantize_q4_0(flat).tobytes()
    raise ValueError(f"encode: cannot write dtype {dtype.name}")


def round_to(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Return ``values`` as stored in ``dtype`` (same shape; float64, or int64 for integers).

    For a block dtype the last axis must hold whole blocks (it is dim 0 of a logical array).
    """
    arr = np.asarray(values)
    if arr.size == 0:
        return arr.astype(np.int64 if is_int(dtype) else np.float64)
    if dtype not in ENCODABLE:
        # Weight-only dtypes are never computed into, only copied byte for byte (contiguous,
        # views, same-dtype copy), so their values are already exact.
        return arr.astype(np.float64)
    return decode(encode(arr, dtype), dtype).reshape(arr.shape)
