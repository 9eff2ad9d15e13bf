"""Fused scaled-dot-product attention with ``mx.fast.scaled_dot_product_attention`` (§8.7).

``out[:, h, t] = Σ_j softmax_j(scale · key[:, h // g, j] · query[:, h, t] + mask[j, t]) ·
V[:, h // g, j]``, ``g = H / Hkv``: MLX's grouped-query attention maps query head ``h`` to KV
head ``h // g`` too, so K and V are passed untiled. The layouts are views: query ``[Dk, H, T]``
is MLX's ``(1, H, T, Dk)`` after a transpose; key ``[Dk, Hkv, L]`` gives ``(1, Hkv, L, Dk)``;
value ``[Dv, Hkv, L]`` (or ``[L, Dv, Hkv]`` with ``permuted_v``) gives ``(1, Hkv, L, Dv)``.
Quantised caches (Q8_0/Q4_0) are dequantised on the device first. The mask's rows ``t ≥ T``
are dropped and it is added to the scaled scores (F32).
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx

from mlplug.device import Node
from mlplug_metal.kernels.quant import load, store

__all__ = ["KERNELS", "scaled_dot_product_attention"]


def scaled_dot_product_attention(node: Node) -> None:
    """Attention of ``query [Dk, H, T]`` over ``key [Dk, Hkv, L]`` and value."""
    if node.out.n == 0:
        return
    q = load(node.operand(0))[0]  # (T, H, Dk)
    k = load(node.operand(1))[0]  # (L, Hkv, Dk)
    v = load(node.operand(2))[0]  # (L, Hkv, Dv), or (Hkv, Dv, L) when permuted
    mask_ref = node.optional(3)
    tokens = q.shape[0]
    queries = mx.transpose(q, (1, 0, 2))[None]  # (1, H, T, Dk)
    keys = mx.transpose(k, (1, 0, 2))[None]  # (1, Hkv, L, Dk)
    values = (mx.swapaxes(v, 1, 2) if node.params["permuted_v"] else mx.transpose(v, (1, 0, 2)))[
        None
    ]  # (1, Hkv, L, Dv)
    mask = load(mask_ref)[0, 0, :tokens] if mask_ref is not None else None  # (T, L)
    out = mx.fast.scaled_dot_product_attention(
        queries,
        keys,
        values,
        scale=float(node.params["scale"]),
        mask=mask,
    )  # (1, H, T, Dv)
    store(node.out, mx.transpose(out[0], (1, 0, 2))[None])  # (1, T, H, Dv)


KERNELS: dict[str, Callable[[Node], None]] = {
    "scaled_dot_product_attention": scaled_dot_product_attention,
}
