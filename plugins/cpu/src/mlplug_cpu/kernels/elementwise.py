"""Element-wise kernels: unary ops, ``scale``, ``clamp``, the tiled binary ops, ``rope`` and the
gated activations ``swiglu``/``geglu``.

SEMANTICS §5.2-§5.3. Every op computes in F32 and rounds once to the result dtype. Binary ops
**tile** ``b`` over ``a`` (``b.ne[i]`` divides ``a.ne[i]``), which numpy broadcasting does not do
by itself: :func:`tiled` splits each dim where ``b`` repeats into ``(repeats, b.ne[i])`` so that
plain broadcasting over the ``repeats`` axis performs the tiling without copying ``b``.

The unary ops but ``sin``/``cos``/``tanh``, ``scale``, ``clamp``, ``add``/``sub``/``mul``/``div``,
``rope``, ``swiglu`` and ``geglu`` first try the C extension's small-op kernels
(``_native_ops.c``: F32/F16/BF16 operands through their strides, a few µs per call at decode
sizes, the pool's threads for prompt-sized calls); where it declines (not built,
``MLPLUG_CPU_NATIVE=0``, a partial overlap of output and input) the numpy code below runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlplug.device import Node, tile_shapes
from mlplug_cpu.kernels import native
from mlplug_cpu.kernels.quant import commit, dest, load, reshaped_view

__all__ = ["KERNELS", "tiled"]

Ufunc = Callable[..., np.ndarray]


def tiled(ufunc: Ufunc, x: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Return ``ufunc(x, tile(y))`` (SEMANTICS §5.2), written into ``out`` when given.

    ``y``'s extents must divide ``x``'s in every dim (the ops table checked that).
    """
    sa, sb = tile_shapes(x.shape, y.shape)
    xa, yb = x.reshape(sa), y.reshape(sb)
    if out is None:
        return ufunc(xa, yb).reshape(x.shape)
    target = reshaped_view(out, sa)
    if target is not None:
        ufunc(xa, yb, out=target)
    else:
        np.copyto(out, ufunc(xa, yb).reshape(x.shape))
    return out


def _binary(ufunc: Ufunc, code: int) -> Callable[[Node], None]:
    # code: the native kernel's op number (0 add, 1 sub, 2 mul, 3 div).
    def kernel(node: Node) -> None:
        a, b = node.operand(0), node.operand(1)
        if node.out.n == 0:
            return
        ext = native.extension()
        if ext is not None and ext.ops_binary(code, node.out, a, b, native.threads()):
            return
        o = dest(node.out)
        tiled(ufunc, load(a), load(b), out=o)
        commit(node.out, o)

    return kernel


_GELU_C = np.float32(0.7978845608)
_GELU_A = np.float32(0.044715)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)


def _gelu(x: np.ndarray, o: np.ndarray) -> None:
    # Tanh form, SEMANTICS §5.3: 0.5·x·(1 + tanh(0.7978845608·x·(1 + 0.044715·x²))).
    np.multiply(x, x, out=o)
    o *= _GELU_A
    o += _ONE
    o *= x
    o *= _GELU_C
    np.tanh(o, out=o)
    o += _ONE
    o *= x
    o *= _HALF


def _silu(x: np.ndarray, o: np.ndarray) -> None:
    np.negative(x, out=o)
    np.exp(o, out=o)
    o += _ONE
    np.divide(x, o, out=o)


def _sigmoid(x: np.ndarray, o: np.ndarray) -> None:
    np.negative(x, out=o)
    np.exp(o, out=o)
    o += _ONE
    np.reciprocal(o, out=o)


def _relu(x: np.ndarray, o: np.ndarray) -> None:
    np.maximum(x, np.float32(0.0), out=o)


def _ufunc(f: Ufunc) -> Callable[[np.ndarray, np.ndarray], None]:
    def apply(x: np.ndarray, o: np.ndarray) -> None:
        f(x, out=o)

    return apply


_UNARY: dict[str, Callable[[np.ndarray, np.ndarray], None]] = {
    "neg": _ufunc(np.negative),
    "sin": _ufunc(np.sin),
    "cos": _ufunc(np.cos),
    "tanh": _ufunc(np.tanh),
    "sqr": _ufunc(np.square),
    "sqrt": _ufunc(np.sqrt),
    "exp": _ufunc(np.exp),
    "relu": _relu,
    "gelu": _gelu,
    "silu": _silu,
    "sigmoid": _sigmoid,
}


# The native kernel's number of each unary op (sin, cos and tanh have none: numpy runs them).
_UNARY_CODES = {
    "scale": 0,
    "clamp": 1,
    "neg": 2,
    "sqr": 3,
    "sqrt": 4,
    "relu": 5,
    "silu": 6,
    "gelu": 7,
    "sigmoid": 8,
    "exp": 9,
}


def _run_unary(
    node: Node,
    f: Callable[[np.ndarray, np.ndarray], None],
    code: int | None,
    a_param: float = 0.0,
    b_param: float = 0.0,
) -> None:
    # code: the native kernel's op number (None: numpy only); a_param, b_param: its parameters.
    if node.out.n == 0:
        return
    a = node.operand()
    ext = native.extension()
    if (
        code is not None
        and ext is not None
        and ext.ops_unary(code, node.out, a, a_param, b_param, native.threads())
    ):
        return
    o = dest(node.out)
    f(load(a), o)
    commit(node.out, o)


def _unary(f: Callable[[np.ndarray, np.ndarray], None], code: int | None) -> Callable[[Node], None]:
    def kernel(node: Node) -> None:
        _run_unary(node, f, code)

    return kernel


def _scale(node: Node) -> None:
    s = np.float32(node.params["s"])

    def scale(x: np.ndarray, o: np.ndarray) -> None:
        np.multiply(x, s, out=o)

    _run_unary(node, scale, _UNARY_CODES["scale"], float(s))


def _clamp(node: Node) -> None:
    lo, hi = np.float32(node.params["lo"]), np.float32(node.params["hi"])

    def clamp(x: np.ndarray, o: np.ndarray) -> None:
        np.minimum(x, hi, out=o)
        np.maximum(o, lo, out=o)

    _run_unary(node, clamp, _UNARY_CODES["clamp"], float(lo), float(hi))


def _rope(node: Node) -> None:
    # The optional fused rotary embedding: pair i of token t, (x[2i], x[2i+1]) in mode 0 or
    # (x[i], x[i + n/2]) in mode 2, becomes (a·cos − b·sin, a·sin + b·cos); the rest is copied.
    if node.out.n == 0:
        return
    a, cos, sin = node.operand(0), node.operand(1), node.operand(2)
    ext = native.extension()
    mode = node.params["mode"]
    if ext is not None and ext.ops_rope(node.out, a, cos, sin, mode, native.threads()):
        return
    n = node.params["n_rot"]
    x = load(a)  # (1, T, H, D)
    c = load(cos)[0, 0][:, None, :]  # (T, 1, n/2)
    s = load(sin)[0, 0][:, None, :]
    o = dest(node.out)
    if mode == 0:
        xa, xb, oa, ob = x[..., 0:n:2], x[..., 1:n:2], o[..., 0:n:2], o[..., 1:n:2]
    else:
        h = n // 2
        xa, xb, oa, ob = x[..., :h], x[..., h:n], o[..., :h], o[..., h:n]
    np.subtract(xa * c, xb * s, out=oa)
    np.add(xa * s, xb * c, out=ob)
    if n < x.shape[-1]:
        o[..., n:] = x[..., n:]
    commit(node.out, o)


def _gated(f: Callable[[np.ndarray, np.ndarray], None], kind: int) -> Callable[[Node], None]:
    # The optional fused gated activations: f(a) · tile(b) in one node (one rounding). kind: the
    # native kernel's activation (0 silu, 1 gelu).
    def kernel(node: Node) -> None:
        if node.out.n == 0:
            return
        a, b = node.operand(0), node.operand(1)
        ext = native.extension()
        if ext is not None and ext.ops_gated(kind, node.out, a, b, native.threads()):
            return
        o = dest(node.out)
        f(load(a), o)
        tiled(np.multiply, o, load(b), out=o)
        commit(node.out, o)

    return kernel


KERNELS: dict[str, Callable[[Node], None]] = {
    **{name: _unary(f, _UNARY_CODES.get(name)) for name, f in _UNARY.items()},
    "rope": _rope,
    "swiglu": _gated(_silu, 0),
    "geglu": _gated(_gelu, 1),
    "scale": _scale,
    "clamp": _clamp,
    "add": _binary(np.add, 0),
    "sub": _binary(np.subtract, 1),
    "mul": _binary(np.multiply, 2),
    "div": _binary(np.divide, 3),
}
