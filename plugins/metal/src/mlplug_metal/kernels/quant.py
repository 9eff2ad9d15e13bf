"""Strided views of MLX buffers, dtype conversion and held weights (SEMANTICS §1.1, §3.2).

Every kernel reads and writes tensors through these helpers, so no kernel assumes a layout:

* :func:`raw` is the stored elements of a :class:`~mlplug.device.TensorRef` in numpy order
  ``(ne3, ne2, ne1, ne0)``: the bytes of its window viewed as the stored type and laid out with
  ``mx.as_strided`` (strides converted from bytes to elements). Block dtypes keep dim 0 as
  whole blocks: ``(ne3, ne2, ne1, ne0 / B, S)`` bytes. BF16 and F64 are stored as their bits
  (``uint16``, ``uint64``), so raw copies are bit-exact and F64 never reaches the Metal GPU.
* :func:`decode` / :func:`encode` convert stored elements to F32 values and back, in MLX ops
  (lazy, on the device) for every create dtype: Q8_0 and Q4_0 quantise exactly as
  ``gguf.quants.quantize`` does. Other GGUF types decode on the host through ``gguf``.
* :func:`load` / :func:`store` combine the two with the window; :func:`store_raw` writes stored
  elements through the output's strides (a scatter when the window is not packed).
* Weights uploaded through the device are **held** in MLX form (:class:`AffineWeight`,
  :class:`DenseWeight`); :func:`load` serves any window of them exactly.
"""

from __future__ import annotations

import gguf
import mlx.core as mx
import numpy as np

from mlplug.device import DType, TensorRef, contiguous_strides
from mlplug_metal.buffer import MlxBuffer

__all__ = [
    "AffineWeight",
    "DenseWeight",
    "copy_raw",
    "decode",
    "encode",
    "held",
    "load",
    "np_shape",
    "raw",
    "store",
    "store_raw",
]

_CHUNK_BLOCKS = 1 << 16
"""Blocks converted at once on the host at upload (bounds the temporaries)."""

# Stored element type of each scalar dtype (BF16 and F64 as their bits).
_STORED: dict[DType, mx.Dtype] = {
    DType.F32: mx.float32,
    DType.F16: mx.float16,
    DType.BF16: mx.uint16,
    DType.F64: mx.uint64,
    DType.I8: mx.int8,
    DType.I16: mx.int16,
    DType.I32: mx.int32,
    DType.I64: mx.int64,
}


def np_shape(ref: TensorRef) -> tuple[int, int, int, int]:
    """Return the ref's logical shape in numpy order ``(ne3, ne2, ne1, ne0)``."""
    return (ref.ne[3], ref.ne[2], ref.ne[1], ref.ne[0])


def _stored_shape(ref: TensorRef) -> tuple[int, ...]:
    if ref.dtype.is_block:
        ne = ref.ne
        return (ne[3], ne[2], ne[1], ne[0] // ref.dtype.block_size, ref.dtype.type_size)
    return np_shape(ref)


def _stored_dtype(dtype: DType) -> mx.Dtype:
    return mx.uint8 if dtype.is_block else _STORED[dtype]


def buffer_of(ref: TensorRef) -> MlxBuffer:
    """Return the ref's buffer, checking that it belongs to an MLX device."""
    if not isinstance(ref.buffer, MlxBuffer):
        raise TypeError(f"[Metal] {type(ref.buffer).__name__} is not a buffer of this device")
    return ref.buffer


def raw(ref: TensorRef) -> mx.array:
    """Return the stored elements of ``ref`` in numpy order (lazy; see the module docstring)."""
    shape = _stored_shape(ref)
    stored = _stored_dtype(ref.dtype)
    if ref.n == 0:
        return mx.zeros(shape, stored)
    lo, hi = ref.span()
    # A held weight's window reads its GGUF bytes back (see MlxBuffer.window).
    window = buffer_of(ref).window(lo, hi)
    nb = ref.nb
    if ref.dtype.is_block:
        return mx.as_strided(window, shape, (nb[3], nb[2], nb[1], nb[0], 1), 0)
    size = ref.dtype.type_size
    typed = window if stored == mx.uint8 else mx.view(window, stored)
    if ref.contiguous:
        return typed.reshape(shape)
    return mx.as_strided(
        typed, shape, (nb[3] // size, nb[2] // size, nb[1] // size, nb[0] // size), 0
    )


# ---------------------------------------------------------------------------------------------
# Q8_0 and Q4_0 in MLX ops (bit layout: SEMANTICS §3.2)


def _f16_bits_to_f32(lo: mx.array, hi: mx.array) -> mx.array:
    bits = lo.astype(mx.uint16) | (hi.astype(mx.uint16) << 8)
    return mx.view(bits, mx.float16).astype(mx.float32)


def _f32_to_f16_bytes(d: mx.array) -> mx.array:
    bits = mx.view(d.astype(mx.float16), mx.uint16)
    return mx.stack([(bits & 0xFF).astype(mx.uint8), (bits >> 8).astype(mx.uint8)], axis=-1)


def _decode_q8_0(blocks: mx.array) -> mx.array:
    d = _f16_bits_to_f32(blocks[..., 0], blocks[..., 1])
    q = blocks[..., 2:].astype(mx.int8).astype(mx.float32)  # uint8 -> int8 wraps (two's compl.)
    return q * d[..., None]


def _decode_q4_0(blocks: mx.array) -> mx.array:
    d = _f16_bits_to_f32(blocks[..., 0], blocks[..., 1])
    qs = blocks[..., 2:]
    nibbles = mx.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(mx.float32)
    return (nibbles - 8.0) * d[..., None]


def _round_half_away(x: mx.array) -> mx.array:
    # As gguf's np_roundf: sign(x) · (floor|x| + floor(2 (|x| - floor|x|))).
    a = mx.abs(x)
    floored = mx.floor(a)
    return mx.sign(x) * (floored + mx.floor(2.0 * (a - floored)))


def _encode_q8_0(values: mx.array) -> mx.array:
    blocks = values.reshape(*values.shape[:-1], -1, 32)
    d = mx.max(mx.abs(blocks), axis=-1, keepdims=True) / 127.0
    inv = mx.where(d == 0, 0.0, 1.0 / mx.where(d == 0, 1.0, d))
    q = _round_half_away(blocks * inv).astype(mx.int16)
    q_bytes = (q & 0xFF).astype(mx.uint8)
    return mx.concatenate([_f32_to_f16_bytes(d[..., 0]), q_bytes], axis=-1)


def _encode_q4_0(values: mx.array) -> mx.array:
    blocks = values.reshape(*values.shape[:-1], -1, 32)
    first_max = mx.argmax(mx.abs(blocks), axis=-1, keepdims=True)  # first of largest magnitude
    m = mx.take_along_axis(blocks, first_max, axis=-1)
    d = m / -8.0
    inv = mx.where(d == 0, 0.0, 1.0 / mx.where(d == 0, 1.0, d))
    # x·id + 8.5 >= 0.5 for finite input, so floor is the truncation of SEMANTICS §3.2.
    nib = mx.minimum(mx.floor(blocks * inv + 8.5), 15.0)
    nib = mx.clip(nib, 0.0, 15.0).astype(mx.uint8)
    qs = nib[..., :16] | (nib[..., 16:] << 4)
    return mx.concatenate([_f32_to_f16_bytes(d[..., 0]), qs], axis=-1)


# ---------------------------------------------------------------------------------------------
# Other GGUF types: decoded on the host (they only reach a kernel as weights, whose products use
# the F16 copy the device made at upload; see DenseWeight)


def _decode_on_host(stored: mx.array, dtype: DType) -> mx.array:
    blocks = np.ascontiguousarray(np.asarray(stored)).reshape(-1, dtype.type_size)
    shape = (*stored.shape[:-2], stored.shape[-2] * dtype.block_size)
    return mx.array(dequantize_host(blocks, dtype).reshape(shape))


def dequantize_host(blocks: np.ndarray, dtype: DType) -> np.ndarray:
    """Return F32 values of GGUF blocks ``(n, S)`` of any block dtype (numpy, exact)."""
    if blocks.size == 0:
        return np.zeros(0, np.float32)
    if dtype == DType.Q8_K:
        # gguf.quants has no Q8_K: F32 d, 256 int8 q, 16 int16 sums (unused); value d·q.
        d = np.ascontiguousarray(blocks[:, :4]).view(np.float32)
        return (blocks[:, 4:260].view(np.int8).astype(np.float32) * d).reshape(-1)
    kind = gguf.GGMLQuantizationType(dtype.ggml_type)
    return gguf.quants.dequantize(blocks.reshape(1, -1), kind).reshape(-1).astype(np.float32)


def decode(stored: mx.array, dtype: DType) -> mx.array:
    """Return the F32 values of elements in their stored form (as :func:`raw` gives them)."""
    if dtype == DType.F32:
        return stored
    if dtype in (DType.F16, DType.I8, DType.I16, DType.I32, DType.I64):
        return stored.astype(mx.float32)
    if dtype == DType.BF16:
        return mx.view(stored, mx.bfloat16).astype(mx.float32)
    if dtype == DType.F64:
        # The Metal GPU has no float64: convert on MLX's CPU stream (unified memory).
        return mx.view(stored, mx.float64, stream=mx.cpu).astype(mx.float32, stream=mx.cpu)
    if dtype == DType.Q8_0:
        values = _decode_q8_0(stored)
    elif dtype == DType.Q4_0:
        values = _decode_q4_0(stored)
    else:
        return _decode_on_host(stored, dtype)
    return values.reshape(*stored.shape[:-2], stored.shape[-2] * dtype.block_size)


def _nan_bits(values: mx.array) -> tuple[mx.array, mx.array]:
    bits = mx.view(values.astype(mx.float32), mx.uint32)
    return mx.isnan(values), bits


def _to_f16(values: mx.array) -> mx.array:
    # MLX's conversion is IEEE round-to-nearest-even with overflow to inf, but it turns NaNs
    # into signalling NaNs; NaNs are redone as numpy does (payload >> 13, kept a NaN).
    half = values.astype(mx.float16)
    nan, bits = _nan_bits(values)
    payload = mx.maximum((bits & 0x007FFFFF) >> 13, 1)
    redone = (((bits >> 16) & 0x8000) | 0x7C00 | payload).astype(mx.uint16)
    return mx.view(mx.where(nan, redone, mx.view(half, mx.uint16)), mx.float16)


def _to_bf16(values: mx.array) -> mx.array:
    # Round to nearest even (MLX's conversion); NaNs keep sign and top payload, made quiet.
    rounded = mx.view(values.astype(mx.bfloat16), mx.uint16)
    nan, bits = _nan_bits(values)
    return mx.where(nan, ((bits >> 16) | 0x0040).astype(mx.uint16), rounded)


def encode(values: mx.array, dtype: DType) -> mx.array:
    """Return F32 ``values`` (numpy order) in ``dtype``'s stored form.

    F32→F16/BF16 round to nearest even with overflow to ±inf (NaN stays NaN); Q8_0 and Q4_0 are
    quantised as ``gguf.quants.quantize`` does; integer dtypes truncate.
    """
    if dtype == DType.F32:
        return values.astype(mx.float32)
    if dtype == DType.F16:
        return _to_f16(values)
    if dtype == DType.BF16:
        return _to_bf16(values)
    if dtype == DType.F64:
        wide = values.astype(mx.float64, stream=mx.cpu)
        return mx.view(wide, mx.uint64, stream=mx.cpu)
    if dtype == DType.Q8_0:
        return _encode_q8_0(values)
    if dtype == DType.Q4_0:
        return _encode_q4_0(values)
    if dtype.is_block:
        raise NotImplementedError(f"[Metal] cannot quantise to {dtype.name}")
    return values.astype(_STORED[dtype])


# ---------------------------------------------------------------------------------------------
# Held weights


class AffineWeight:
    """A Q4_0 or Q8_0 weight repacked into MLX affine quantisation (exact).

    GGUF Q4_0 value ``(n - 8)·d`` is MLX's ``scale·n + bias`` with ``scale = d``,
    ``bias = -8d`` and the unsigned nibble ``n``; Q8_0 value ``q·d`` is ``d·(q + 128) - 128d``.
    Codes are packed little-end first into ``uint32`` words, as ``mx.quantize`` packs them.

    Attributes:
        dtype: Q4_0 or Q8_0.
        ne: The weight's extents.
        bits: 4 or 8.
        wq: Packed codes ``(ne3, ne2, ne1, ne0·bits/32)`` uint32.
        scales: ``(ne3, ne2, ne1, ne0/32)`` float16 (the GGUF ``d``).
        biases: Same shape, float16.
    """

    __slots__ = ("biases", "bits", "dtype", "ne", "scales", "wq")
    group_size = 32

    def __init__(
        self,
        dtype: DType,
        ne: tuple[int, int, int, int],
        wq: mx.array,
        scales: mx.array,
        biases: mx.array,
    ) -> None:
        self.dtype, self.ne = dtype, ne
        self.bits = 4 if dtype == DType.Q4_0 else 8
        self.wq, self.scales, self.biases = wq, scales, biases

    @staticmethod
    def nbytes(dtype: DType, n: int) -> int:
        """Return the bytes held for ``n`` elements: codes plus an F16 scale and bias per 32."""
        bits = 4 if dtype == DType.Q4_0 else 8
        return n * bits // 8 + (n // 32) * 4

    @classmethod
    def repack(
        cls, dtype: DType, ne: tuple[int, int, int, int], data: memoryview
    ) -> AffineWeight | None:
        """Repack GGUF blocks; ``None`` when a scale does not fit the F16 bias (not exact)."""
        blocks = np.frombuffer(data, np.uint8).reshape(-1, dtype.type_size)
        d = np.ascontiguousarray(blocks[:, :2]).view(np.float16).reshape(-1)
        offset = np.float16(8 if dtype == DType.Q4_0 else 128)
        with np.errstate(over="ignore", invalid="ignore"):
            bias = (-offset * d).astype(np.float16)
        if not np.all(np.isfinite(bias)):
            return None
        rows = (ne[3], ne[2], ne[1])
        per_block = 4 if dtype == DType.Q4_0 else 8  # uint32 words per 32 codes
        words = np.empty(blocks.shape[0] * per_block, np.uint32)
        for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):  # bounded host temporaries
            part = blocks[start : start + _CHUNK_BLOCKS, 2:]
            target = words[start * per_block : (start + part.shape[0]) * per_block]
            if dtype == DType.Q4_0:
                codes = np.concatenate([part & 0x0F, part >> 4], axis=1).astype(np.uint32)
                shifts = np.arange(8, dtype=np.uint32) * np.uint32(4)
                target[:] = np.bitwise_or.reduce(codes.reshape(-1, 8) << shifts, axis=1)
            else:
                codes = np.ascontiguousarray(part ^ np.uint8(0x80))  # int8 q -> q + 128
                target[:] = codes.reshape(-1).view("<u4")
        return cls(
            dtype,
            ne,
            mx.array(words.reshape(*rows, -1)),
            mx.array(d.reshape(*rows, -1)),
            mx.array(bias.reshape(*rows, -1)),
        )

    def values(self) -> mx.array:
        """Return the F32 values ``(ne3, ne2, ne1, ne0)`` (exact: computed in F32)."""
        return mx.dequantize(
            self.wq,
            self.scales.astype(mx.float32),
            self.biases.astype(mx.float32),
            group_size=self.group_size,
            bits=self.bits,
        )

    def gguf_bytes(self) -> mx.array:
        """Return the GGUF blocks again (the repack is a bijection)."""
        words = np.asarray(self.wq).reshape(-1)
        d = np.asarray(self.scales).reshape(-1, 1).view(np.uint8)
        if self.bits == 4:
            shifts = np.arange(8, dtype=np.uint32) * np.uint32(4)
            codes = ((words[:, None] >> shifts) & 0xF).astype(np.uint8).reshape(-1, 32)
            qs = codes[:, :16] | (codes[:, 16:] << 4)
        else:
            qs = words.view(np.uint8).reshape(-1, 32) ^ np.uint8(0x80)
        return mx.array(np.concatenate([d, qs], axis=1).reshape(-1))


class DenseWeight:
    """A GGUF weight of a type MLX cannot compute with: its bytes plus an F16 copy.

    Products use the F16 values (dequantised once at upload, so a product never dequantises);
    every other use (``rows``, copies, views, ``bytes()``) reads the GGUF bytes, so values stay
    exact where SEMANTICS requires them (F16 is within the products' tolerance for quantised
    weights, whose working precision is an 8-bit step).

    Attributes:
        dtype: The GGUF dtype.
        ne: Extents.
        gguf: The GGUF bytes (flat ``uint8``).
        data: ``(ne3, ne2, ne1, ne0)`` values in F16.
    """

    __slots__ = ("data", "dtype", "gguf", "ne")

    def __init__(
        self, dtype: DType, ne: tuple[int, int, int, int], gguf: mx.array, data: mx.array
    ) -> None:
        self.dtype, self.ne, self.gguf, self.data = dtype, ne, gguf, data

    @staticmethod
    def nbytes(dtype: DType, n: int) -> int:
        """Return the bytes held for ``n`` elements: the GGUF bytes and 2 per value."""
        return dtype.nbytes(n) + 2 * n

    @classmethod
    def dequantize(
        cls, dtype: DType, ne: tuple[int, int, int, int], data: memoryview
    ) -> DenseWeight:
        """Keep the GGUF bytes and dequantise them on the host (``gguf``) into F16."""
        raw = np.frombuffer(data, np.uint8)
        blocks = raw.reshape(-1, dtype.type_size)
        values = np.empty(blocks.shape[0] * dtype.block_size, np.float16)
        for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):  # bounded host temporaries
            part = dequantize_host(blocks[start : start + _CHUNK_BLOCKS], dtype)
            values[start * dtype.block_size : start * dtype.block_size + part.size] = part
        return cls(dtype, ne, mx.array(raw), mx.array(values.reshape(ne[3], ne[2], ne[1], ne[0])))

    def gguf_bytes(self) -> mx.array:
        """Return the GGUF bytes."""
        return self.gguf


Held = AffineWeight | DenseWeight


def held(ref: TensorRef) -> tuple[Held, bool] | None:
    """Return ``(weight, whole)`` when ``ref`` views a held weight; ``whole`` if it is all of it."""
    if ref.n == 0 or not ref.dtype.is_block:
        return None
    lo, hi = ref.span()
    found = buffer_of(ref).held_at(lo, hi)
    if found is None:
        return None
    start, weight = found
    assert isinstance(weight, AffineWeight | DenseWeight)
    whole = (
        ref.offset == start
        and ref.ne == weight.ne
        and ref.nb == contiguous_strides(weight.ne, weight.dtype)
    )
    return weight, whole


def _held_values(ref: TensorRef, weight: AffineWeight, start: int) -> mx.array:
    """Return F32 values of any window of a held weight (blocks gathered from its values)."""
    dtype = weight.dtype
    size, block = dtype.type_size, dtype.block_size
    row_bytes = size * (weight.ne[0] // block)
    ne, nb = ref.ne, ref.nb
    offsets = (
        ref.offset
        - start
        + np.arange(ne[3])[:, None, None, None] * nb[3]
        + np.arange(ne[2])[None, :, None, None] * nb[2]
        + np.arange(ne[1])[None, None, :, None] * nb[1]
        + np.arange(ne[0] // block)[None, None, None, :] * nb[0]
    )
    rows, within = np.divmod(offsets, row_bytes)
    if np.any(within % size):
        raise ValueError(f"[Metal] window of a {dtype.name} weight does not start on a block")
    first = rows * weight.ne[0] + (within // size) * block
    index = (first[..., None] + np.arange(block)).reshape(-1)
    index = mx.array(index.astype(np.int32 if index.max(initial=0) < 2**31 else np.int64))
    flat = weight.values().reshape(-1)
    return mx.take(flat, index).reshape(np_shape(ref))


def load(ref: TensorRef) -> mx.array:
    """Return the F32 logical values of ``ref`` in numpy order (lazy)."""
    if ref.n == 0:
        return mx.zeros(np_shape(ref), mx.float32)
    found = held(ref)
    if found is not None:
        weight, whole = found
        if isinstance(weight, AffineWeight):
            if whole:
                return weight.values()
            start = buffer_of(ref).held_at(*ref.span())
            assert start is not None
            return _held_values(ref, weight, start[0])
    return decode(raw(ref), ref.dtype)  # a DenseWeight's window reads its GGUF bytes


def _element_index(ref: TensorRef, unit: int) -> mx.array:
    """Return the flat index, in ``unit``-byte units from the span start, of each element."""
    nb = [s // unit for s in ref.nb]
    shape = _stored_shape(ref)
    idx = (mx.arange(shape[0]) * nb[3]).reshape(-1, 1, 1, 1)
    idx = idx + (mx.arange(shape[1]) * nb[2]).reshape(-1, 1, 1)
    idx = idx + (mx.arange(shape[2]) * nb[1]).reshape(-1, 1)
    idx = idx + mx.arange(shape[3]) * nb[0]
    if ref.dtype.is_block:
        idx = idx[..., None] + mx.arange(shape[4])
    return idx.reshape(-1)


def store_raw(ref: TensorRef, stored: mx.array) -> None:
    """Write stored elements (broadcastable to the stored shape) through ``ref``'s strides."""
    if ref.n == 0:
        return
    buffer = buffer_of(ref)
    shape = _stored_shape(ref)
    dtype = _stored_dtype(ref.dtype)
    stored = mx.broadcast_to(stored.astype(dtype), shape)
    lo, hi = ref.span()
    if ref.contiguous:
        flat = stored.reshape(-1)
        buffer.put(lo, flat if dtype == mx.uint8 else mx.view(flat, mx.uint8))
        return
    # A strided window: scatter into the bytes it spans.
    unit = 1 if ref.dtype.is_block else ref.dtype.type_size
    window = buffer.window(lo, hi)
    typed = mx.contiguous(window if dtype == mx.uint8 else mx.view(window, dtype))
    typed[_element_index(ref, unit)] = stored.reshape(-1)
    buffer.put(lo, typed if dtype == mx.uint8 else mx.view(typed, mx.uint8))


def store(ref: TensorRef, values: mx.array | float) -> None:
    """Write F32 ``values`` (broadcastable to ref's numpy shape) into ``ref``, converting."""
    if ref.n == 0:
        return
    full = mx.broadcast_to(
        mx.array(values, mx.float32) if not isinstance(values, mx.array) else values, np_shape(ref)
    )
    store_raw(ref, encode(full, ref.dtype))


def copy_raw(src: TensorRef, dst: TensorRef) -> None:
    """Copy ``src``'s elements into ``dst`` in logical order, bytes unchanged (same dtype)."""
    if src.dtype != dst.dtype:
        raise TypeError(f"[Metal] raw copy from {src.dtype.name} to {dst.dtype.name}")
    if dst.n == 0:
        return
    store_raw(dst, raw(src).reshape(_stored_shape(dst)))
