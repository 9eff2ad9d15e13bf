"""Row ops along dim 0: softmax, norms, reductions and sorting (SEMANTICS §5.5, §5.8).

In numpy order dim 0 is the last axis. Empty rows follow the formulas literally: an empty sum is
0 and an empty mean is NaN (§1.4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlplug.ops import Meta

from ._common import Kernel, tile, values

__all__ = ["KERNELS", "softmax"]


def softmax(x: np.ndarray) -> np.ndarray:
    """Return ``exp(x - max) / Σ exp(x - max)`` along the last axis."""
    if x.shape[-1] == 0:
        return x.copy()
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def _mean(x: np.ndarray) -> np.ndarray:
    return (
        x.sum(axis=-1, keepdims=True) / x.shape[-1]
        if x.shape[-1]
        else np.full((*x.shape[:-1], 1), np.nan)
    )


def _variance(x: np.ndarray) -> np.ndarray:
    return _mean((x - _mean(x)) ** 2)


def _softmax(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    return softmax(values(srcs[0]))  # type: ignore[arg-type]


def _layer_norm(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    a, w, b = (*srcs, None, None)[:3]
    x = values(a)  # type: ignore[arg-type]
    y = (x - _mean(x)) / np.sqrt(_variance(x) + float(params["eps"]))
    if w is not None:
        y = y * tile(values(w), x.shape)
    if b is not None:
        y = y + tile(values(b), x.shape)
    return y


def _rms_norm(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    a, w = (*srcs, None)[:2]
    x = values(a)  # type: ignore[arg-type]
    y = x / np.sqrt(_mean(x * x) + float(params["eps"]))
    if w is not None:
        y = y * tile(values(w), x.shape)
    return y


def _rms_norm_add(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    a, w, r = srcs
    assert r is not None
    x = values(a)  # type: ignore[arg-type]
    return _rms_norm((a, w), params, out) + tile(values(r), x.shape)


def _sum_rows(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    return values(srcs[0]).sum(axis=-1, keepdims=True)  # type: ignore[arg-type]


def _mean_op(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    return _mean(values(srcs[0]))  # type: ignore[arg-type]


def _variance_op(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    return _variance(values(srcs[0]))  # type: ignore[arg-type]


def _stddev(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    return np.sqrt(_variance(values(srcs[0])))  # type: ignore[arg-type]


def _argsort(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    # One valid answer; ties (and NaNs) may come in any order, which the checks allow.
    return np.argsort(values(srcs[0]), axis=-1, kind="stable").astype(np.int64)  # type: ignore[arg-type]


def _topk(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    x = values(srcs[0])  # type: ignore[arg-type]
    order = np.argsort(-x, axis=-1, kind="stable")
    return order[..., : int(params["k"])].astype(np.int64)


KERNELS: dict[str, Kernel] = {
    "softmax": _softmax,
    "layer_norm": _layer_norm,
    "rms_norm": _rms_norm,
    "rms_norm_add": _rms_norm_add,
    "sum_rows": _sum_rows,
    "mean": _mean_op,
    "variance": _variance_op,
    "stddev": _stddev,
    "argsort": _argsort,
    "topk": _topk,
}
