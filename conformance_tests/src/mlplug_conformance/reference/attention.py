"""Fused attention, ``scaled_dot_product_attention`` (SEMANTICS §8.7).

``out[:, h, t] = Σ_j softmax_j(scale · Σ_d key[d, h // g, j]·query[d, h, t] + mask[j, t]) ·
V[:, h // g, j]`` with ``g = H / Hkv``; ``V`` is ``value`` ``[Dv, Hkv, L]``, or ``[L, Dv, Hkv]``
when ``params["permuted_v"]``. Mask rows ``t ≥ T`` are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlplug.ops import Meta

from ._common import Kernel, values
from .reduce import softmax

__all__ = ["KERNELS", "scores", "value_heads"]


def value_heads(value: np.ndarray, permuted_v: bool) -> np.ndarray:
    """Return V as ``(Hkv, L, Dv)`` from either value layout (numpy-order 4-D input)."""
    v = values(value)[0]
    # standard [Dv, Hkv, L] is numpy (L, Hkv, Dv); permuted [L, Dv, Hkv] is numpy (Hkv, Dv, L)
    heads: np.ndarray = v.transpose(1, 0, 2) if not permuted_v else v.transpose(0, 2, 1)
    return heads


def scores(query: np.ndarray, key: np.ndarray, mask: np.ndarray | None, scale: float) -> np.ndarray:
    """Return ``scale · KᵀQ + mask`` as ``(H, T, L)`` (the softmax argument)."""
    q = values(query)[0]  # (T, H, Dk)
    k = values(key)[0]  # (L, Hkv, Dk)
    tokens, heads = q.shape[0], q.shape[1]
    g = heads // k.shape[1]
    kh = np.repeat(k.transpose(1, 0, 2), g, axis=0)  # (H, L, Dk): head h uses KV head h // g
    s = scale * np.einsum("hld,thd->htl", kh, q)
    if mask is not None:
        s = s + values(mask)[0, 0, :tokens][None]  # (T, L) rows t < T
    out: np.ndarray = s
    return out


def _attention(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    query, key, value, mask = (*srcs, None)[:4]
    assert query is not None and key is not None and value is not None
    p = softmax(scores(query, key, mask, float(params["scale"])))  # (H, T, L)
    v = value_heads(value, bool(params["permuted_v"]))  # (Hkv, L, Dv)
    g = p.shape[0] // v.shape[0]
    result = np.einsum("htl,hld->thd", p, np.repeat(v, g, axis=0))  # (T, H, Dv)
    return result[None]


KERNELS: dict[str, Kernel] = {"scaled_dot_product_attention": _attention}
