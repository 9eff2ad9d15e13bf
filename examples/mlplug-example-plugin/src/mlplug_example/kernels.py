"""The kernels: numpy code for the ops this plugin supports, reading and writing through strides.

A kernel receives one :class:`~mlplug.device.Node`: ``node.op`` names an op of
:data:`mlplug.device.OPS`, ``node.srcs`` are its operands and ``node.out`` is where the result
goes, each a :class:`~mlplug.device.TensorRef` (a byte-strided window into one of this device's
buffers). The ops table has already checked shapes and dtypes, so kernels do not re-validate.

Everything here works in **numpy order**: a ggml ``[ne0, ne1, ne2, ne3]`` tensor is the array of
shape ``(ne3, ne2, ne1, ne0)``, so dim 0 (rows) is numpy's last axis. The kernels follow the
numpy-order equivalents of SEMANTICS §5, computing in F32 and rounding once into the output's
dtype.

:data:`KERNELS` maps each supported op to its function and to the dtypes it handles; every other
op or dtype is declared unsupported by :meth:`ExampleDevice.unsupported`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlplug.device import DType, Node, TensorRef

__all__ = ["FLOATS", "KERNELS", "Kernel", "array", "store", "tile", "values"]

FLOATS = frozenset({DType.F32, DType.F16})
"""The float dtypes this plugin computes on (BF16 and the quantised types are left out)."""

# How each supported dtype is stored: numpy has all three natively.
_NUMPY: dict[DType, np.dtype[Any]] = {
    DType.F32: np.dtype(np.float32),
    DType.F16: np.dtype(np.float16),
    DType.I32: np.dtype(np.int32),
}


# ---------------------------------------------------------------------------------------------
# Reading and writing a TensorRef


def _shape(ref: TensorRef) -> tuple[int, int, int, int]:
    return (ref.ne[3], ref.ne[2], ref.ne[1], ref.ne[0])


def array(ref: TensorRef) -> np.ndarray:
    """Return the elements ``ref`` addresses as a writable numpy view, in numpy order.

    The view is built over the buffer's bytes with the ref's byte offset and byte strides, so
    permuted, sliced and overlapping (stride 0) windows all read correctly, and writing into the
    view writes into the buffer (how ``copy`` fills a strided destination and ``topk`` its
    non-contiguous result).
    """
    dtype = _NUMPY[ref.dtype]
    if ref.n == 0:
        # A zero-element ref is never dereferenced (its offset may point anywhere).
        return np.zeros(_shape(ref), dtype)
    data = getattr(ref.buffer, "data", None)
    if not isinstance(data, np.ndarray):
        raise TypeError(f"[example] {type(ref.buffer).__name__} is not a buffer of this device")
    # np.ndarray over a buffer is numpy's as_strided with a bounds check: a wrong ref raises
    # instead of reading or writing outside the buffer.
    strides = (ref.nb[3], ref.nb[2], ref.nb[1], ref.nb[0])
    return np.ndarray(_shape(ref), dtype, buffer=data, offset=ref.offset, strides=strides)


def values(ref: TensorRef) -> np.ndarray:
    """Return a float32 copy of the ref's values (F16 widens exactly)."""
    return array(ref).astype(np.float32)


def store(ref: TensorRef, result: np.ndarray) -> None:
    """Write ``result`` (broadcastable to ``ref``'s shape) through ``ref``'s strides.

    The cast rounds into the ref's dtype: float32 to float16 is IEEE round-to-nearest-even, with
    overflow to ±inf and NaN kept.
    """
    np.copyto(array(ref), result, casting="unsafe")


def tile(b: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Return ``b`` repeated whole along each axis to ``shape`` (SEMANTICS §5.2 tiling).

    Unlike numpy broadcasting, a ``[3]`` against a ``[6]`` repeats the three values twice.
    """
    return np.tile(b, [n // m for n, m in zip(shape, b.shape, strict=True)])


# ---------------------------------------------------------------------------------------------
# Element-wise ops (SEMANTICS §5.2, §5.3)

_HALF, _ONE = np.float32(0.5), np.float32(1.0)


def _gelu(x: np.ndarray) -> np.ndarray:
    # The tanh form of SEMANTICS §5.3 (not the erf form).
    inner = np.float32(0.7978845608) * x * (_ONE + np.float32(0.044715) * x * x)
    out: np.ndarray = _HALF * x * (_ONE + np.tanh(inner))
    return out


UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "neg": np.negative,
    "sin": np.sin,
    "cos": np.cos,
    "tanh": np.tanh,
    "gelu": _gelu,
    "silu": lambda x: x / (_ONE + np.exp(-x)),
    "relu": lambda x: np.maximum(x, np.float32(0.0)),
    "sigmoid": lambda x: _ONE / (_ONE + np.exp(-x)),
    "sqr": np.square,
    "sqrt": np.sqrt,
    "exp": np.exp,
}

BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
}


def unary(node: Node) -> None:
    """``f(a)`` element by element."""
    store(node.out, UNARY[node.op](values(node.operand(0))))


def scale(node: Node) -> None:
    """``a · s`` (``s`` is already narrowed to F32 by the ops table)."""
    store(node.out, values(node.operand(0)) * np.float32(node.params["s"]))


def clamp(node: Node) -> None:
    """``max(min(a, hi), lo)``: ``lo`` wins when ``lo > hi``."""
    hi, lo = np.float32(node.params["hi"]), np.float32(node.params["lo"])
    store(node.out, np.maximum(np.minimum(values(node.operand(0)), hi), lo))


def binary(node: Node) -> None:
    """``a ∘ tile(b)``: ``b`` repeated over ``a`` in every dim."""
    a, b = values(node.operand(0)), values(node.operand(1))
    store(node.out, BINARY[node.op](a, tile(b, a.shape)))


# ---------------------------------------------------------------------------------------------
# Matrix product (SEMANTICS §5.4)


def mulmat(node: Node) -> None:
    """``B @ rep(A)ᵀ``: ``a`` block-repeated over ``b``'s batch dims (grouped-query attention).

    The product runs in float32 (numpy's matmul), so it also meets ``mulmat_full_prec``'s demand
    of F32 accumulation.
    """
    a, b = values(node.operand(0)), values(node.operand(1))
    r3, r2 = b.shape[0] // a.shape[0], b.shape[1] // a.shape[1]
    rep = np.repeat(np.repeat(a, r3, axis=0), r2, axis=1)
    store(node.out, b @ rep.swapaxes(-1, -2))


# ---------------------------------------------------------------------------------------------
# Row ops along dim 0 (SEMANTICS §5.5, §5.8)


def softmax(node: Node) -> None:
    """``exp(x - max) / Σ exp(x - max)`` per row."""
    x = values(node.operand(0))
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    store(node.out, e / e.sum(axis=-1, keepdims=True))


def rms_norm(node: Node) -> None:
    """``x / sqrt(mean(x²) + eps)`` per row, then ``· tile(w)`` when a weight is given."""
    x = values(node.operand(0))
    eps = np.float32(node.params["eps"])
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    w = node.optional(1)
    if w is not None:
        y = y * tile(values(w), y.shape)
    store(node.out, y)


def sum_rows(node: Node) -> None:
    """``Σ x`` per row (an empty row sums to 0)."""
    store(node.out, values(node.operand(0)).sum(axis=-1, keepdims=True))


def mean(node: Node) -> None:
    """``Σ x / ne0`` per row, F32 (an empty row gives NaN)."""
    x = values(node.operand(0))
    store(node.out, x.sum(axis=-1, keepdims=True) / np.float32(x.shape[-1]))


def argsort(node: Node) -> None:
    """Indices that sort each row ascending (I32)."""
    store(node.out, np.argsort(values(node.operand(0)), axis=-1, kind="stable"))


def topk(node: Node) -> None:
    """Indices of the ``k`` largest values of each row, largest first.

    ``node.out`` is the first ``k`` columns of an argsort-sized result (a non-contiguous
    window: its ``nb[1]`` steps a full row), so only those ``k`` columns are written.
    """
    k = int(node.params["k"])
    store(node.out, np.argsort(-values(node.operand(0)), axis=-1, kind="stable")[..., :k])


# ---------------------------------------------------------------------------------------------
# Data movement (SEMANTICS §5.6, §5.7)


def contiguous(node: Node) -> None:
    """Packed copy (``contiguous``, ``duplicate``): same dtype, values bit for bit."""
    store(node.out, array(node.operand(0)))


def copy(node: Node) -> None:
    """Write ``a``'s elements in logical order into the destination window, converting dtype.

    ``node.out`` is the destination, possibly a strided view of a bigger buffer: writing through
    its strides leaves every byte outside the window untouched. ``a`` and the destination have
    the same element count but may differ in shape, so ``a`` is reshaped (C order = ggml's
    logical order, dim 0 fastest).
    """
    store(node.out, array(node.operand(0)).reshape(_shape(node.out)))


def rows(node: Node) -> None:
    """Gather: ``out[:, i, j, k] = a[:, ids[i, j, k], j, k]``, F32 (or I32 from an I32 table).

    Raises:
        IndexError: An id is outside ``0 ≤ id < a.ne1`` (known only now, at compute time).
    """
    a = node.operand(0)
    ids = array(node.operand(1))[0]  # ids [n, a.ne2, a.ne3, 1] in numpy order: (a.ne3, a.ne2, n)
    bad = ids[(ids < 0) | (ids >= a.ne[1])]
    if bad.size:
        raise IndexError(f"rows: id {int(bad[0])} is out of range 0..{a.ne[1] - 1}")
    index = ids.astype(np.intp)[..., None]  # (a.ne3, a.ne2, n, 1): one id per output row
    store(node.out, np.take_along_axis(array(a), index, axis=2))


# ---------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True, slots=True)
class Kernel:
    """A supported op: its function and the dtypes its operands and result may have."""

    run: Callable[[Node], None]
    dtypes: frozenset[DType]


_WITH_I32 = FLOATS | {DType.I32}  # copies and gathers move I32 too; sorting returns I32

KERNELS: dict[str, Kernel] = {
    **{name: Kernel(unary, FLOATS) for name in UNARY},
    "scale": Kernel(scale, FLOATS),
    "clamp": Kernel(clamp, FLOATS),
    **{name: Kernel(binary, FLOATS) for name in BINARY},
    "mulmat": Kernel(mulmat, FLOATS),
    "mulmat_full_prec": Kernel(mulmat, FLOATS),
    "softmax": Kernel(softmax, FLOATS),
    "rms_norm": Kernel(rms_norm, FLOATS),
    "sum_rows": Kernel(sum_rows, FLOATS),
    "mean": Kernel(mean, FLOATS),
    "argsort": Kernel(argsort, _WITH_I32),
    "topk": Kernel(topk, _WITH_I32),
    "contiguous": Kernel(contiguous, _WITH_I32),
    "duplicate": Kernel(contiguous, _WITH_I32),
    "copy": Kernel(copy, _WITH_I32),
    "rows": Kernel(rows, _WITH_I32),
}
"""Every op this plugin executes, by name."""
