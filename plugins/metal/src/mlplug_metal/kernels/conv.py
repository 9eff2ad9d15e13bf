"""Convolution and pooling: ``conv_2d``, ``im2col``, ``avg_pool_2d`` (SEMANTICS §5.9).

``conv_2d`` is ``mx.conv2d`` on channels-last transposes of the operands (MLX's layout: input
``(N, H, W, C)``, weight ``(OC, KH, KW, IC)``). ``im2col`` and ``avg_pool_2d`` read the
zero-padded input through one ``mx.as_strided`` window view ``(N, C, OH, OW, KH, KW)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import mlx.core as mx

from mlplug.device import Node
from mlplug_metal.kernels.quant import load, store

__all__ = ["KERNELS"]


def _windows(
    x: mx.array,
    kh: int,
    kw: int,
    oh: int,
    ow: int,
    s: tuple[int, int],
    p: tuple[int, int],
    d: tuple[int, int],
) -> mx.array:
    """Return the patches of ``x (N, C, H, W)`` as ``(N, C, OH, OW, KH, KW)``.

    ``s``, ``p``, ``d`` are (height, width) stride, padding and dilation.
    """
    n, c, h, w = x.shape
    padded = mx.contiguous(mx.pad(x, [(0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])]))
    hp, wp = h + 2 * p[0], w + 2 * p[1]
    strides = (c * hp * wp, hp * wp, s[0] * wp, s[1], d[0] * wp, d[1])
    return mx.as_strided(padded, (n, c, oh, ow, kh, kw), strides, 0)


def _conv(p: Mapping[str, Any]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    return (
        (int(p["s1"]), int(p["s0"])),
        (int(p["p1"]), int(p["p0"])),
        (int(p["d1"]), int(p["d0"])),
    )


def im2col(node: Node) -> None:
    """``out[ic·KH·KW + ky·KW + kx, ox, oy, n] = input[ox·s0 + kx·d0 - p0, …]``, 0 outside."""
    if node.out.n == 0:
        return
    ow, oh = node.out.ne[1], node.out.ne[2]
    s, p, d = _conv(node.params)
    cols = _windows(
        load(node.operand(1)), int(node.params["kh"]), int(node.params["kw"]), oh, ow, s, p, d
    )
    n = cols.shape[0]
    cols = mx.transpose(cols, (0, 2, 3, 1, 4, 5))  # (N, OH, OW, C, KH, KW)
    store(node.out, cols.reshape(n, oh, ow, -1))


def conv_2d(node: Node) -> None:
    """Cross-correlation of ``input [W, H, IC, N]`` with ``kernel [KW, KH, IC, OC]``."""
    if node.out.n == 0:
        return
    kernel = load(node.operand(0))  # (OC, IC, KH, KW)
    x = load(node.operand(1))  # (N, IC, H, W)
    s, p, d = _conv(node.params)
    y = mx.conv2d(
        mx.transpose(x, (0, 2, 3, 1)),
        mx.transpose(kernel, (0, 2, 3, 1)),
        stride=s,
        padding=p,
        dilation=d,
    )  # (N, OH, OW, OC)
    store(node.out, mx.transpose(y, (0, 3, 1, 2)))


def avg_pool_2d(node: Node) -> None:
    """Mean over ``k x k`` windows of the zero-padded input; padding counts (divisor ``k²``)."""
    if node.out.n == 0:
        return
    k, s, p = (int(node.params[key]) for key in ("k", "s", "p"))
    ow, oh = node.out.ne[0], node.out.ne[1]
    x = load(node.operand(0))  # (ne3, ne2, H, W)
    windows = _windows(x, k, k, oh, ow, (s, s), (p, p), (1, 1))
    store(node.out, mx.sum(windows, axis=(-2, -1)) / float(k * k))


KERNELS: dict[str, Callable[[Node], None]] = {
    "conv_2d": conv_2d,
    "im2col": im2col,
    "avg_pool_2d": avg_pool_2d,
}
