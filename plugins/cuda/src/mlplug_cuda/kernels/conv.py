"""Convolution and pooling: ``conv_2d``, ``im2col``, ``avg_pool_2d`` (SEMANTICS §5.9).

Patches are gathered from the zero-padded input with one strided view per kernel offset
(cupy has no ``sliding_window_view``); ``conv_2d`` is one GEMM of the column matrix with the
flattened kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mlplug.device import Node
from mlplug_cuda.kernels.quant import api_of, load, raw

__all__ = ["KERNELS"]


def _patches(xp: Any, x: Any, kh: int, kw: int, oh: int, ow: int, p: Mapping[str, Any]) -> Any:
    """Return the patches of ``x (N, C, H, W)`` as ``(N, OH, OW, C, KH, KW)``."""
    s0, s1, p0, p1, d0, d1 = (int(p[key]) for key in ("s0", "s1", "p0", "p1", "d0", "d1"))
    padded = xp.pad(x, ((0, 0), (0, 0), (p1, p1), (p0, p0)))
    n, c = x.shape[:2]
    out = xp.zeros((n, oh, ow, c, kh, kw), np.float32)
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * d1, kx * d0
            window = padded[
                :, :, y0 : y0 + s1 * (oh - 1) + 1 : s1, x0 : x0 + s0 * (ow - 1) + 1 : s0
            ]
            out[:, :, :, :, ky, kx] = window.transpose(0, 2, 3, 1)
    return out


def im2col(node: Node) -> None:
    """``out[ic·KH·KW + ky·KW + kx, ox, oy, n] = input[ox·s0 + kx·d0 - p0, …]``, 0 outside."""
    if node.out.n == 0:
        return
    xp = api_of(node.out).xp
    ow, oh = node.out.ne[1], node.out.ne[2]
    cols = _patches(
        xp, load(node.operand(1)), node.params["kh"], node.params["kw"], oh, ow, node.params
    )
    out = raw(node.out)  # (N, OH, OW, C·KH·KW)
    xp.copyto(out, cols.reshape(out.shape), casting="unsafe")


def conv_2d(node: Node) -> None:
    """Cross-correlation: the flattened kernel times the im2col matrix."""
    if node.out.n == 0:
        return
    xp = api_of(node.out).xp
    kernel = load(node.operand(0))  # (OC, IC, KH, KW)
    oc, ic, kh, kw = kernel.shape
    ow, oh, _, n = node.out.ne
    cols = _patches(xp, load(node.operand(1)), kh, kw, oh, ow, node.params)
    product = cols.reshape(n * oh * ow, ic * kh * kw) @ kernel.reshape(oc, ic * kh * kw).T
    xp.copyto(raw(node.out), product.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2))


def avg_pool_2d(node: Node) -> None:
    """Mean over ``k x k`` windows of the zero-padded input; padding counts (divisor ``k²``)."""
    if node.out.n == 0:
        return
    xp = api_of(node.out).xp
    k, s, p = (int(node.params[key]) for key in ("k", "s", "p"))
    ow, oh = node.out.ne[0], node.out.ne[1]
    padded = xp.pad(load(node.operand(0)), ((0, 0), (0, 0), (p, p), (p, p)))
    sums = xp.zeros((*padded.shape[:2], oh, ow), np.float32)
    for ky in range(k):
        for kx in range(k):
            sums += padded[:, :, ky : ky + s * (oh - 1) + 1 : s, kx : kx + s * (ow - 1) + 1 : s]
    xp.divide(sums, np.float32(k * k), out=raw(node.out))


KERNELS: dict[str, Callable[[Node], None]] = {
    "conv_2d": conv_2d,
    "im2col": im2col,
    "avg_pool_2d": avg_pool_2d,
}
"""Convolution kernels by op name."""
