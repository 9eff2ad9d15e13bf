"""Element-wise kernels: unary ops, ``scale``, ``clamp``, the tiled binary ops, ``rope`` and the
gated activations ``swiglu``/``geglu``.

SEMANTICS §5.2-§5.3. Every op computes in F32 and rounds once to the result dtype. Binary ops
**tile** ``b`` over ``a`` (``b.ne[i]`` divides ``a.ne[i]``), which broadcasting does not do by
itself: :func:`tiled` splits each dim where ``b`` repeats into ``(repeats, b.ne[i])`` so that
plain broadcasting over the ``repeats`` axis performs the tiling without materialising it.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx

from mlplug.device import Node, tile_shapes
from mlplug_metal.kernels.quant import load, store

__all__ = ["KERNELS", "tiled"]

Fn = Callable[[mx.array], mx.array]


def tiled(f: Callable[[mx.array, mx.array], mx.array], x: mx.array, y: mx.array) -> mx.array:
    """Return ``f(x, tile(y))`` (SEMANTICS §5.2); ``y``'s extents divide ``x``'s."""
    sa, sb = tile_shapes(tuple(x.shape), tuple(y.shape))
    if sa == tuple(x.shape):
        return f(x, y)
    return f(x.reshape(sa), y.reshape(sb)).reshape(x.shape)


def _binary(f: Callable[[mx.array, mx.array], mx.array]) -> Callable[[Node], None]:
    def kernel(node: Node) -> None:
        if node.out.n == 0:
            return
        store(node.out, tiled(f, load(node.operand(0)), load(node.operand(1))))

    return kernel


def _gelu(x: mx.array) -> mx.array:
    # Tanh form, SEMANTICS §5.3: 0.5·x·(1 + tanh(0.7978845608·x·(1 + 0.044715·x²))).
    inner = (x * (x * x * 0.044715 + 1.0)) * 0.7978845608
    return x * (mx.tanh(inner) + 1.0) * 0.5


_UNARY: dict[str, Fn] = {
    "neg": mx.negative,
    "sin": mx.sin,
    "cos": mx.cos,
    "tanh": mx.tanh,
    "sqr": mx.square,
    "sqrt": mx.sqrt,
    "exp": mx.exp,
    "relu": lambda x: mx.maximum(x, 0.0),
    "gelu": _gelu,
    "silu": lambda x: x / (mx.exp(-x) + 1.0),
    "sigmoid": lambda x: 1.0 / (mx.exp(-x) + 1.0),
}


def _unary(f: Fn) -> Callable[[Node], None]:
    def kernel(node: Node) -> None:
        if node.out.n == 0:
            return
        store(node.out, f(load(node.operand())))

    return kernel


def _scale(node: Node) -> None:
    s = mx.array(node.params["s"], mx.float32)
    _unary(lambda x: x * s)(node)


def _clamp(node: Node) -> None:
    lo = mx.array(node.params["lo"], mx.float32)
    hi = mx.array(node.params["hi"], mx.float32)
    _unary(lambda x: mx.maximum(mx.minimum(x, hi), lo))(node)


def _rope(node: Node) -> None:
    # The optional fused rotary embedding from the cos/sin tables: pair i of token t,
    # (x[2i], x[2i+1]) in mode 0 or (x[i], x[i + n/2]) in mode 2, becomes
    # (a·cos − b·sin, a·sin + b·cos); values past n_rot are copied.
    if node.out.n == 0:
        return
    x = load(node.operand(0))  # (1, T, H, D)
    c = load(node.operand(1))[0, 0][:, None, :]  # (T, 1, n/2)
    s = load(node.operand(2))[0, 0][:, None, :]
    n = node.params["n_rot"]
    if node.params["mode"] == 0:
        xa, xb = x[..., 0:n:2], x[..., 1:n:2]
    else:
        xa, xb = x[..., : n // 2], x[..., n // 2 : n]
    ra, rb = xa * c - xb * s, xa * s + xb * c
    if node.params["mode"] == 0:
        rot = mx.stack([ra, rb], axis=-1).reshape(*ra.shape[:-1], n)
    else:
        rot = mx.concatenate([ra, rb], axis=-1)
    if n < x.shape[-1]:
        rot = mx.concatenate([rot, x[..., n:]], axis=-1)
    store(node.out, rot)


KERNELS: dict[str, Callable[[Node], None]] = {
    **{name: _unary(f) for name, f in _UNARY.items()},
    "rope": _rope,
    "scale": _scale,
    "clamp": _clamp,
    "add": _binary(mx.add),
    "sub": _binary(mx.subtract),
    "mul": _binary(mx.multiply),
    # The optional fused gated activations: f(a) · tile(b) in one node.
    "swiglu": _binary(lambda a, b: _UNARY["silu"](a) * b),
    "geglu": _binary(lambda a, b: _gelu(a) * b),
    "div": _binary(mx.divide),
}
