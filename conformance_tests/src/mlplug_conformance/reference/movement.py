"""Views, copies, assembling ops and the ``rows`` gather (SEMANTICS §5.6, §5.7).

**Views on logical values.** ``reshape``, ``view`` and ``permute`` are defined on bytes and
strides. The reference has no bytes, so it treats the receiver as *contiguous*: its logical
values, flattened in C order, are its storage, one unit of ``S`` bytes per element (per block of
``B`` elements for block dtypes). A byte offset or stride ``x`` is then ``x / S`` units, and
element ``(i0, i1, i2, i3)`` of a view is unit ``(offset + i1·nb1 + i2·nb2 + i3·nb3)/S +
(i0 // B)·nb0/S``, element ``i0 % B`` of it (:func:`window`). ``reshape`` is a C-order reshape and
``permute`` the transpose §5.6 gives. A view that addresses units beyond the receiver's own
elements (possible in the engine, whose receiver may itself view a larger storage) raises
``ValueError`` here; the case interpreter evaluates views against the root storage instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlplug.dtype import DType
from mlplug.ops import Meta

from ._common import Kernel, numpy_shape

__all__ = ["KERNELS", "element_index", "window"]


def element_index(ne: Sequence[int], nb: Sequence[int], offset: int, dtype: DType) -> np.ndarray:
    """Return the flat element index (in a contiguous storage) of every element of a window.

    Args:
        ne: Extents, dim 0 fastest.
        nb: Byte strides; multiples of ``dtype.type_size`` (``nb[0]`` steps one block).
        offset: Byte offset of element (0, 0, 0, 0); a multiple of ``type_size``.
        dtype: Element type.

    Returns:
        An int64 array of shape ``(ne3, ne2, ne1, ne0)``.
    """
    size, block = dtype.type_size, dtype.block_size
    for name, v in (("offset", offset), *((f"nb{i}", s) for i, s in enumerate(nb))):
        if v % size:
            raise ValueError(f"[reference] {name} ({v}) is not a multiple of {size} bytes")
    i3, i2, i1, i0 = np.ix_(*(np.arange(n, dtype=np.int64) for n in numpy_shape(ne)))
    unit = (offset + i1 * nb[1] + i2 * nb[2] + i3 * nb[3]) // size + (i0 // block) * (nb[0] // size)
    return unit * block + i0 % block


def window(
    flat: np.ndarray, ne: Sequence[int], nb: Sequence[int], offset: int, dtype: DType
) -> np.ndarray:
    """Return the logical values of a strided window into contiguous ``flat`` storage.

    Raises:
        ValueError: The window addresses elements outside ``flat``.
    """
    if 0 in ne:
        return np.zeros(numpy_shape(ne), dtype=flat.dtype)
    idx = element_index(ne, nb, offset, dtype)
    if idx.min() < 0 or idx.max() >= flat.size:
        raise ValueError(
            f"[reference] window ne={list(ne)} nb={list(nb)} offset={offset} addresses elements "
            f"outside the {flat.size} the receiver holds"
        )
    picked: np.ndarray = flat[idx]
    return picked


def _src(srcs: Sequence[np.ndarray | None], i: int = 0) -> np.ndarray:
    a = srcs[i]
    assert a is not None
    return np.asarray(a)


def _reshape(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    return _src(srcs).reshape(numpy_shape(params["ne"]))


def _view(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    return window(
        _src(srcs).reshape(-1), params["ne"], params["nb"], int(params["offset"]), out.dtype
    )


def _permute(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    a = _src(srcs)
    if a.size == 0:
        return np.zeros(numpy_shape(out.ne), dtype=a.dtype)
    p = params["axes"]
    inv = [0] * 4
    for i in range(4):
        inv[p[i]] = i
    return a.transpose([3 - inv[3 - k] for k in range(4)])


def _contiguous(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    return _src(srcs).copy()


def _copy(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    # a's elements in logical order become dst's elements in its logical order; the conversion
    # to dst's dtype is the rounding the caller applies.
    return _src(srcs).reshape(-1).reshape(numpy_shape(out.ne))


def _set(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    a, b = _src(srcs, 0), _src(srcs, 1)
    result = a.reshape(-1).copy()
    if b.size:
        idx = element_index(b.shape[::-1], params["nb"], int(params["offset"]), out.dtype)
        result[idx.reshape(-1)] = b.reshape(-1)
    return result.reshape(a.shape)


def _pad(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    p = params["pads"]
    return np.pad(_src(srcs), [(0, p[3]), (0, p[2]), (0, p[1]), (0, p[0])])


def _concat(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    parts = [np.asarray(s) for s in srcs if s is not None]
    return np.concatenate(parts, axis=3 - int(params["dim"]))


def _repeat(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    reps = [1, 1, 1, 1]
    reps[3 - int(params["dim"])] = int(params["n"])
    return np.tile(_src(srcs), reps)


def _rows(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    a, ids = _src(srcs, 0), _src(srcs, 1).astype(np.int64)
    if ids.size == 0:
        return np.zeros(numpy_shape(out.ne), dtype=a.dtype)
    if ids.min() < 0 or ids.max() >= a.shape[2]:
        raise IndexError(f"rows: index out of range 0..{a.shape[2] - 1}")
    # ids (1, a.ne3, a.ne2, n): out[k, j, i, :] = a[k, j, ids[k, j, i], :]  (§5.7)
    return np.take_along_axis(a, ids[0][..., None], axis=2)


def _set_rows(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    a, dst, ids = _src(srcs, 0), _src(srcs, 1), _src(srcs, 2).astype(np.int64).reshape(-1)
    result = np.array(dst, dtype=np.float64 if a.dtype.kind == "f" else dst.dtype)
    if ids.size == 0:
        return result
    if ids.min() < 0 or ids.max() >= dst.shape[2]:
        raise IndexError(f"set_rows: index out of range 0..{dst.shape[2] - 1}")
    # dst[:, ids[r], j, k] = a[:, r, j, k] in order: a later row written to the same id wins.
    for r, i in enumerate(ids):
        result[:, :, i, :] = a[:, :, r, :]
    return result


KERNELS: dict[str, Kernel] = {
    "reshape": _reshape,
    "view": _view,
    "permute": _permute,
    "contiguous": _contiguous,
    "duplicate": _contiguous,
    "copy": _copy,
    "set": _set,
    "pad": _pad,
    "concat": _concat,
    "stack": _concat,
    "repeat": _repeat,
    "rows": _rows,
    "set_rows": _set_rows,
}
