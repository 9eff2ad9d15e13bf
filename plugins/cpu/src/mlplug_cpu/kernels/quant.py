"""Strided views of device buffers and dtype conversion (SEMANTICS §1.1, §3.2).

Every kernel reads and writes tensors through these helpers, so no kernel assumes a layout:

* :func:`raw` is a numpy view of a :class:`TensorRef`'s stored elements, built over the buffer's
  bytes with the ref's byte strides, in numpy order ``(ne3, ne2, ne1, ne0)``. Block dtypes keep
  dim 0 as whole blocks: ``(ne3, ne2, ne1, ne0 / B, S)`` bytes. Views may overlap (zero strides);
  writes go straight into the buffer.
* :func:`decode` turns stored elements into F32 logical values; :func:`encode` the reverse for the
  dtypes a result can have. :func:`load` and :func:`store` combine the two with :func:`raw`.
* :func:`copy_raw` copies between two windows of one dtype, bytes unchanged.
"""

from __future__ import annotations

from typing import Any

import gguf
import numpy as np

from mlplug.device import DType, TensorRef, contiguous_strides

__all__ = [
    "HostBytes",
    "commit",
    "copy_raw",
    "decode",
    "dest",
    "encode",
    "host_ref",
    "load",
    "np_shape",
    "raw",
    "reshaped_view",
    "store",
]

# Stored element types of the scalar dtypes. BF16 has no numpy type: its bits live in uint16.
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


class HostBytes:
    """A scratch byte array that :func:`raw` can view like a device buffer."""

    __slots__ = ("data",)

    def __init__(self, nbytes: int) -> None:
        self.data = np.zeros(nbytes, np.uint8)


def host_ref(dtype: DType, ne: tuple[int, int, int, int]) -> TensorRef:
    """Return a packed scratch window of ``dtype`` and extents ``ne`` in host memory."""
    scratch = HostBytes(dtype.nbytes(ne[0] * ne[1] * ne[2] * ne[3]))
    return TensorRef(scratch, 0, ne, contiguous_strides(ne, dtype), dtype)  # type: ignore[arg-type]


def np_shape(ref: TensorRef) -> tuple[int, int, int, int]:
    """Return the ref's logical shape in numpy order ``(ne3, ne2, ne1, ne0)``."""
    return (ref.ne[3], ref.ne[2], ref.ne[1], ref.ne[0])


def _buffer_bytes(ref: TensorRef) -> np.ndarray:
    data = getattr(ref.buffer, "data", None)
    if not isinstance(data, np.ndarray):
        raise TypeError(f"[cpu] {type(ref.buffer).__name__} is not a buffer of this device")
    return data


def raw(ref: TensorRef) -> np.ndarray:
    """Return a writable view of the stored elements of ``ref`` (numpy order).

    Scalar dtypes give shape ``(ne3, ne2, ne1, ne0)`` of their stored type (uint16 bits for
    BF16); block dtypes give ``(ne3, ne2, ne1, ne0 // B, S)`` uint8. A zero-element ref gives
    an empty array that is not backed by the buffer.
    """
    ne, nb, dtype = ref.ne, ref.nb, ref.dtype
    if dtype.is_block:
        shape: tuple[int, ...] = (ne[3], ne[2], ne[1], ne[0] // dtype.block_size, dtype.type_size)
        strides: tuple[int, ...] = (nb[3], nb[2], nb[1], nb[0], 1)
        np_dtype = np.dtype(np.uint8)
    else:
        shape, strides, np_dtype = np_shape(ref), (nb[3], nb[2], nb[1], nb[0]), _SCALAR[dtype]
    if ref.n == 0:
        return np.zeros(shape, np_dtype)
    # np.ndarray checks that the strided window lies inside the buffer, so a bad ref raises
    # instead of reading or writing out of bounds (which as_strided would do).
    return np.ndarray(
        shape, np_dtype, buffer=_buffer_bytes(ref), offset=ref.offset, strides=strides
    )


def _ggml(dtype: DType) -> gguf.GGMLQuantizationType:
    return gguf.GGMLQuantizationType(dtype.ggml_type)


def _dequantize_q8_k(blocks: np.ndarray) -> np.ndarray:
    # gguf.quants has no Q8_K (llama.cpp uses it only as an intermediate format), so it is
    # decoded here per SEMANTICS §3.2: F32 d, 256 int8 q, 16 int16 sums (unused); value d·q.
    d = np.ascontiguousarray(blocks[:, :4]).view(np.float32)
    q = blocks[:, 4:260].view(np.int8).astype(np.float32)
    return q * d


def decode(stored: np.ndarray, dtype: DType) -> np.ndarray:
    """Return the F32 logical values of elements in their stored form (as :func:`raw` gives).

    F32 input is returned as is (possibly a view: callers must not write to it).
    """
    if dtype == DType.F32:
        return stored
    if dtype == DType.BF16:
        return (stored.astype(np.uint32) << 16).view(np.float32)
    if not dtype.is_block:
        return stored.astype(np.float32)
    shape = (*stored.shape[:-2], stored.shape[-2] * dtype.block_size)
    if stored.size == 0:
        return np.zeros(shape, np.float32)
    blocks = np.ascontiguousarray(stored).reshape(-1, dtype.type_size)
    if dtype == DType.Q8_K:
        return _dequantize_q8_k(blocks).reshape(shape)
    # One row holding every block: gguf then dequantises everything in a single vectorised call
    # (it would otherwise loop in Python over groups of 16 rows).
    return gguf.quants.dequantize(blocks.reshape(1, -1), _ggml(dtype)).reshape(shape)


def _f32_to_bf16(values: np.ndarray) -> np.ndarray:
    # Round to nearest even on the upper 16 bits; NaNs keep their sign and top payload bits and
    # are made quiet so that truncation cannot turn them into infinities.
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16
    quiet_nan = (bits >> 16) | np.uint32(0x0040)
    return np.where(np.isnan(values), quiet_nan, rounded).astype(np.uint16)


def encode(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Return float ``values`` (numpy order, dim 0 last) in ``dtype``'s stored form.

    F32→F16 rounds to nearest even with overflow to ±inf; F32→BF16 likewise, NaN stays NaN;
    block dtypes are quantised by ``gguf.quants.quantize`` (bit-exact with ggml's reference
    quantisers); integer dtypes truncate.
    """
    if dtype == DType.BF16:
        return _f32_to_bf16(np.asarray(values, np.float32))
    if not dtype.is_block:
        return np.asarray(values).astype(_SCALAR[dtype])
    flat = np.ascontiguousarray(values, dtype=np.float32)
    shape = (*flat.shape[:-1], flat.shape[-1] // dtype.block_size, dtype.type_size)
    if flat.size == 0:
        return np.zeros(shape, np.uint8)
    try:
        blocks = gguf.quants.quantize(flat.reshape(1, -1), _ggml(dtype))
    except NotImplementedError as err:
        raise NotImplementedError(f"[cpu] cannot quantise to {dtype.name}") from err
    return blocks.reshape(shape)


def load(ref: TensorRef) -> np.ndarray:
    """Return the F32 logical values of ``ref`` in numpy order (a read-only view for F32)."""
    values = decode(raw(ref), ref.dtype)
    if values.flags.writeable and ref.dtype == DType.F32:
        values = values.view()
        values.flags.writeable = False
    return values


def store(ref: TensorRef, values: np.ndarray | float) -> None:
    """Write float ``values`` (broadcastable to ref's numpy shape) into ``ref``, converting."""
    if ref.n == 0:
        return
    dst = raw(ref)
    if ref.dtype in (DType.F32, DType.F16, DType.F64):
        # numpy's cast is the IEEE conversion (F16: round to nearest even, overflow to inf).
        np.copyto(dst, values, casting="unsafe")
        return
    full = np.broadcast_to(np.asarray(values, np.float32), np_shape(ref))
    np.copyto(dst, encode(full, ref.dtype))


def copy_raw(src: TensorRef, dst: TensorRef) -> None:
    """Copy ``src``'s elements into ``dst`` in logical order, bytes unchanged (same dtype)."""
    if src.dtype != dst.dtype:
        raise TypeError(f"[cpu] raw copy from {src.dtype.name} to {dst.dtype.name}")
    if dst.n == 0:
        return
    source, target = raw(src), raw(dst)
    if source.shape != target.shape:
        source = source.reshape(target.shape)
    np.copyto(target, source)


def reshaped_view(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """Return ``array`` reshaped to ``shape`` if that needs no copy, else ``None``."""
    out = array.reshape(shape)
    # A reshape either views the array or copies it into fresh memory, so the bounds test of
    # may_share_memory is exact here.
    if out.size and not np.may_share_memory(out, array):
        return None
    return out


def dest(ref: TensorRef) -> np.ndarray:
    """Return an F32 array to compute ``ref``'s values in: its own view when ``ref`` is F32."""
    if ref.dtype == DType.F32:
        return raw(ref)
    return np.empty(np_shape(ref), np.float32)


def commit(ref: TensorRef, values: np.ndarray) -> None:
    """Finish a result computed in ``dest(ref)``: round it into ``ref`` unless it is F32."""
    if ref.dtype != DType.F32:
        store(ref, values)
