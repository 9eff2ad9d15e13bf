"""Fused scaled-dot-product attention (SEMANTICS §8.7).

``out[:, h, t] = Σ_j softmax_j(scale · key[:, h // g, j] · query[:, h, t] + mask[j, t]) ·
V[:, h // g, j]``, with ``g = H / Hkv`` (grouped-query attention).

Two paths. The native kernel (``_attention.c`` in the C extension) reads F32/F16/BF16 key, value
and mask in place through their strides, in blocks of the history with an online softmax, sharing
each decoded block among the ``g`` query heads of its KV head and a tile of query tokens; blocks a
tile's mask hides entirely are skipped. It runs on the native threads (``num_threads``). The
numpy path (block-quantised caches, ``MLPLUG_CPU_NATIVE=0``, no compiler) dequantises key and value
to F32 once and processes queries in chunks so that the score matrix stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlplug.device import DType, Node, TensorRef
from mlplug_cpu.kernels import native
from mlplug_cpu.kernels.quant import load, raw

__all__ = ["KERNELS", "active", "scaled_dot_product_attention"]

_SCORE_BYTES = 64 << 20
"""Upper bound on the F32 score block computed at once."""


_NATIVE_TYPES = frozenset({DType.F32, DType.F16, DType.BF16})


def active() -> str:
    """Return the attention path in use: ``"native-avx512"``, ``"native-avx2"``,
    ``"native-generic"`` (dtypes permitting) or ``"numpy"``."""
    ext = native.extension()
    return "numpy" if ext is None else f"native-{ext.attention_isa()}"


def _native(node: Node, refs: tuple[TensorRef, TensorRef, TensorRef, TensorRef | None]) -> bool:
    """Run the native kernel; return ``False`` (nothing written) where it does not apply."""
    ext = native.extension()
    if ext is None:
        return False
    q, k, v, mask = refs
    permuted = bool(node.params["permuted_v"])
    dk, heads, tokens = q.ne[0], q.ne[1], q.ne[2]
    kv_heads, length = k.ne[1], k.ne[2]
    dv = v.ne[1] if permuted else v.ne[0]
    if length == 0:
        return False
    windows: list[tuple[object, ...] | None] = []
    for ref in (q, k, v, mask, node.out):
        if ref is None:
            windows.append(None)
            continue
        data = native.host_array(ref)
        if data is None or ref.dtype not in _NATIVE_TYPES:
            return False
        windows.append((data, ref.dtype.ggml_type, ref.offset, ref.nb[0], ref.nb[1], ref.nb[2]))
    dims = (dk, dv, heads, kv_heads, tokens, length)
    scale = float(node.params["scale"])
    threads = native.threads() or ext.default_threads()
    return bool(ext.attention(*windows, dims, scale, permuted, threads))


def scaled_dot_product_attention(node: Node) -> None:
    """Attention of ``query [Dk, H, T]`` over ``key [Dk, Hkv, L]`` and value.

    ``params["permuted_v"]`` selects the value layout: ``[Dv, Hkv, L]`` (standard) or
    ``[L, Dv, Hkv]`` (permuted). The mask ``[L, Tm]`` (F32 or F16, optional) is added to the
    scaled scores; its rows ``t ≥ T`` are ignored. A query row whose mask row is all ``-inf``
    (a padding token; SEMANTICS §8.7 leaves it unspecified) gets zeros natively, NaN in numpy.
    """
    if node.out.n == 0:
        return
    mask_ref = node.optional(3)
    if _native(node, (node.operand(0), node.operand(1), node.operand(2), mask_ref)):
        return
    out = raw(node.out)[0]  # (T, H, Dv)
    q = load(node.operand(0))[0]  # (T, H, Dk)
    k = load(node.operand(1))[0]  # (L, Hkv, Dk)
    v = load(node.operand(2))[0]  # (L, Hkv, Dv), or (Hkv, Dv, L) when permuted
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
