"""Fused scaled-dot-product attention (SEMANTICS §8.7).

``out[:, h, t] = Σ_j softmax_j(scale · key[:, h // g, j] · query[:, h, t] + mask[j, t]) ·
V[:, h // g, j]``, with ``g = H / Hkv`` (grouped-query attention: the ``g`` query heads of one KV
head share one batched product). Key and value are dequantised to F32 once; queries are processed
in chunks so that the score matrix stays bounded for long prompts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlplug.device import Node, TensorRef
from mlplug_cpu.kernels.quant import load, raw

__all__ = ["KERNELS", "scaled_dot_product_attention"]

_SCORE_BYTES = 64 << 20
"""Upper bound on the F32 score block computed at once."""


def _src(node: Node, i: int) -> TensorRef:
    ref = node.srcs[i]
    assert ref is not None
    return ref


def scaled_dot_product_attention(node: Node) -> None:
    """Attention of ``query [Dk, H, T]`` over ``key [Dk, Hkv, L]`` and value.

    ``params["permuted_v"]`` selects the value layout: ``[Dv, Hkv, L]`` (standard) or
    ``[L, Dv, Hkv]`` (permuted). The mask ``[L, Tm]`` (F32 or F16, optional) is added to the
    scaled scores; its rows ``t ≥ T`` are ignored.
    """
    if node.out.n == 0:
        return
    out = raw(node.out)[0]  # (T, H, Dv)
    q = load(_src(node, 0))[0]  # (T, H, Dk)
    k = load(_src(node, 1))[0]  # (L, Hkv, Dk)
    v = load(_src(node, 2))[0]  # (L, Hkv, Dv), or (Hkv, Dv, L) when permuted
    mask_ref = node.srcs[3] if len(node.srcs) > 3 else None
    tokens, heads, dk = q.shape
    length, kv_heads, _ = k.shape
    group = heads // kv_heads
    keys = k.transpose(1, 2, 0)  # (Hkv, Dk, L)
    values = v.swapaxes(1, 2) if node.params["permuted_v"] else v.transpose(1, 0, 2)  # (Hkv, L, Dv)
    dv = values.shape[-1]
    mask = load(mask_ref)[0, 0, :tokens] if mask_ref is not None else None  # (T, L)
    scale = np.float32(node.params["scale"])

    chunk = max(1, _SCORE_BYTES // max(1, 4 * heads * length))
    for t0 in range(0, tokens, chunk):
        t1 = min(tokens, t0 + chunk)
        n = t1 - t0
        # Query (n, H, Dk) → (Hkv, g·n, Dk): head h = kv·g + i, so each KV head's group is one
        # batch of the product.
        qh = q[t0:t1].reshape(n, kv_heads, group, dk).transpose(1, 2, 0, 3)
        scores = np.matmul(qh.reshape(kv_heads, group * n, dk), keys)  # (Hkv, g·n, L)
        scores *= scale
        scores = scores.reshape(kv_heads, group, n, length)
        if mask is not None:
            scores += mask[t0:t1]
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True, dtype=np.float32)
        mixed = np.matmul(scores.reshape(kv_heads, group * n, length), values)  # (Hkv, g·n, Dv)
        out[t0:t1] = (
            mixed.reshape(kv_heads, group, n, dv).transpose(2, 0, 1, 3).reshape(n, heads, dv)
        )


KERNELS: dict[str, Callable[[Node], None]] = {
    "scaled_dot_product_attention": scaled_dot_product_attention,
}
