"""Element-wise kernels: unary ops, ``scale``, ``clamp``, the tiled binary ops, ``rope`` and the
gated activations ``swiglu``/``geglu``.

SEMANTICS §5.2-§5.3, on ``api.xp`` (cupy, or numpy under emulation). Every op computes in F32 and
rounds once to the result dtype. Binary ops **tile** ``b`` over ``a``: :func:`tiled` splits each
dim where ``b`` repeats into ``(repeats, b.ne[i])`` so that broadcasting does the tiling without
copying ``b``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mlplug.device import Node, tile_shapes
from mlplug_cuda.kernels.quant import api_of, commit, dest, load, reshaped_view
from mlplug_cuda.xp import ArrayApi

__all__ = ["KERNELS", "tiled"]


def tiled(api: ArrayApi, name: str, x: Any, y: Any, out: Any) -> Any:
    """Write ``xp.<name>(x, tile(y))`` (SEMANTICS §5.2) into ``out``."""
    ufunc = getattr(api.xp, name)
    sa, sb = tile_shapes(x.shape, y.shape)
    xa, yb = x.reshape(sa), y.reshape(sb)
    target = reshaped_view(api, out, sa)
    if target is not None:
        ufunc(xa, yb, out=target)
    else:
        api.xp.copyto(out, ufunc(xa, yb).reshape(x.shape))
    return out


def _binary(name: str) -> Callable[[Node], None]:
    def kernel(node: Node) -> None:
        if node.out.n == 0:
            return
        o = dest(node.out)
        tiled(api_of(node.out), name, load(node.operand(0)), load(node.operand(1)), o)
        commit(node.out, o)

    return kernel


_GELU_C = np.float32(0.7978845608)
_GELU_A = np.float32(0.044715)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)


def _gelu(xp: Any, x: Any, o: Any) -> None:
    # Tanh form, SEMANTICS §5.3: 0.5·x·(1 + tanh(0.7978845608·x·(1 + 0.044715·x²))).
    xp.multiply(x, x, out=o)
    o *= _GELU_A
    o += _ONE
    o *= x
    o *= _GELU_C
    xp.tanh(o, out=o)
    o += _ONE
    o *= x
    o *= _HALF


def _silu(xp: Any, x: Any, o: Any) -> None:
    xp.negative(x, out=o)
    xp.exp(o, out=o)
    o += _ONE
    xp.divide(x, o, out=o)


def _sigmoid(xp: Any, x: Any, o: Any) -> None:
    xp.negative(x, out=o)
    xp.exp(o, out=o)
    o += _ONE
    xp.reciprocal(o, out=o)


def _relu(xp: Any, x: Any, o: Any) -> None:
    xp.maximum(x, np.float32(0.0), out=o)


def _ufunc(name: str) -> Callable[[Any, Any, Any], None]:
    def apply(xp: Any, x: Any, o: Any) -> None:
        getattr(xp, name)(x, out=o)

    return apply


_UNARY: dict[str, Callable[[Any, Any, Any], None]] = {
    "neg": _ufunc("negative"),
    "sin": _ufunc("sin"),
    "cos": _ufunc("cos"),
    "exp": _ufunc("exp"),
    "tanh": _ufunc("tanh"),
    "sqr": _ufunc("square"),
    "sqrt": _ufunc("sqrt"),
    "relu": _relu,
    "gelu": _gelu,
    "silu": _silu,
    "sigmoid": _sigmoid,
}


def _run_unary(node: Node, f: Callable[[Any, Any, Any], None]) -> None:
    if node.out.n == 0:
        return
    o = dest(node.out)
    f(api_of(node.out).xp, load(node.operand()), o)
    commit(node.out, o)


def _unary(f: Callable[[Any, Any, Any], None]) -> Callable[[Node], None]:
    def kernel(node: Node) -> None:
        _run_unary(node, f)

    return kernel


def _scale(node: Node) -> None:
    s = np.float32(node.params["s"])

    def scale(xp: Any, x: Any, o: Any) -> None:
        xp.multiply(x, s, out=o)

    _run_unary(node, scale)


def _clamp(node: Node) -> None:
    lo, hi = np.float32(node.params["lo"]), np.float32(node.params["hi"])

    def clamp(xp: Any, x: Any, o: Any) -> None:
        xp.minimum(x, hi, out=o)
        xp.maximum(o, lo, out=o)

    _run_unary(node, clamp)


def _rope(node: Node) -> None:
    # Pair i of token t, (x[2i], x[2i+1]) in mode 0 or (x[i], x[i + n/2]) in mode 2, becomes
    # (a·cos − b·sin, a·sin + b·cos); the rest is copied.
    if node.out.n == 0:
        return
    n = node.params["n_rot"]
    x = load(node.operand(0))  # (1, T, H, D)
    c = load(node.operand(1))[0, 0][:, None, :]  # (T, 1, n/2)
    s = load(node.operand(2))[0, 0][:, None, :]
    o = dest(node.out)
    if node.params["mode"] == 0:
        xa, xb, oa, ob = x[..., 0:n:2], x[..., 1:n:2], o[..., 0:n:2], o[..., 1:n:2]
    else:
        h = n // 2
        xa, xb, oa, ob = x[..., :h], x[..., h:n], o[..., :h], o[..., h:n]
    ra = xa * c - xb * s
    rb = xa * s + xb * c
    if n < x.shape[-1]:
        o[..., n:] = x[..., n:]
    oa[...] = ra
    ob[...] = rb
    commit(node.out, o)


def _gated(f: Callable[[Any, Any, Any], None]) -> Callable[[Node], None]:
    # The optional fused gated activations: f(a) · tile(b) in one node.
    def kernel(node: Node) -> None:
        if node.out.n == 0:
            return
        api = api_of(node.out)
        o = dest(node.out)
        f(api.xp, load(node.operand(0)), o)
        tiled(api, "multiply", o, load(node.operand(1)), o)
        commit(node.out, o)

    return kernel


KERNELS: dict[str, Callable[[Node], None]] = {
    **{name: _unary(f) for name, f in _UNARY.items()},
    "rope": _rope,
    "swiglu": _gated(_silu),
    "geglu": _gated(_gelu),
    "scale": _scale,
    "clamp": _clamp,
    "add": _binary("add"),
    "sub": _binary("subtract"),
    "mul": _binary("multiply"),
    "div": _binary("divide"),
}
"""Element-wise kernels by op name."""
