"""Row kernels along dim 0: softmax, norms, reductions, argsort and topk (SEMANTICS §5.5, §5.8).

Rows are the last axis in numpy order. Everything computes in F32. Formulas apply literally to
empty rows: a sum is 0, a mean (and so a variance) is NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx

from mlplug.device import Node
from mlplug_metal.kernels.elementwise import tiled
from mlplug_metal.kernels.quant import load, store, store_raw

__all__ = ["KERNELS"]


def _mean(x: mx.array) -> mx.array:
    # sum / n rather than mx.mean: an empty row gives NaN (0 / 0) as the formula says.
    return mx.sum(x, axis=-1, keepdims=True) / float(x.shape[-1])


def _variance(x: mx.array) -> mx.array:
    return _mean(mx.square(x - _mean(x)))


def softmax(node: Node) -> None:
    """``exp(x - max) / Σ exp(x - max)`` per row."""
    if node.out.n == 0:
        return
    store(node.out, mx.softmax(load(node.operand()), axis=-1, precise=True))


def _affine(node: Node, y: mx.array, roles: tuple[int, ...]) -> mx.array:
    # Optional weight (·) and bias (+), each tiled over the result (SEMANTICS §5.5).
    for i, f in zip(roles, (mx.multiply, mx.add), strict=False):
        ref = node.optional(i)
        if ref is not None:
            y = tiled(f, y, load(ref))
    return y


def layer_norm(node: Node) -> None:
    """``(x - μ) / sqrt(σ² + eps)``, then ``· w`` and ``+ b`` when given."""
    if node.out.n == 0:
        return
    x = load(node.operand())
    centred = x - _mean(x)
    y = centred / mx.sqrt(_mean(mx.square(centred)) + float(node.params["eps"]))
    store(node.out, _affine(node, y, (1, 2)))


def _rms(roles: tuple[int, ...]) -> Callable[[Node], None]:
    def kernel(node: Node) -> None:
        if node.out.n == 0:
            return
        x = load(node.operand())
        y = x / mx.sqrt(_mean(mx.square(x)) + float(node.params["eps"]))
        store(node.out, _affine(node, y, roles))

    return kernel


rms_norm = _rms((1,))
"""``x / sqrt(mean(x²) + eps)``, then ``· w`` when given."""

rms_norm_add = _rms((1, 2))
"""The optional fused op: ``rms_norm(x, w, eps) + r``, ``r`` tiled like ``add``'s ``b``."""


def _per_row(f: Callable[[mx.array], mx.array]) -> Callable[[Node], None]:
    def kernel(node: Node) -> None:
        if node.out.n == 0:
            return
        store(node.out, f(load(node.operand())))

    return kernel


def argsort(node: Node) -> None:
    """Indices sorting each row ascending."""
    if node.out.n == 0:
        return
    store_raw(node.out, mx.argsort(load(node.operand()), axis=-1).astype(mx.int32))


def topk(node: Node) -> None:
    """Indices of the ``k`` largest values of each row, largest first.

    The output window is the first ``k`` columns of an argsort-sized result (strided).
    """
    if node.out.n == 0:
        return
    k = int(node.params["k"])
    order = mx.argsort(-load(node.operand()), axis=-1)[..., :k]
    store_raw(node.out, order.astype(mx.int32))


KERNELS: dict[str, Callable[[Node], None]] = {
    "softmax": softmax,
    "layer_norm": layer_norm,
    "rms_norm": rms_norm,
    "rms_norm_add": rms_norm_add,
    "sum_rows": _per_row(lambda x: mx.sum(x, axis=-1, keepdims=True)),
    "mean": _per_row(_mean),
    "variance": _per_row(_variance),
    "stddev": _per_row(lambda x: mx.sqrt(_variance(x))),
    "argsort": argsort,
    "topk": topk,
}
