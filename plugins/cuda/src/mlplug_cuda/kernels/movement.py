"""Data movement kernels: copies, ``set``, ``pad``, ``concat``/``stack``, ``repeat``, ``rows``,
``set_rows``, ``arange`` (SEMANTICS §4.3, §5.6-§5.7).

Same-dtype moves copy stored bytes (exact for every dtype, block types included); ``copy``
between different dtypes goes through F32 values; ``rows`` gathers the stored rows first and
converts only those. View ops never reach a device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mlplug.device import DType, Node, TensorRef
from mlplug_cuda.kernels.quant import (
    api_of,
    copy_raw,
    decode,
    load,
    np_shape,
    raw,
    scratch_ref,
    store,
)
from mlplug_cuda.xp import ArrayApi

__all__ = ["KERNELS", "checked_ids"]


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
    packed = out if out.contiguous else scratch_ref(api_of(out), out.dtype, out.ne)
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
    o[...] = 0
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
    xp = api_of(node.out).xp
    reps = [1, 1, 1, 1]
    reps[3 - int(node.params["dim"])] = int(node.params["n"])
    xp.copyto(raw(node.out), xp.tile(raw(node.operand()), reps))


def checked_ids(api: ArrayApi, ids: Any, axis_len: int, op: str) -> Any:
    """Return ``ids`` as an index array after checking ``0 ≤ id < axis_len``.

    The check reads two numbers back to the host (a synchronisation: graphs with ``rows`` or
    ``mulmat_id`` are not captured for replay).

    Raises:
        IndexError: Some id is out of range (found at compute time, SEMANTICS §5.4).
    """
    if ids.size:
        lo, hi = (int(v) for v in api.asnumpy(api.xp.stack([ids.min(), ids.max()])))
        if lo < 0 or hi >= axis_len:
            host = api.asnumpy(ids)
            bad = host[(host < 0) | (host >= axis_len)].ravel()[0]
            raise IndexError(f"[{op}] index {int(bad)} out of range 0..{axis_len - 1}")
    return ids.astype(np.int64, copy=False)


def rows(node: Node) -> None:
    """Gather: ``out[:, i, j, k] = a[:, ids[i, j, k], j, k]``, converted after gathering."""
    if node.out.n == 0:
        return
    api = api_of(node.out)
    xp = api.xp
    a, ids_ref = node.operand(0), node.operand(1)
    table = raw(a)
    ids = checked_ids(api, raw(ids_ref)[0], a.ne[1], "rows")  # (a3, a2, n)
    i3 = xp.arange(a.ne[3])[:, None, None]
    i2 = xp.arange(a.ne[2])[None, :, None]
    picked = table[i3, i2, ids]
    if node.out.dtype == DType.I32:
        xp.copyto(raw(node.out), picked)
    else:
        store(node.out, decode(api, picked, a.dtype))


def set_rows(node: Node) -> None:
    """Scatter: ``dst[:, ids[r], j, k] = a[:, r, j, k]`` (converted), a later row winning.

    The ids are read on the host (a handful per batch) to check them and to keep the last write
    to each row.
    """
    a, ids_ref = node.operand(0), node.operand(2)
    out = node.out
    if a.n == 0 or out.n == 0:
        return
    api = api_of(out)
    ids = api.asnumpy(raw(ids_ref)).reshape(-1).astype(np.int64)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= out.ne[1]):
        bad = ids[(ids < 0) | (ids >= out.ne[1])][0]
        raise IndexError(f"[set_rows] index {int(bad)} out of range 0..{out.ne[1] - 1}")
    targets, first_from_end = np.unique(ids[::-1], return_index=True)
    picked = ids.size - 1 - first_from_end
    if a.dtype == out.dtype:
        source = raw(a)
    else:
        converted = scratch_ref(api, out.dtype, a.ne)
        store(converted, load(a))
        source = raw(converted)
    dst = raw(out)  # (d3, d2, N, ne0) elements, or (d3, d2, N, blocks, S) bytes
    dst[:, :, api.asarray(targets)] = source[:, :, api.asarray(picked)]


def arange(node: Node) -> None:
    """``numpy.arange(start, stop, step)`` in float64, then F32 (nearest) or I32 (truncated).

    Computed on the host (it is a handful of numbers per graph) and uploaded.
    """
    p = node.params
    n = int(p["n"])
    if n == 0:
        return
    api = api_of(node.out)
    values = np.arange(p["start"], p["stop"], p["step"], dtype=np.float64)
    if len(values) != n:  # numpy's length can differ by one from ceil() through rounding
        values = p["start"] + np.arange(n, dtype=np.float64) * p["step"]
    if node.out.dtype == DType.I32:
        values = np.trunc(values)
    host = values.reshape(np_shape(node.out)).astype(raw(node.out).dtype)
    api.xp.copyto(raw(node.out), api.asarray(host))


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
"""Movement kernels by op name."""
