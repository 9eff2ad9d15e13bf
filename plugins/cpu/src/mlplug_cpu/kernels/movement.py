"""Data movement kernels: copies, ``set``, ``pad``, ``concat``/``stack``, ``repeat``, ``rows``,
``set_rows``, ``arange`` (SEMANTICS §4.3, §5.6-§5.7).

Same-dtype moves copy stored bytes (exact for every dtype, block types included); ``copy``
between different CACHE dtypes goes through F32 values; ``rows`` gathers the stored rows first and
converts only those. View ops (``reshape``, ``view``, ``permute``) share their source's storage and
have nothing to execute.

``rows`` (F32/F16/BF16/I32/Q8_0/Q4_0 tables) and ``set_rows`` (F32/F16/BF16 rows into F32, F16,
BF16, Q8_0 or Q4_0 caches) first try the C extension (``_native_ops.c``), which checks the ids
and converts exactly as the numpy code does (quantising bit for bit as ``gguf``); other dtypes,
and rows holding inf or NaN bound for a quantised cache, take the numpy path.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlplug.device import DType, Node, TensorRef
from mlplug_cpu.kernels import native
from mlplug_cpu.kernels.quant import copy_raw, decode, host_ref, load, np_shape, raw, store

__all__ = ["KERNELS", "checked_ids", "last_writes"]


def _view_op(node: Node) -> None:
    """Views share storage with their source: nothing to execute."""


def contiguous(node: Node) -> None:
    """Packed copy of the receiver (``contiguous``, ``duplicate``)."""
    copy_raw(node.operand(), node.out)


def copy(node: Node) -> None:
    """Write the receiver's elements into the destination window in logical order."""
    a = node.operand()
    if a.dtype == node.out.dtype:
        copy_raw(a, node.out)
    elif node.out.n:
        store(node.out, load(a).reshape(np_shape(node.out)))


def set_(node: Node) -> None:
    """Packed copy of ``a`` with ``b`` written at a byte offset with the given strides."""
    a, b = node.operand(0), node.operand(1)
    out = node.out
    # The offset and strides address the *packed* result; work in scratch if out is not packed.
    packed = out if out.contiguous else host_ref(out.dtype, out.ne)
    copy_raw(a, packed)
    if b.n:
        window = TensorRef(
            packed.buffer,
            packed.offset + int(node.params["offset"]),
            b.ne,
            tuple(node.params["nb"]),
            b.dtype,
        )
        copy_raw(b, window)
    if packed is not out:
        copy_raw(packed, out)


def pad(node: Node) -> None:
    """Zeros appended at the end of each dim."""
    if node.out.n == 0:
        return
    a = node.operand()
    o = raw(node.out)
    o[...] = 0  # zero bits are the value 0 in every padded dtype (F32, F16, BF16, I32)
    if a.n:
        ne = a.ne
        o[: ne[3], : ne[2], : ne[1], : ne[0]] = raw(a)


def concat(node: Node) -> None:
    """Operands one after another along ``dim`` (``concat`` and ``stack``)."""
    if node.out.n == 0:
        return
    o = raw(node.out)
    axis = 3 - int(node.params["dim"])
    start = 0
    for ref in node.srcs:
        if ref is None or ref.n == 0:
            continue
        part = raw(ref)
        index: list[slice] = [slice(None)] * 4
        index[axis] = slice(start, start + part.shape[axis])
        o[tuple(index)] = part
        start += part.shape[axis]


def repeat(node: Node) -> None:
    """The whole tensor tiled ``n`` times along ``dim``."""
    if node.out.n == 0:
        return
    reps = [1, 1, 1, 1]
    reps[3 - int(node.params["dim"])] = int(node.params["n"])
    np.copyto(raw(node.out), np.tile(raw(node.operand()), reps))


def checked_ids(ids: np.ndarray, axis_len: int, op: str) -> np.ndarray:
    """Return ``ids`` as an index array after checking ``0 ≤ id < axis_len``.

    Raises:
        IndexError: Some id is out of range (found at compute time, SEMANTICS §5.4).
    """
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= axis_len):
        bad = ids[(ids < 0) | (ids >= axis_len)].ravel()[0]
        raise IndexError(f"[{op}] index {int(bad)} out of range 0..{axis_len - 1}")
    return ids.astype(np.intp, copy=False)


def rows(node: Node) -> None:
    """Gather: ``out[:, i, j, k] = a[:, ids[i, j, k], j, k]``, converted after gathering."""
    if node.out.n == 0:
        return
    a, ids_ref = node.operand(0), node.operand(1)
    ext = native.extension()
    if ext is not None and ext.ops_rows(node.out, a, ids_ref):
        return
    table = raw(a)  # (a3, a2, a1, ne0) elements or (a3, a2, a1, blocks, S) bytes
    ids = checked_ids(raw(ids_ref)[0], a.ne[1], "rows")  # (a3, a2, n)
    i3 = np.arange(a.ne[3])[:, None, None]
    i2 = np.arange(a.ne[2])[None, :, None]
    picked = table[i3, i2, ids]
    if node.out.dtype == DType.I32:
        np.copyto(raw(node.out), picked)
    else:
        store(node.out, decode(picked, a.dtype))


def last_writes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(rows, targets)``: for each distinct id the last row ``r`` written to it."""
    targets, first_from_end = np.unique(ids[::-1], return_index=True)
    return ids.size - 1 - first_from_end, targets


def set_rows(node: Node) -> None:
    """Scatter: ``dst[:, ids[r], j, k] = a[:, r, j, k]`` (converted), a later row winning."""
    a, ids_ref = node.operand(0), node.operand(2)
    out = node.out
    if a.n == 0 or out.n == 0:
        return
    ext = native.extension()
    if ext is not None and ext.ops_set_rows(out, a, ids_ref):
        return
    ids = checked_ids(raw(ids_ref).reshape(-1), out.ne[1], "set_rows")
    if a.dtype == out.dtype:
        source = raw(a)
    else:
        converted = host_ref(out.dtype, a.ne)
        store(converted, load(a))
        source = raw(converted)
    dst = raw(out)  # (d3, d2, N, ne0) elements, or (d3, d2, N, blocks, S) bytes
    if ids.size == 1 or bool((ids[1:] > ids[:-1]).all()):
        dst[:, :, ids] = source  # distinct ids (a KV-cache batch): no duplicate to resolve
        return
    picked, targets = last_writes(ids)
    dst[:, :, targets] = source[:, :, picked]


def arange(node: Node) -> None:
    """``numpy.arange(start, stop, step)`` in float64, then F32 (nearest) or I32 (truncated)."""
    p = node.params
    n = int(p["n"])
    if n == 0:
        return
    values = np.arange(p["start"], p["stop"], p["step"], dtype=np.float64)
    if len(values) != n:  # numpy's length can differ by one from ceil() through rounding
        values = p["start"] + np.arange(n, dtype=np.float64) * p["step"]
    if node.out.dtype == DType.I32:
        values = np.trunc(values)
    np.copyto(raw(node.out), values.reshape(np_shape(node.out)), casting="unsafe")


KERNELS: dict[str, Callable[[Node], None]] = {
    "reshape": _view_op,
    "view": _view_op,
    "permute": _view_op,
    "contiguous": contiguous,
    "duplicate": contiguous,
    "copy": copy,
    "set": set_,
    "pad": pad,
    "concat": concat,
    "stack": concat,
    "repeat": repeat,
    "rows": rows,
    "set_rows": set_rows,
    "arange": arange,
}
