"""Per-element error bounds and NMSE caps from ``OpDef.tolerance`` (DESIGN §6).

For an element with exact reference value ``r`` the bound is
``eps_mult · eps · scale + abs_eps · eps`` where

* ``eps`` is the working precision: the result dtype's epsilon for element-wise ops; for
  reductions and products the largest epsilon among the result and the float operands (an F16
  weight may be multiplied in F16, a quantised one against 8-bit quantised activations, §5.4);
* ``scale`` is ``|r|`` for element-wise ops, and for reductions and products the magnitude of the
  summed terms times ``√K`` (the probabilistic rounding bound of a K-term sum): for the linear
  ops the reference evaluated on ``|operands|`` (``c·eps·√K·(|A|·|B|)`` for ``mulmat``), and a
  worked-out propagation for the non-linear ones (softmax, norms, variance, stddev, attention).

Exact ops (``Tolerance.exact``) get bound 0 against the reference rounded to the result dtype.
Ops that declare a floor (``gelu``: §5.3's ``1e-3·|gelu(x)| + 1e-4``, for lookup tables) get
at least that.
The NMSE cap is ``max(tolerance.nmse, eps²)``; for reductions and products at least
``(eps_mult·eps)²``, so that a product against 8-bit quantised activations (working eps 2^-7)
may reach about 1e-3 over a handful of outputs, as llama.cpp's own backend tests allow for
``mul_mat`` (5e-4): the few outputs of a small case share one activation's rounding, which
makes their NMSE a noisy statistic. F32 and F16 products keep ``tolerance.nmse``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mlplug.dtype import DType
from mlplug.ops import OPS, Meta
from mlplug_conformance import convert
from mlplug_conformance.cases.program import RefStep
from mlplug_conformance.checks import Expected
from mlplug_conformance.reference import evaluate
from mlplug_conformance.reference.attention import scores, value_heads
from mlplug_conformance.reference.reduce import softmax

__all__ = ["buffer_expectation", "element_bound", "expectation", "nmse_cap", "working_eps"]

_LINEAR = {"mulmat", "mulmat_full_prec", "mulmat_id", "sum_rows", "mean", "conv_2d", "avg_pool_2d"}


def working_eps(op: str, out_dtype: DType, src_dtypes: Sequence[DType | None]) -> float:
    """Return the epsilon an op's result is judged by (see the module docstring)."""
    tol = OPS[op].tolerance
    if not tol.reduction:
        return convert.eps(out_dtype)
    floats = [d for d in (out_dtype, *src_dtypes) if d is not None and not convert.is_int(d)]
    return max(convert.eps(d) for d in floats)


def nmse_cap(op: str, eps: float) -> float:
    """Return the NMSE a result may not exceed (``inf`` for exact ops)."""
    tol = OPS[op].tolerance
    if tol.exact:
        return float("inf")
    floor = (tol.eps_mult * eps) ** 2 if tol.reduction else eps * eps
    return max(tol.nmse, floor)


def element_bound(
    op: str,
    srcs: Sequence[np.ndarray | None],
    params: Mapping[str, Any],
    meta: Meta,
    exact: np.ndarray,
    eps: float,
) -> np.ndarray:
    """Return the per-element absolute error bound (numpy order, like ``exact``)."""
    tol = OPS[op].tolerance
    if tol.exact:
        return np.zeros(exact.shape)
    with np.errstate(all="ignore"):
        if tol.reduction:
            scale_of: Callable[..., np.ndarray] = _SCALES.get(op, _linear)
            scale = scale_of(op, srcs, params, meta, exact, eps)
        else:
            scale = np.abs(exact)
        bound = tol.eps_mult * eps * np.broadcast_to(scale, exact.shape) + tol.abs_eps * eps
        if tol.rel_floor or tol.abs_floor:
            bound = np.maximum(bound, tol.rel_floor * np.abs(exact) + tol.abs_floor)
    return np.nan_to_num(np.asarray(bound, dtype=np.float64), nan=np.inf, posinf=np.inf)


def _k(op: str, srcs: Sequence[np.ndarray | None], params: Mapping[str, Any]) -> int:
    a = srcs[0]
    assert a is not None
    if op == "conv_2d":
        return int(np.prod(a.shape[1:]))
    if op == "avg_pool_2d":
        return int(params["k"]) ** 2
    return int(a.shape[-1])


def _linear(
    op: str,
    srcs: Sequence[np.ndarray | None],
    params: Mapping[str, Any],
    meta: Meta,
    exact: np.ndarray,
    eps: float,
) -> np.ndarray:
    magnitude = evaluate(op, [None if s is None else np.abs(s) for s in srcs], params, meta)
    return np.asarray(magnitude * np.sqrt(max(_k(op, srcs, params), 1)))


def _row_stats(srcs: Sequence[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray, int]:
    x = np.asarray(srcs[0], dtype=np.float64)
    k = max(x.shape[-1], 1)
    mu = x.mean(axis=-1, keepdims=True) if x.shape[-1] else np.zeros((*x.shape[:-1], 1))
    return x, mu, k


def _softmax(
    op: str,
    srcs: Sequence[np.ndarray | None],
    params: Mapping[str, Any],
    meta: Meta,
    exact: np.ndarray,
    eps: float,
) -> np.ndarray:
    # exp(x - max) carries a relative error of eps·|x - max| (the rounded argument), the sum
    # eps·√K.
    x, _, k = _row_stats(srcs)
    spread = np.abs(x - x.max(axis=-1, keepdims=True)) if x.size else x
    spread = np.where(np.isfinite(spread), spread, 0.0)
    return np.asarray(np.abs(exact) * (np.sqrt(k) + spread))


def _rms_norm(
    op: str,
    srcs: Sequence[np.ndarray | None],
    params: Mapping[str, Any],
    meta: Meta,
    exact: np.ndarray,
    eps: float,
) -> np.ndarray:
    _, _, k = _row_stats(srcs)
    return np.asarray(np.abs(exact) * (np.sqrt(k) + 2))


def _tiled_abs(t: np.ndarray | None, shape: tuple[int, ...], default: float) -> np.ndarray:
    if t is None:
        return np.full(shape, default)
    reps = [0 if s == 0 else s // d for s, d in zip(shape, t.shape, strict=True)]
    return np.tile(np.abs(np.asarray(t, dtype=np.float64)), reps)


def _layer_norm(
    op: str,
    srcs: Sequence[np.ndarray | None],
    params: Mapping[str, Any],
    meta: Meta,
    exact: np.ndarray,
    eps: float,
) -> np.ndarray:
    # The mean carries eps·√K·mean|x|, x - μ another eps·(|x| + |μ|); both are divided by sigma.
    x, mu, k = _row_stats(srcs)
    w, b = (*srcs[1:], None, None)[:2]
    sigma = (
        np.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + float(params["eps"]))
        if x.shape[-1]
        else np.ones_like(mu)
    )
    mean_abs = np.abs(x).mean(axis=-1, keepdims=True) if x.shape[-1] else mu
    centred = np.sqrt(k) * (mean_abs + np.abs(x) + np.abs(x - mu)) / sigma
    return np.asarray(centred * _tiled_abs(w, x.shape, 1.0) + _tiled_abs(b, x.shape, 0.0))


def _variance_scale(srcs: Sequence[np.ndarray | None]) -> np.ndarray:
    # Also covers the one-pass E[x²] - E[x]² form: its cancellation is eps·√K·mean(x²).
    x, mu, k = _row_stats(srcs)
    if not x.shape[-1]:
        return np.zeros(mu.shape)
    return np.asarray(np.sqrt(k) * ((np.abs(x) + np.abs(mu)) ** 2).mean(axis=-1, keepdims=True))


def _variance(
    op: str,
    srcs: Sequence[np.ndarray | None],
    params: Mapping[str, Any],
    meta: Meta,
    exact: np.ndarray,
    eps: float,
) -> np.ndarray:
    return _variance_scale(srcs)


def _stddev(
    op: str,
    srcs: Sequence[np.ndarray | None],
    params: Mapping[str, Any],
    meta: Meta,
    exact: np.ndarray,
    eps: float,
) -> np.ndarray:
    # dsigma = dvar / 2sigma, but never more than √dvar (a variance error around sigma = 0).
    var_scale = _variance_scale(srcs)
    tol = OPS["stddev"].tolerance
    floor = np.sqrt(tol.eps_mult * eps * var_scale)
    return np.asarray(var_scale / (2 * np.maximum(np.abs(exact), np.maximum(floor, 1e-300))))


def _attention(
    op: str,
    srcs: Sequence[np.ndarray | None],
    params: Mapping[str, Any],
    meta: Meta,
    exact: np.ndarray,
    eps: float,
) -> np.ndarray:
    # out = Σ_j p_j V_j. Score j carries ds_j = √Dk·|scale|·(|K|ᵀ|Q|)_j (relative eps), which
    # moves out by at most 2·Σ_j p_j·(|V_j| + |out|)·ds_j; the weighted sum adds √L·Σ_j p_j|V_j|.
    query, key, value, mask = (*srcs, None)[:4]
    assert query is not None and key is not None and value is not None
    scale = float(params["scale"])
    p = softmax(scores(query, key, mask, scale))  # (H, T, L)
    s_abs = scores(np.abs(query), np.abs(key), None, abs(scale))  # (H, T, L)
    v = np.abs(value_heads(value, bool(params["permuted_v"])))  # (Hkv, L, Dv)
    v = np.repeat(v, p.shape[0] // max(v.shape[0], 1), axis=0)  # (H, L, Dv)
    length, dk = p.shape[-1], np.asarray(query).shape[-1]
    weighted = np.einsum("htl,hld->thd", p, v)
    shifted = np.sqrt(dk) * p * s_abs
    score_part = 2 * (
        np.einsum("htl,hld->thd", shifted, v) + np.abs(exact[0]) * shifted.sum(axis=-1).T[..., None]
    )
    return np.asarray((np.sqrt(length) * weighted + score_part)[None])


_SCALES: dict[str, Callable[..., np.ndarray]] = {
    "softmax": _softmax,
    "rms_norm": _rms_norm,
    "layer_norm": _layer_norm,
    "variance": _variance,
    "stddev": _stddev,
    "scaled_dot_product_attention": _attention,
}


def expectation(step: RefStep) -> Expected:
    """Return what a correct result of the reference's checked step looks like."""
    meta = step.meta
    if step.op in ("argsort", "topk"):
        keys = step.srcs[0]
        return Expected(
            meta.ne,
            meta.dtype,
            step.exact,
            sort=step.op,
            keys=None if keys is None else np.asarray(keys),
        )
    src_dtypes = [None if m is None else m.dtype for m in step.src_metas]
    if step.op == "copy" and meta.dtype in (DType.Q8_0, DType.Q4_0):
        return Expected(meta.ne, meta.dtype, step.exact, quantised_step=True)
    eps = working_eps(step.op, meta.dtype, src_dtypes)
    bound = element_bound(step.op, step.srcs, step.params, meta, step.exact, eps)
    return Expected(meta.ne, meta.dtype, step.exact, bound, nmse_cap(step.op, eps))


def buffer_expectation(values: np.ndarray, meta: Meta, quantised_from: DType | None) -> Expected:
    """Return the expectation for a whole buffer read after compute (``Case.extra``).

    Args:
        values: The reference's final contents (already in the buffer's dtype).
        meta: The buffer's layout.
        quantised_from: Set when a ``copy`` quantised into it: then each element may be one
            quantisation step off (§3.2).
    """
    if quantised_from is not None and meta.dtype in (DType.Q8_0, DType.Q4_0):
        return Expected(meta.ne, meta.dtype, values, quantised_step=True)
    return Expected(meta.ne, meta.dtype, values)
