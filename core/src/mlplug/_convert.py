"""Host-side reading of tensor bytes: strided gather and conversion to F32 (SEMANTICS §2.4, §3.2).

Used by ``Tensor.bytes()/floats()/numpy()`` and by the engine to copy strided spans between
devices. numpy (and ``gguf`` for dequantisation) are imported lazily so ``import mlplug`` stays
light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlplug.dtype import DType
from mlplug.errors import UnsupportedOpError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["gather", "to_f32", "to_numpy"]

_NUMPY_NAMES = {
    DType.F32: "float32",
    DType.F16: "float16",
    DType.F64: "float64",
    DType.I8: "int8",
    DType.I16: "int16",
    DType.I32: "int32",
    DType.I64: "int64",
}


def gather(
    span: bytes | memoryview,
    offset: int,
    ne: tuple[int, int, int, int],
    nb: tuple[int, int, int, int],
    dtype: DType,
) -> bytes:
    """Return the logical-order bytes of a strided window.

    Args:
        span: Bytes holding the window (``offset`` is the window's start inside them).
        offset: Byte offset of element (0, 0, 0, 0) in ``span``.
        ne: Extents, dim 0 fastest.
        nb: Byte strides; for block dtypes ``nb[0]`` steps one block.
        dtype: Element type.
    """
    import numpy as np

    n = ne[0] * ne[1] * ne[2] * ne[3]
    if n == 0:
        return b""
    size, blocks0 = dtype.type_size, ne[0] // dtype.block_size
    packed = nb[0] == size and nb[1] == size * blocks0 and nb[2] == nb[1] * ne[1]
    if packed and nb[3] == nb[2] * ne[2]:  # the bytes are already in logical order
        nbytes = nb[3] * ne[3]
        if offset == 0 and len(span) == nbytes and isinstance(span, bytes):
            return span
        return bytes(memoryview(span).cast("B")[offset : offset + nbytes])
    base = np.frombuffer(span, dtype=np.uint8)
    view = np.lib.stride_tricks.as_strided(
        base[offset:],
        shape=(ne[3], ne[2], ne[1], blocks0, size),
        strides=(nb[3], nb[2], nb[1], nb[0], 1),
        writeable=False,
    )
    return np.ascontiguousarray(view).tobytes()


def _bf16_to_f32(raw: bytes) -> np.ndarray:
    import numpy as np

    bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return bits.view(np.float32)


def _q8_k_to_f32(raw: bytes) -> np.ndarray:
    # gguf.quants has no Q8_K: per 292-byte block, an F32 scale, 256 int8 values, 16 int16 sums.
    import numpy as np

    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 292)
    d = blocks[:, :4].copy().view("<f4")
    q = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(-1).astype(np.float32)


def to_f32(raw: bytes, dtype: DType) -> np.ndarray:
    """Convert packed logical-order bytes of ``dtype`` to a 1-D float32 array.

    Raises:
        UnsupportedOpError: The dtype has no conversion here (``OTHER``, or a type the
            installed ``gguf`` cannot dequantise).
    """
    import numpy as np

    if dtype in _NUMPY_NAMES:
        return np.frombuffer(raw, dtype="<" + np.dtype(_NUMPY_NAMES[dtype]).str[1:]).astype(
            np.float32
        )
    if dtype is DType.BF16:
        return _bf16_to_f32(raw)
    if dtype is DType.Q8_K:
        return _q8_k_to_f32(raw)
    if dtype is DType.OTHER:
        raise UnsupportedOpError("floats: dtype OTHER has no values")
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        qtype = GGMLQuantizationType(dtype.ggml_type)
        data = np.frombuffer(raw, dtype=np.uint8)
        return np.asarray(dequantize(data, qtype), dtype=np.float32).reshape(-1)
    except (ValueError, NotImplementedError, KeyError) as err:
        raise UnsupportedOpError(f"floats: cannot convert {dtype.name} to F32 ({err})") from err


def to_numpy(raw: bytes, dtype: DType, numpy_shape: tuple[int, ...]) -> np.ndarray:
    """Return the values as a new numpy array of ``numpy_shape`` (SEMANTICS §1.5 dtypes)."""
    import numpy as np

    if dtype in _NUMPY_NAMES:
        arr = np.frombuffer(raw, dtype="<" + np.dtype(_NUMPY_NAMES[dtype]).str[1:])
        return arr.astype(np.dtype(_NUMPY_NAMES[dtype])).reshape(numpy_shape)
    return to_f32(raw, dtype).reshape(numpy_shape).copy()
