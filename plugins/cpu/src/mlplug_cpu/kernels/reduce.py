"""Row kernels along dim 0: softmax, norms, reductions, argsort and topk (SEMANTICS §5.5, §5.8).

Rows are numpy's last axis. Sums use numpy's pairwise F32 summation. Formulas apply literally to
empty rows: a sum is 0, a mean (and so a variance) is NaN.

``softmax``, ``rms_norm`` and ``rms_norm_add`` first try the C extension's row kernels
(``_native_ops.c``; F32 sums over 16 interleaved partial sums, as accurate as numpy's pairwise
ones at model row lengths); where it declines, the numpy code below runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlplug.device import Node
from mlplug_cpu.kernels import native
from mlplug_cpu.kernels.elementwise import tiled
from mlplug_cpu.kernels.quant import commit, dest, load, raw, store

__all__ = ["KERNELS"]


def _mean(x: np.ndarray) -> np.ndarray:
    # sum / n rather than np.mean: an empty row gives NaN without numpy's "empty slice" warning.
    total: np.ndarray = x.sum(axis=-1, keepdims=True, dtype=np.float32)
    return total / np.float32(x.shape[-1])


def _variance(x: np.ndarray) -> np.ndarray:
    return _mean(np.square(x - _mean(x)))


def softmax(node: Node) -> None:
    """``exp(x - max) / Σ exp(x - max)`` per row."""
    if node.out.n == 0:
        return
    ext = native.extension()
    if ext is not None and ext.ops_softmax(node.out, node.operand(), native.threads()):
        return
    x = load(node.operand())
    o = dest(node.out)
    np.subtract(x, x.max(axis=-1, keepdims=True), out=o)
    np.exp(o, out=o)
    o /= o.sum(axis=-1, keepdims=True, dtype=np.float32)
    commit(node.out, o)


def _affine(node: Node, o: np.ndarray, roles: tuple[int, ...]) -> None:
    # Optional weight (·) and bias (+), each tiled over the result (SEMANTICS §5.5).
    for i, ufunc in zip(roles, (np.multiply, np.add), strict=False):
        ref = node.optional(i)
        if ref is not None:
            tiled(ufunc, o, load(ref), out=o)


def layer_norm(node: Node) -> None:
    """``(x - μ) / sqrt(σ² + eps)``, then ``· w`` and ``+ b`` when given."""
    if node.out.n == 0:
        return
    x = load(node.operand())
    o = dest(node.out)
    np.subtract(x, _mean(x), out=o)
    o /= np.sqrt(_mean(np.square(o)) + np.float32(node.params["eps"]))
    _affine(node, o, (1, 2))
    commit(node.out, o)


def _rms(roles: tuple[int, ...]) -> Callable[[Node], None]:
    def kernel(node: Node) -> None:
        if node.out.n == 0:
            return
        ext = native.extension()
        if ext is not None and ext.ops_rms_norm(
            node.out,
            node.operand(),
            node.optional(1),
            node.operand(2) if len(roles) > 1 else None,
            node.params["eps"],
            native.threads(),
        ):
            return
        x = load(node.operand())
        o = dest(node.out)
        np.divide(x, np.sqrt(_mean(np.square(x)) + np.float32(node.params["eps"])), out=o)
        _affine(node, o, roles)
        commit(node.out, o)

    return kernel


rms_norm = _rms((1,))
"""``x / sqrt(mean(x²) + eps)``, then ``· w`` when given."""

rms_norm_add = _rms((1, 2))
"""The optional fused op: ``rms_norm(x, w, eps) + r``, ``r`` tiled like ``add``'s ``b``."""


def _per_row(f: Callable[[np.ndarray], np.ndarray]) -> Callable[[Node], None]:
    def kernel(node: Node) -> None:
        store(node.out, f(load(node.operand())))

    return kernel


def argsort(node: Node) -> None:
    """Indices sorting each row ascending (stable, so ties keep their order)."""
    if node.out.n == 0:
        return
    np.copyto(
        raw(node.out), np.argsort(load(node.operand()), axis=-1, kind="stable"), casting="unsafe"
    )


def topk(node: Node) -> None:
    """Indices of the ``k`` largest values of each row, largest first.

    The output window is the first ``k`` columns of an argsort-sized result (strided), so only
    those elements are written.
    """
    if node.out.n == 0:
        return
    k = int(node.params["k"])
    neg = np.negative(load(node.operand()))
    if k < neg.shape[-1]:
        part = np.argpartition(neg, k - 1, axis=-1)[..., :k]
        order = np.argsort(np.take_along_axis(neg, part, axis=-1), axis=-1, kind="stable")
        idx = np.take_along_axis(part, order, axis=-1)
    else:
        idx = np.argsort(neg, axis=-1, kind="stable")
    np.copyto(raw(node.out), idx, casting="unsafe")


KERNELS: dict[str, Callable[[Node], None]] = {
    "softmax": softmax,
    "layer_norm": layer_norm,
    "rms_norm": rms_norm,
    "rms_norm_add": rms_norm_add,
    "sum_rows": _per_row(lambda x: x.sum(axis=-1, keepdims=True, dtype=np.float32)),
    "mean": _per_row(_mean),
    "variance": _per_row(_variance),
    "stddev": _per_row(lambda x: np.sqrt(_variance(x))),
    "argsort": argsort,
    "topk": topk,
}
