"""Unary and binary element-wise ops, ``arange`` (SEMANTICS §5.2, §5.3, §4.3), ``rope`` and the
fused gated activations ``swiglu``/``geglu``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mlplug.ops import Meta

from ._common import Kernel, tile, values

__all__ = ["KERNELS", "gelu"]

_GELU_C = 0.7978845608
"""The constant SEMANTICS §5.3 writes (sqrt(2/pi) to ten digits)."""


def gelu(x: np.ndarray) -> np.ndarray:
    """Return the tanh-approximated GELU ``0.5·x·(1 + tanh(0.7978845608·x·(1 + 0.044715·x²)))``."""
    out: np.ndarray = 0.5 * x * (1.0 + np.tanh(_GELU_C * x * (1.0 + 0.044715 * x * x)))
    return out


_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "neg": np.negative,
    "sin": np.sin,
    "cos": np.cos,
    "tanh": np.tanh,
    "gelu": gelu,
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0.0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "sqr": lambda x: x * x,
    "sqrt": np.sqrt,
    "exp": np.exp,
}

_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
}


def _unary(f: Callable[[np.ndarray], np.ndarray]) -> Kernel:
    def kernel(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
        (a,) = srcs
        assert a is not None
        return f(values(a))

    return kernel


def _binary(f: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Kernel:
    def kernel(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
        a, b = srcs
        assert a is not None and b is not None
        return f(values(a), tile(values(b), a.shape))

    return kernel


def _scale(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    # params["s"] is already narrowed to F32 by the ops table; the product is exact in float64.
    return values(srcs[0]) * float(params["s"])  # type: ignore[arg-type]


def _clamp(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    x = values(srcs[0])  # type: ignore[arg-type]
    return np.maximum(np.minimum(x, float(params["hi"])), float(params["lo"]))


def _arange(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    # §4.3: the float64 values of numpy.arange; conversion to F32 (nearest) or I32 (truncation)
    # is the rounding to the result dtype.
    result = np.arange(
        float(params["start"]), float(params["stop"]), float(params["step"]), dtype=np.float64
    )
    if result.size != params["n"]:
        raise ValueError(f"arange: numpy gives {result.size} values, the rule {params['n']}")
    return result.reshape(1, 1, 1, -1)


def _rope(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    # Rotate pair i of token t, (x[2i], x[2i+1]) (mode 0) or (x[i], x[i + n/2]) (mode 2), by
    # cos[t, i] and sin[t, i]; values past n_rot are copied.
    a, cos, sin = srcs
    assert a is not None and cos is not None and sin is not None
    x = values(a).copy()  # (1, T, H, D)
    n, half = int(params["n_rot"]), int(params["n_rot"]) // 2
    c = values(cos)[0, 0][:, None, :]  # (T, 1, half)
    s = values(sin)[0, 0][:, None, :]
    if params["mode"] == 0:
        first, second = x[..., 0:n:2].copy(), x[..., 1:n:2].copy()
        x[..., 0:n:2] = first * c - second * s
        x[..., 1:n:2] = first * s + second * c
    else:
        first, second = x[..., :half].copy(), x[..., half:n].copy()
        x[..., :half] = first * c - second * s
        x[..., half:n] = first * s + second * c
    return x


KERNELS: dict[str, Kernel] = {
    **{name: _unary(f) for name, f in _UNARY.items()},
    "rope": _rope,
    # Optional fused ops: the composite's mathematics, rounded once.
    "swiglu": _binary(lambda a, b: _UNARY["silu"](a) * b),
    "geglu": _binary(lambda a, b: gelu(a) * b),
    **{name: _binary(f) for name, f in _BINARY.items()},
    "scale": _scale,
    "clamp": _clamp,
    "arange": _arange,
}
