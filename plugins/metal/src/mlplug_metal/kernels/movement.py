"""Data movement kernels: copies, ``set``, ``pad``, ``concat``/``stack``, ``repeat``, ``rows``,
``set_rows``, ``arange`` (SEMANTICS §4.3, §5.6-§5.7).

Same-dtype moves copy stored elements (exact for every dtype, block types included); ``copy``
between different CACHE dtypes goes through F32 values; ``rows`` gathers the stored rows first and
converts only those. View ops (``reshape``, ``view``, ``permute``) share their source's storage and
have nothing to execute.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import numpy as np

from mlplug.device import DType, Node
from mlplug_metal.kernels.quant import (
    AffineWeight,
    copy_raw,
    decode,
    encode,
    held,
    load,
    np_shape,
    raw,
    store,
    store_raw,
)

__all__ = ["KERNELS", "clipped_ids"]


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
    if out.n == 0:
        return
    packed = raw(a).reshape(-1)  # the result, packed, as stored elements
    if b.n:
        size = a.dtype.type_size
        nb = [int(node.params["offset"]) // size, *(s // size for s in node.params["nb"][1:])]
        ne = b.ne
        index = (
            nb[0]
            + (mx.arange(ne[3]) * nb[3]).reshape(-1, 1, 1, 1)
            + (mx.arange(ne[2]) * nb[2]).reshape(-1, 1, 1)
            + (mx.arange(ne[1]) * nb[1]).reshape(-1, 1)
            + mx.arange(ne[0])
        )
        packed = mx.contiguous(packed)
        packed[index.reshape(-1)] = raw(b).reshape(-1)
    store_raw(out, packed.reshape(np_shape(out)))


def pad(node: Node) -> None:
    """Zeros appended at the end of each dim (zero bits are 0 in every padded dtype)."""
    if node.out.n == 0:
        return
    a = node.operand()
    if a.n == 0:
        store_raw(node.out, mx.zeros(np_shape(node.out), raw(a).dtype))
        return
    widths = [(0, o - i) for o, i in zip(np_shape(node.out), np_shape(a), strict=True)]
    store_raw(node.out, mx.pad(raw(a), widths))


def concat(node: Node) -> None:
    """Operands one after another along ``dim`` (``concat`` and ``stack``)."""
    if node.out.n == 0:
        return
    parts = [raw(ref) for ref in node.srcs if ref is not None and ref.n]
    store_raw(node.out, mx.concatenate(parts, axis=3 - int(node.params["dim"])))


def repeat(node: Node) -> None:
    """The whole tensor tiled ``n`` times along ``dim``."""
    if node.out.n == 0:
        return
    reps = [1, 1, 1, 1]
    reps[3 - int(node.params["dim"])] = int(node.params["n"])
    store_raw(node.out, mx.tile(raw(node.operand()), reps))


def clipped_ids(ids: mx.array, axis_len: int) -> mx.array:
    """Return ``ids`` clamped into ``0 ≤ id < axis_len``.

    Out-of-range ids are only known on the device; clamping keeps every read inside the operand
    (SEMANTICS §5.4 allows unspecified values for the affected columns) without a host sync.
    """
    return mx.clip(ids, 0, max(axis_len - 1, 0))


def rows(node: Node) -> None:
    """Gather: ``out[:, i, j, k] = a[:, ids[i, j, k], j, k]``, converted after gathering."""
    if node.out.n == 0:
        return
    a, ids_ref = node.operand(0), node.operand(1)
    ids = clipped_ids(raw(ids_ref)[0], a.ne[1])  # (a3, a2, n)
    found = held(a)
    if found is not None and isinstance(found[0], AffineWeight):
        # A weight held in MLX affine form: gather its values.
        picked = mx.take_along_axis(load(a), ids[..., None], axis=2)
        store(node.out, picked)
        return
    table = raw(a)  # (a3, a2, a1, ne0) elements, or (a3, a2, a1, blocks, S) bytes
    index = ids[..., None, None] if a.dtype.is_block else ids[..., None]
    picked = mx.take_along_axis(table, index, axis=2)
    if node.out.dtype == DType.I32:
        store_raw(node.out, picked)
    else:
        store(node.out, decode(picked, a.dtype))


def set_rows(node: Node) -> None:
    """Scatter: ``dst[:, ids[r], j, k] = a[:, r, j, k]`` (converted), a later row winning.

    Rows whose id is out of range are not written (SEMANTICS §5.7).
    """
    a, ids_ref = node.operand(0), node.operand(2)
    out = node.out
    if a.n == 0 or out.n == 0:
        return
    ids = np.array(raw(ids_ref)).reshape(-1).astype(np.int64)
    keep = (ids >= 0) & (ids < out.ne[1])
    rows_kept = np.nonzero(keep)[0]
    # The last row written to each id wins.
    targets, first_from_end = np.unique(ids[rows_kept][::-1], return_index=True)
    picked = rows_kept[rows_kept.size - 1 - first_from_end]
    if targets.size == 0:
        return
    source = raw(a) if a.dtype == out.dtype else encode(load(a), out.dtype)
    dst = mx.array(raw(out))
    dst[:, :, mx.array(targets)] = source[:, :, mx.array(picked)]
    store_raw(out, dst)


def arange(node: Node) -> None:
    """``numpy.arange(start, stop, step)`` in float64, then F32 (nearest) or I32 (truncated).

    The values depend on the parameters only, so they are computed on the host in float64
    (the Metal GPU has no float64) and uploaded.
    """
    p = node.params
    n = int(p["n"])
    if n == 0:
        return
    values = np.arange(p["start"], p["stop"], p["step"], dtype=np.float64)
    if len(values) != n:  # numpy's length can differ by one from ceil() through rounding
        values = p["start"] + np.arange(n, dtype=np.float64) * p["step"]
    if node.out.dtype == DType.I32:
        data = mx.array(np.trunc(values).astype(np.int32))
    else:
        data = mx.array(values.astype(np.float32))
    store_raw(node.out, data.reshape(np_shape(node.out)))


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
