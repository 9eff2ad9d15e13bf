"""Strided views of device buffers, dtype conversion and block (de)quantisation, on ``api.xp``.

The CUDA twin of ``mlplug_cpu.kernels.quant``: every kernel reads and writes tensors through
these helpers, on cupy arrays (or numpy under emulation, :mod:`mlplug_cuda.xp`):

* :func:`raw` views a :class:`TensorRef`'s stored elements with its byte strides, numpy order
  ``(ne3, ne2, ne1, ne0)``; block dtypes keep dim 0 as whole blocks ``(…, ne0 / B, S)`` bytes.
* :func:`decode` / :func:`encode` convert stored elements to F32 values and back.
* Block types are described by **element maps** (:class:`BlockCodes`): for each element of a
  block, which bits of which bytes hold its integer code, and which sub-block scale and min
  apply, so that ``value = d[sub] · code − m[sub]``. One table per type drives the vectorised
  dequantisation here (cupy fancy indexing on the GPU) and the numpy twin of the quantised
  mat-vec kernel (:mod:`mlplug_cuda.kernels.mmvq`), whose CUDA C computes the same codes. gguf's
  dequantisers are numpy-only (they cannot run on cupy arrays), hence this module.

Decoded on the device: F32, F16, BF16, F64, the integer types, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
Q2_K…Q6_K and Q8_K. The IQ types, TQ1_0/TQ2_0 and MXFP4 (lattice codebooks, rare in practice)
are decoded on the host with gguf's dequantisers and uploaded (:data:`HOST_DECODED`): exact, but a
synchronisation per use, so graphs reading them are never captured for replay.
Encoded: the float types, the integer types, Q8_0 and Q4_0 (bit-exact with ggml's quantisers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from mlplug.device import DType, TensorRef, contiguous_strides
from mlplug_cuda.xp import ArrayApi

__all__ = [
    "DECODED",
    "ENCODED",
    "HOST_DECODED",
    "BlockCodes",
    "Scratch",
    "api_of",
    "codes",
    "commit",
    "copy_raw",
    "decode",
    "dest",
    "encode",
    "load",
    "np_shape",
    "raw",
    "scratch_ref",
    "store",
]

_SCALAR: dict[DType, np.dtype[Any]] = {
    DType.F32: np.dtype(np.float32),
    DType.F16: np.dtype(np.float16),
    DType.BF16: np.dtype(np.uint16),
    DType.F64: np.dtype(np.float64),
    DType.I8: np.dtype(np.int8),
    DType.I16: np.dtype(np.int16),
    DType.I32: np.dtype(np.int32),
    DType.I64: np.dtype(np.int64),
}


class Scratch:
    """Device scratch bytes that :func:`raw` can view like a buffer."""

    __slots__ = ("api", "data", "nbytes")

    def __init__(self, api: ArrayApi, nbytes: int) -> None:
        self.api = api
        self.data = api.xp.zeros(nbytes, np.uint8)
        self.nbytes = nbytes


def api_of(ref: TensorRef) -> ArrayApi:
    """Return the array API of the buffer ``ref`` points into.

    Raises:
        TypeError: The buffer belongs to another device type.
    """
    api = getattr(ref.buffer, "api", None)
    if not isinstance(api, ArrayApi):
        raise TypeError(f"[cuda] {type(ref.buffer).__name__} is not a buffer of this device")
    return api


def scratch_ref(api: ArrayApi, dtype: DType, ne: tuple[int, int, int, int]) -> TensorRef:
    """Return a packed scratch window of ``dtype`` and extents ``ne`` in device memory."""
    scratch = Scratch(api, dtype.nbytes(ne[0] * ne[1] * ne[2] * ne[3]))
    return TensorRef(scratch, 0, ne, contiguous_strides(ne, dtype), dtype)  # type: ignore[arg-type]


def np_shape(ref: TensorRef) -> tuple[int, int, int, int]:
    """Return the ref's logical shape in numpy order ``(ne3, ne2, ne1, ne0)``."""
    return (ref.ne[3], ref.ne[2], ref.ne[1], ref.ne[0])


def raw(ref: TensorRef) -> Any:
    """Return a writable view of the stored elements of ``ref`` (numpy order)."""
    api = api_of(ref)
    ne, nb, dtype = ref.ne, ref.nb, ref.dtype
    if dtype.is_block:
        shape: tuple[int, ...] = (ne[3], ne[2], ne[1], ne[0] // dtype.block_size, dtype.type_size)
        strides: tuple[int, ...] = (nb[3], nb[2], nb[1], nb[0], 1)
        np_dtype = np.dtype(np.uint8)
    else:
        shape, strides, np_dtype = np_shape(ref), (nb[3], nb[2], nb[1], nb[0]), _SCALAR[dtype]
    return api.view(ref.buffer.data, ref.offset, shape, np_dtype, strides)  # type: ignore[union-attr]


# -- block types: element maps ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockCodes:
    """How one block type stores its elements (see the module docstring).

    Attributes:
        lo_byte, lo_shift, lo_mask: The low bits of element ``e``'s code:
            ``(block[lo_byte[e]] >> lo_shift[e]) & lo_mask``.
        hi_byte, hi_shift: The optional high bit(s): ``(block[hi_byte[e]] >> hi_shift[e]) &
            hi_mask`` shifted left by ``lo_bits``; ``None`` when the type has none.
        hi_mask: Mask of the high bits.
        lo_bits: Width of the low bits.
        offset: Subtracted from the assembled code (Q4_0: 8).
        signed: The low bits are a signed byte (Q8_0, Q8_K).
        sub: Elements per sub-block (one scale and min each).
        scales: ``scales(blocks) -> (d, m)`` F32 per sub-block, shapes ``(n, B / sub)``.
    """

    lo_byte: np.ndarray
    lo_shift: np.ndarray
    lo_mask: int
    hi_byte: np.ndarray | None
    hi_shift: np.ndarray | None
    hi_mask: int
    lo_bits: int
    offset: int
    signed: bool
    sub: int
    scales: Callable[[Any, Any], tuple[Any, Any]]


def _f16(xp: Any, blocks: Any, at: int) -> Any:
    return xp.ascontiguousarray(blocks[:, at : at + 2]).view(np.float16)[:, 0].astype(np.float32)


def _zeros_like(xp: Any, d: Any) -> Any:
    return xp.zeros_like(d)


def _legacy(scale_at: int, min_at: int | None) -> Callable[[Any, Any], tuple[Any, Any]]:
    def scales(xp: Any, blocks: Any) -> tuple[Any, Any]:
        d = _f16(xp, blocks, scale_at)[:, None]
        m = -_f16(xp, blocks, min_at)[:, None] if min_at is not None else _zeros_like(xp, d)
        return d, m

    return scales


def _q8_k_scales(xp: Any, blocks: Any) -> tuple[Any, Any]:
    d = xp.ascontiguousarray(blocks[:, :4]).view(np.float32)
    return d, _zeros_like(xp, d)


def _q2_k_scales(xp: Any, blocks: Any) -> tuple[Any, Any]:
    sc = blocks[:, :16]
    d, dmin = _f16(xp, blocks, 80)[:, None], _f16(xp, blocks, 82)[:, None]
    return d * (sc & 15).astype(np.float32), dmin * (sc >> 4).astype(np.float32)


def _q3_k_scales(xp: Any, blocks: Any) -> tuple[Any, Any]:
    s = np.arange(16)
    packed = blocks[:, 96:108].astype(np.int32)
    low = (packed[:, xp.asarray(s % 8)] >> xp.asarray(4 * (s // 8))) & 15
    high = (packed[:, xp.asarray(8 + s % 4)] >> xp.asarray(2 * (s // 4))) & 3
    d = _f16(xp, blocks, 108)[:, None] * ((low | (high << 4)) - 32).astype(np.float32)
    return d, _zeros_like(xp, d)


def _k_scale_min(xp: Any, packed: Any) -> tuple[Any, Any]:
    """Unpack the 6-bit scales and mins of Q4_K/Q5_K (12 bytes) into 8 of each."""
    p = packed.astype(np.int32)
    dq, mq, md = p[:, 0:4], p[:, 4:8], p[:, 8:12]
    sc = xp.concatenate([dq & 63, (md & 15) | ((dq >> 2) & 48)], axis=1)
    mn = xp.concatenate([mq & 63, (md >> 4) | ((mq >> 2) & 48)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _q45_k_scales(xp: Any, blocks: Any) -> tuple[Any, Any]:
    sc, mn = _k_scale_min(xp, blocks[:, 4:16])
    return _f16(xp, blocks, 0)[:, None] * sc, _f16(xp, blocks, 2)[:, None] * mn


def _q6_k_scales(xp: Any, blocks: Any) -> tuple[Any, Any]:
    sc = xp.ascontiguousarray(blocks[:, 192:208]).view(np.int8).astype(np.float32)
    d = _f16(xp, blocks, 208)[:, None] * sc
    return d, _zeros_like(xp, d)


def _arr(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _nibbles32(base: int) -> tuple[np.ndarray, np.ndarray]:
    # 32-element blocks: element e < 16 is the low nibble of qs[e], e >= 16 the high of qs[e-16].
    e = np.arange(32)
    return _arr(base + e % 16), _arr(4 * (e // 16))


def _bits(base: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    # Bit e % 8 ... : element e's bit is bit (e % 32) of a little-endian u32 at base (Q5_0/Q5_1).
    e = np.arange(n)
    return _arr(base + e // 8), _arr(e % 8)


def _k_maps() -> dict[DType, BlockCodes]:
    e = np.arange(256)
    half, r = e // 128, e % 128
    two_bit = (_arr(half * 32 + r % 32), _arr((r // 32) * 2))  # Q2_K/Q3_K low bits
    nib64 = (_arr((e // 64) * 32 + e % 32), _arr(4 * ((e % 64) // 32)))  # Q4_K/Q5_K
    hbit = (_arr(e % 32), _arr(e // 32))  # Q3_K/Q5_K high bit
    q6_lo = (_arr(half * 64 + r % 64), _arr(4 * (r // 64)))
    q6_hi = (_arr(half * 32 + r % 32), _arr(2 * (r // 32)))
    return {
        DType.Q2_K: BlockCodes(
            two_bit[0] + 16, two_bit[1], 3, None, None, 0, 2, 0, False, 16, _q2_k_scales
        ),
        # Q3_K: code = low 2 bits - 4 unless the hmask bit is set: (low | h<<2) - 4.
        DType.Q3_K: BlockCodes(
            two_bit[0] + 32, two_bit[1], 3, hbit[0], hbit[1], 1, 2, 4, False, 16, _q3_k_scales
        ),
        DType.Q4_K: BlockCodes(
            nib64[0] + 16, nib64[1], 15, None, None, 0, 4, 0, False, 32, _q45_k_scales
        ),
        DType.Q5_K: BlockCodes(
            nib64[0] + 48, nib64[1], 15, hbit[0] + 16, hbit[1], 1, 4, 0, False, 32, _q45_k_scales
        ),
        DType.Q6_K: BlockCodes(
            q6_lo[0], q6_lo[1], 15, q6_hi[0] + 128, q6_hi[1], 3, 4, 32, False, 16, _q6_k_scales
        ),
        DType.Q8_K: BlockCodes(
            _arr(4 + e), _arr(0 * e), 255, None, None, 0, 8, 0, True, 256, _q8_k_scales
        ),
    }


def _legacy_maps() -> dict[DType, BlockCodes]:
    e = np.arange(32)
    zero = _arr(0 * e)
    return {
        DType.Q4_0: BlockCodes(
            *_nibbles32(2), 15, None, None, 0, 4, 8, False, 32, _legacy(0, None)
        ),
        DType.Q4_1: BlockCodes(*_nibbles32(4), 15, None, None, 0, 4, 0, False, 32, _legacy(0, 2)),
        DType.Q5_0: BlockCodes(
            *_nibbles32(6), 15, *_bits(2, 32), 1, 4, 16, False, 32, _legacy(0, None)
        ),
        DType.Q5_1: BlockCodes(
            *_nibbles32(8), 15, *_bits(4, 32), 1, 4, 0, False, 32, _legacy(0, 2)
        ),
        DType.Q8_0: BlockCodes(
            _arr(2 + e), zero, 255, None, None, 0, 8, 0, True, 32, _legacy(0, None)
        ),
    }


CODES: dict[DType, BlockCodes] = {**_legacy_maps(), **_k_maps()}
"""The element maps of every block type decoded on the device."""

HOST_DECODED: frozenset[DType] = frozenset(d for d in DType if d.is_block and d not in CODES)
"""Block types decoded through the host (gguf's numpy dequantisers)."""

DECODED: frozenset[DType] = frozenset(_SCALAR) | frozenset(CODES) | HOST_DECODED
"""Dtypes this device reads as values."""

ENCODED: frozenset[DType] = frozenset(_SCALAR) | {DType.Q8_0, DType.Q4_0}
"""Dtypes this device writes from values."""


def codes(api: ArrayApi, blocks: Any, dtype: DType) -> tuple[Any, Any, Any]:
    """Return ``(q, d, m)`` of packed blocks ``(n, S)``: ``value = d[sub] · q − m[sub]``.

    ``q`` is ``(n, B)`` int16; ``d`` and ``m`` are ``(n, B / sub)`` F32.
    """
    xp = api.xp
    spec = CODES[dtype]
    # numpy uint8 scalars keep every step uint8 on numpy and cupy alike (a Python int may promote).
    shift = api.asarray(spec.lo_shift.astype(np.uint8))
    lo = (blocks[:, api.asarray(spec.lo_byte)] >> shift) & np.uint8(spec.lo_mask)
    q = lo.view(np.int8).astype(np.int16) if spec.signed else lo.astype(np.int16)
    if spec.hi_byte is not None and spec.hi_shift is not None:
        hi = blocks[:, api.asarray(spec.hi_byte)] >> api.asarray(spec.hi_shift.astype(np.uint8))
        q = q | ((hi & np.uint8(spec.hi_mask)).astype(np.int16) << np.int16(spec.lo_bits))
    if spec.offset:
        q = q - np.int16(spec.offset)
    d, m = spec.scales(xp, blocks)
    return q, d, m


def _dequantize(api: ArrayApi, blocks: Any, dtype: DType, out_dtype: Any) -> Any:
    """Return the values of packed blocks ``(n, S)`` as ``(n, B)``."""
    q, d, m = codes(api, blocks, dtype)
    spec = CODES[dtype]
    n = blocks.shape[0]
    groups = dtype.block_size // spec.sub
    values = q.reshape(n, groups, spec.sub).astype(np.float32) * d[:, :, None] - m[:, :, None]
    return values.reshape(n, dtype.block_size).astype(out_dtype, copy=False)


def decode(api: ArrayApi, stored: Any, dtype: DType, out_dtype: Any = np.float32) -> Any:
    """Return the logical values of stored elements (as :func:`raw` gives) in ``out_dtype``.

    F32 input is returned as is when ``out_dtype`` is F32 (possibly a view: do not write to it).
    """
    xp = api.xp
    if dtype == DType.BF16:
        return (stored.astype(np.uint32) << 16).view(np.float32).astype(out_dtype, copy=False)
    if not dtype.is_block:
        return stored.astype(out_dtype, copy=False)
    shape = (*stored.shape[:-2], stored.shape[-2] * dtype.block_size)
    if stored.size == 0:
        return xp.zeros(shape, out_dtype)
    blocks = xp.ascontiguousarray(stored).reshape(-1, dtype.type_size)
    if dtype in HOST_DECODED:
        host = api.asnumpy(blocks).reshape(1, -1)
        kind = gguf.GGMLQuantizationType(dtype.ggml_type)
        values = gguf.quants.dequantize(host, kind).astype(out_dtype, copy=False)
        return api.asarray(values).reshape(shape)
    return _dequantize(api, blocks, dtype, out_dtype).reshape(shape)


def _roundf(xp: Any, x: Any) -> Any:
    # C's roundf: half away from zero (what ggml's quantisers use; numpy rounds half to even).
    return xp.sign(x) * xp.floor(xp.abs(x) + np.float32(0.5))


def _f32_to_bf16(xp: Any, values: Any) -> Any:
    bits = xp.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16
    quiet_nan = (bits >> 16) | np.uint32(0x0040)
    return xp.where(xp.isnan(values), quiet_nan, rounded).astype(np.uint16)


def _quantize_q8_0(xp: Any, x: Any) -> Any:
    d = xp.abs(x).max(axis=1, keepdims=True) / np.float32(127)
    inv = xp.where(d == 0, np.float32(0), np.float32(1) / xp.where(d == 0, np.float32(1), d))
    q = _roundf(xp, x * inv).astype(np.int8).view(np.uint8)
    return xp.concatenate([d.astype(np.float16).view(np.uint8), q], axis=1)


def _quantize_q4_0(xp: Any, x: Any) -> Any:
    at = xp.abs(x).argmax(axis=1)[:, None]
    peak = xp.take_along_axis(x, at, axis=1)
    d = peak / np.float32(-8)
    inv = xp.where(d == 0, np.float32(0), np.float32(1) / xp.where(d == 0, np.float32(1), d))
    q = xp.clip(xp.trunc(x * inv + np.float32(8.5)), 0, 15).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << np.uint8(4))
    return xp.concatenate([d.astype(np.float16).view(np.uint8), packed], axis=1)


def encode(api: ArrayApi, values: Any, dtype: DType) -> Any:
    """Return float ``values`` (numpy order) in ``dtype``'s stored form.

    F16 rounds to nearest even (overflow to ±inf), BF16 likewise (NaN stays NaN), Q8_0/Q4_0 as
    ggml's reference quantisers, integer dtypes truncate.
    """
    xp = api.xp
    if dtype == DType.BF16:
        return _f32_to_bf16(xp, values)
    if not dtype.is_block:
        return values.astype(_SCALAR[dtype])
    flat = xp.ascontiguousarray(values, dtype=np.float32)
    shape = (*flat.shape[:-1], flat.shape[-1] // dtype.block_size, dtype.type_size)
    if flat.size == 0:
        return xp.zeros(shape, np.uint8)
    blocks = flat.reshape(-1, dtype.block_size)
    if dtype == DType.Q8_0:
        return _quantize_q8_0(xp, blocks).reshape(shape)
    if dtype == DType.Q4_0:
        return _quantize_q4_0(xp, blocks).reshape(shape)
    raise NotImplementedError(f"[cuda] cannot quantise to {dtype.name} on the device")


def load(ref: TensorRef) -> Any:
    """Return the F32 logical values of ``ref`` in numpy order (a view for F32: do not write)."""
    return decode(api_of(ref), raw(ref), ref.dtype)


def store(ref: TensorRef, values: Any) -> None:
    """Write float ``values`` (broadcastable to ref's numpy shape) into ``ref``, converting."""
    if ref.n == 0:
        return
    api = api_of(ref)
    xp = api.xp
    dst = raw(ref)
    if ref.dtype in (DType.F32, DType.F16, DType.F64):
        xp.copyto(dst, values, casting="unsafe")
        return
    full = xp.broadcast_to(xp.asarray(values, np.float32), np_shape(ref))
    xp.copyto(dst, encode(api, full, ref.dtype))


def copy_raw(src: TensorRef, dst: TensorRef) -> None:
    """Copy ``src``'s elements into ``dst`` in logical order, bytes unchanged (same dtype)."""
    if src.dtype != dst.dtype:
        raise TypeError(f"[cuda] raw copy from {src.dtype.name} to {dst.dtype.name}")
    if dst.n == 0:
        return
    xp = api_of(dst).xp
    source, target = raw(src), raw(dst)
    if source.shape != target.shape:
        source = source.reshape(target.shape)
    xp.copyto(target, source)


def reshaped_view(api: ArrayApi, array: Any, shape: tuple[int, ...]) -> Any | None:
    """Return ``array`` reshaped to ``shape`` if that needs no copy, else ``None``."""
    out = array.reshape(shape)
    if out.size and not api.xp.may_share_memory(out, array):
        return None
    return out


def dest(ref: TensorRef) -> Any:
    """Return an F32 array to compute ``ref``'s values in: its own view when ``ref`` is F32."""
    if ref.dtype == DType.F32:
        return raw(ref)
    return api_of(ref).xp.empty(np_shape(ref), np.float32)


def commit(ref: TensorRef, values: Any) -> None:
    """Finish a result computed in ``dest(ref)``: round it into ``ref`` unless it is F32."""
    if ref.dtype != DType.F32:
        store(ref, values)
