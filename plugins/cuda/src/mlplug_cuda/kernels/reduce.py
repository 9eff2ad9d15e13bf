"""Row kernels along dim 0: softmax, norms, reductions, argsort and topk (SEMANTICS §5.5, §5.8).

Rows are the last axis. Formulas apply literally to empty rows: a sum is 0, a mean NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mlplug.device import Node
from mlplug_cuda.kernels.elementwise import tiled
from mlplug_cuda.kernels.quant import api_of, commit, dest, load, raw, store

__all__ = ["KERNELS"]


def _mean(x: Any) -> Any:
    total = x.sum(axis=-1, keepdims=True, dtype=np.float32)
    return total / np.float32(x.shape[-1])


def _variance(xp: Any, x: Any) -> Any:
    return _mean(xp.square(x - _mean(x)))


def softmax(node: Node) -> None:
    """``exp(x - max) / Σ exp(x - max)`` per row."""
    if node.out.n == 0:
        return
    xp = api_of(node.out).xp
    x = load(node.operand())
    o = dest(node.out)
    xp.subtract(x, x.max(axis=-1, keepdims=True), out=o)
    xp.exp(o, out=o)
    o /= o.sum(axis=-1, keepdims=True, dtype=np.float32)
    commit(node.out, o)


def _affine(node: Node, o: Any, roles: tuple[int, ...]) -> None:
    # Optional weight (·) and bias (+), each tiled over the result (SEMANTICS §5.5).
    api = api_of(node.out)
    for i, name in zip(roles, ("multiply", "add"), strict=False):
        ref = node.optional(i)
        if ref is not None:
            tiled(api, name, o, load(ref), o)


def layer_norm(node: Node) -> None:
    """``(x - μ) / sqrt(σ² + eps)``, then ``· w`` and ``+ b`` when given."""
    if node.out.n == 0:
        return
    xp = api_of(node.out).xp
    x = load(node.operand())
    o = dest(node.out)
    xp.subtract(x, _mean(x), out=o)
    o /= xp.sqrt(_mean(xp.square(o)) + np.float32(node.params["eps"]))
    _affine(node, o, (1, 2))
    commit(node.out, o)


def _rms(roles: tuple[int, ...]) -> Callable[[Node], None]:
    def kernel(node: Node) -> None:
        if node.out.n == 0:
            return
        xp = api_of(node.out).xp
        x = load(node.operand())
        o = dest(node.out)
        xp.divide(x, xp.sqrt(_mean(xp.square(x)) + np.float32(node.params["eps"])), out=o)
        _affine(node, o, roles)
        commit(node.out, o)

    return kernel


rms_norm = _rms((1,))
"""``x / sqrt(mean(x²) + eps)``, then ``· w`` when given."""

rms_norm_add = _rms((1, 2))
"""The optional fused op: ``rms_norm(x, w, eps) + r``, ``r`` tiled like ``add``'s ``b``."""


def _per_row(f: Callable[[Any, Any], Any]) -> Callable[[Node], None]:
    def kernel(node: Node) -> None:
        if node.out.n == 0:
            return
        store(node.out, f(api_of(node.out).xp, load(node.operand())))

    return kernel


def argsort(node: Node) -> None:
    """Indices sorting each row ascending (stable, so ties keep their order)."""
    if node.out.n == 0:
        return
    api = api_of(node.out)
    api.xp.copyto(raw(node.out), api.argsort(load(node.operand())), casting="unsafe")


def topk(node: Node) -> None:
    """Indices of the ``k`` largest values of each row, largest first (ties: lower index first).

    A stable argsort of the negated row; only the first ``k`` columns are written.
    """
    if node.out.n == 0:
        return
    api = api_of(node.out)
    k = int(node.params["k"])
    idx = api.argsort(api.xp.negative(load(node.operand())))[..., :k]
    api.xp.copyto(raw(node.out), idx, casting="unsafe")


KERNELS: dict[str, Callable[[Node], None]] = {
    "softmax": softmax,
    "layer_norm": layer_norm,
    "rms_norm": rms_norm,
    "rms_norm_add": rms_norm_add,
    "sum_rows": _per_row(lambda xp, x: x.sum(axis=-1, keepdims=True, dtype=np.float32)),
    "mean": _per_row(lambda xp, x: _mean(x)),
    "variance": _per_row(_variance),
    "stddev": _per_row(lambda xp, x: xp.sqrt(_variance(xp, x))),
    "argsort": argsort,
    "topk": topk,
}
"""Row kernels by op name."""
