"""Convolution and pooling: ``conv_2d``, ``im2col``, ``avg_pool_2d`` (SEMANTICS §5.9).

Numpy order: the kernel ``[KW, KH, IC, OC]`` is PyTorch's ``(OC, IC, KH, KW)`` weight and the
input ``[W, H, IC, N]`` its ``(N, IC, H, W)`` batch. ``conv_2d`` is the cross-correlation sum
written directly (not through ``im2col``), so the two check each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlplug.ops import Meta

from ._common import Kernel, values

__all__ = ["KERNELS"]


def _padded(x: np.ndarray, p1: int, p0: int) -> np.ndarray:
    return np.pad(x, [(0, 0), (0, 0), (p1, p1), (p0, p0)])


def _tap(xp: np.ndarray, ky: int, kx: int, oh: int, ow: int, p: Mapping[str, Any]) -> np.ndarray:
    """Return ``input[ox·s0 + kx·d0 - p0, oy·s1 + ky·d1 - p1]`` for all (oy, ox): (N, C, OH, OW)."""
    y0, x0 = ky * p["d1"], kx * p["d0"]
    return xp[
        :, :, y0 : y0 + p["s1"] * (oh - 1) + 1 : p["s1"], x0 : x0 + p["s0"] * (ow - 1) + 1 : p["s0"]
    ]


def _conv_2d(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    kernel, inp = srcs
    assert kernel is not None and inp is not None
    k, x = values(kernel), values(inp)
    ow, oh = out.ne[0], out.ne[1]
    xp = _padded(x, params["p1"], params["p0"])
    result = np.zeros((x.shape[0], k.shape[0], oh, ow))
    for ky in range(k.shape[2]):
        for kx in range(k.shape[3]):
            # out[n, oc, oy, ox] += Σ_ic kernel[oc, ic, ky, kx] · input[n, ic, …]
            result += np.einsum("oi,nihw->nohw", k[:, :, ky, kx], _tap(xp, ky, kx, oh, ow, params))
    return result


def _im2col(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    inp = srcs[1]
    assert inp is not None
    x = values(inp)
    kw, kh = params["kw"], params["kh"]
    ow, oh = out.ne[1], out.ne[2]
    n, ic = x.shape[0], x.shape[1]
    xp = _padded(x, params["p1"], params["p0"])
    result = np.zeros((n, oh, ow, ic, kh, kw))
    for ky in range(kh):
        for kx in range(kw):
            # out[ic·KH·KW + ky·KW + kx, ox, oy, n] = input[ox·s0 + kx·d0 - p0, …, ic, n]
            result[:, :, :, :, ky, kx] = _tap(xp, ky, kx, oh, ow, params).transpose(0, 2, 3, 1)
    return result.reshape(n, oh, ow, ic * kh * kw)


def _avg_pool_2d(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    x = values(srcs[0])  # type: ignore[arg-type]
    k, s, p = params["k"], params["s"], params["p"]
    ow, oh = out.ne[0], out.ne[1]
    xp = _padded(x, p, p)
    total = np.zeros((*x.shape[:2], oh, ow))
    for ky in range(k):
        for kx in range(k):
            total += xp[:, :, ky : ky + s * (oh - 1) + 1 : s, kx : kx + s * (ow - 1) + 1 : s]
    # The divisor is always k² (padding counts).
    return total / (k * k)


KERNELS: dict[str, Kernel] = {
    "conv_2d": _conv_2d,
    "im2col": _im2col,
    "avg_pool_2d": _avg_pool_2d,
}
