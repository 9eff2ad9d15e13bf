"""Convolution and pooling: ``conv_2d``, ``im2col``, ``avg_pool_2d`` (SEMANTICS §5.9).

Patches are a strided window view of the zero-padded input (``sliding_window_view``: no copy
until they are reshaped into the column matrix); ``conv_2d`` is one GEMM of that matrix with the
flattened kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mlplug.device import Node
from mlplug_cpu.kernels.quant import load, raw

__all__ = ["KERNELS"]


def _patches(x: np.ndarray, kh: int, kw: int, oh: int, ow: int, p: Mapping[str, Any]) -> np.ndarray:
    """Return the patches of ``x (N, C, H, W)`` as a view ``(N, OH, OW, C, KH, KW)``."""
    s0, s1, p0, p1, d0, d1 = (int(p[key]) for key in ("s0", "s1", "p0", "p1", "d0", "d1"))
    padded = np.pad(x, ((0, 0), (0, 0), (p1, p1), (p0, p0)))
    windows = np.lib.stride_tricks.sliding_window_view(
        padded, (d1 * (kh - 1) + 1, d0 * (kw - 1) + 1), axis=(2, 3)
    )
    windows = windows[:, :, ::s1, ::s0, ::d1, ::d0][:, :, :oh, :ow]  # (N, C, OH, OW, KH, KW)
    return windows.transpose(0, 2, 3, 1, 4, 5)


def im2col(node: Node) -> None:
    """``out[ic·KH·KW + ky·KW + kx, ox, oy, n] = input[ox·s0 + kx·d0 - p0, …]``, 0 outside."""
    if node.out.n == 0:
        return
    ow, oh = node.out.ne[1], node.out.ne[2]
    cols = _patches(
        load(node.operand(1)), node.params["kh"], node.params["kw"], oh, ow, node.params
    )
    out = raw(node.out)  # (N, OH, OW, C·KH·KW)
    np.copyto(out, cols.reshape(out.shape))


def conv_2d(node: Node) -> None:
    """Cross-correlation: the flattened kernel times the im2col matrix."""
    if node.out.n == 0:
        return
    kernel = load(node.operand(0))  # (OC, IC, KH, KW)
    oc, ic, kh, kw = kernel.shape
    ow, oh, _, n = node.out.ne
    cols = _patches(load(node.operand(1)), kh, kw, oh, ow, node.params)
    product = cols.reshape(n * oh * ow, ic * kh * kw) @ kernel.reshape(oc, ic * kh * kw).T
    np.copyto(raw(node.out), product.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2))


def avg_pool_2d(node: Node) -> None:
    """Mean over ``k x k`` windows of the zero-padded input; padding counts (divisor ``k²``)."""
    if node.out.n == 0:
        return
    k, s, p = (int(node.params[key]) for key in ("k", "s", "p"))
    ow, oh = node.out.ne[0], node.out.ne[1]
    padded = np.pad(load(node.operand(0)), ((0, 0), (0, 0), (p, p), (p, p)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
    windows = windows[:, :, ::s, ::s][:, :, :oh, :ow]
    sums = windows.sum(axis=(-2, -1), dtype=np.float32)
    np.divide(sums, np.float32(k * k), out=raw(node.out))


KERNELS: dict[str, Callable[[Node], None]] = {
    "conv_2d": conv_2d,
    "im2col": im2col,
    "avg_pool_2d": avg_pool_2d,
}
