"""Fused scaled-dot-product attention (SEMANTICS §8.7).

``out[:, h, t] = Σ_j softmax_j(scale · key[:, h // g, j] · query[:, h, t] + mask[j, t]) ·
V[:, h // g, j]`` with ``g = H / Hkv``.

Decode (at most :data:`MAX_TOKENS` query tokens) with an F16 key and value in the standard
layout (the cache of :meth:`CudaDevice.cache_config` with flash attention) and an F16 mask or
none runs the flash-decoding kernels of ``kernels/cuda/attention.cu``: they read the cache
directly through its strides, split the history, and merge the splits' partial softmaxes. The
numpy twin :func:`flash_decode_twin` computes the same split-wise partial results under
emulation. Everything else runs as batched products on ``api.xp`` (queries in chunks so that the
score matrix stays bounded).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlplug.device import DType, Node
from mlplug_cuda import compiler
from mlplug_cuda.kernels.quant import api_of, load, raw
from mlplug_cuda.xp import ArrayApi

__all__ = ["KERNELS", "MAX_TOKENS", "SPLIT", "flash_decode_twin", "scaled_dot_product_attention"]

MAX_TOKENS = 8
"""Query tokens up to which the flash-decoding kernel is used."""

SPLIT = 256
"""History positions per split (one warp each)."""

_MAX_D = 256  # 32 lanes x MAX_DV_PER_LANE in attention.cu
_SCORE_BYTES = 64 << 20


def _flash_usable(node: Node) -> bool:
    q, k, v = node.operand(0), node.operand(1), node.operand(2)
    mask = node.optional(3)
    return (
        not node.params["permuted_v"]
        and q.dtype == DType.F32
        and k.dtype == v.dtype == DType.F16
        and (mask is None or (mask.dtype == DType.F16 and mask.nb[0] == 2))
        and q.ne[2] <= MAX_TOKENS
        and q.ne[3] == 1
        and q.ne[0] <= _MAX_D
        and v.ne[0] <= _MAX_D
        and q.nb[0] == 4
        and k.nb[0] == 2
        and v.nb[0] == 2
        and node.out.nb[0] == 4
        and node.out.dtype == DType.F32
    )


def flash_decode_twin(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None, scale: float, split: int
) -> np.ndarray:
    """Return attention as the two flash-decoding kernels compute it (numpy twin).

    Args:
        q: ``(T, H, Dk)`` F32.
        k: ``(L, Hkv, Dk)`` F16 (or F32).
        v: ``(L, Hkv, Dv)`` F16 (or F32).
        mask: ``(T, L)`` or ``None``.
        scale: Score scale.
        split: Positions per split.

    Returns:
        ``(T, H, Dv)`` F32.
    """
    tokens, heads, _ = q.shape
    length, kv_heads, dv = v.shape
    group = heads // kv_heads
    kv = np.arange(heads) // group
    keys = k.astype(np.float32)[:, kv]  # (L, H, Dk)
    values = v.astype(np.float32)[:, kv]  # (L, H, Dv)
    scores = np.einsum("thd,lhd->thl", q, keys) * np.float32(scale)
    if mask is not None:
        scores = scores + mask.astype(np.float32)[:, None, :]
    nsplit = max(1, -(-length // split))
    part_m = np.full((tokens, heads, nsplit), -np.inf, np.float32)
    part_l = np.zeros((tokens, heads, nsplit), np.float32)
    part_acc = np.zeros((tokens, heads, nsplit, dv), np.float32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for s in range(nsplit):
            chunk = scores[..., s * split : (s + 1) * split]
            if chunk.shape[-1] == 0:
                continue
            m = chunk.max(axis=-1)
            finite = m != -np.inf
            p = np.where(finite[..., None], np.exp(chunk - np.where(finite, m, 0)[..., None]), 0)
            part_m[..., s] = m
            part_l[..., s] = p.sum(axis=-1)
            part_acc[:, :, s] = np.einsum("thl,lhd->thd", p, values[s * split : (s + 1) * split])
        top = part_m.max(axis=-1, keepdims=True)
        weight = np.where(part_m != -np.inf, np.exp(part_m - top), 0).astype(np.float32)
        total = (part_l * weight).sum(axis=-1)
        mix = (part_acc * weight[..., None]).sum(axis=2)
        return np.asarray(mix / total[..., None], dtype=np.float32)


def _flash(node: Node) -> None:
    api = api_of(node.out)
    q_ref, k_ref, v_ref = node.operand(0), node.operand(1), node.operand(2)
    mask_ref = node.optional(3)
    scale = float(node.params["scale"])
    tokens, heads, dk = q_ref.ne[2], q_ref.ne[1], q_ref.ne[0]
    length, kv_heads, dv = k_ref.ne[2], k_ref.ne[1], v_ref.ne[0]
    out = raw(node.out)[0]  # (T, H, Dv)
    if api.emulated:
        mask = raw(mask_ref)[0, 0, :tokens] if mask_ref is not None else None
        result = flash_decode_twin(raw(q_ref)[0], raw(k_ref)[0], raw(v_ref)[0], mask, scale, SPLIT)
        np.copyto(out, result)
        return
    xp = api.xp
    device = getattr(node.out.buffer, "device_index", 0)
    nsplit = max(1, -(-length // SPLIT))
    part_m = xp.empty((tokens, heads, nsplit), np.float32)
    part_l = xp.empty((tokens, heads, nsplit), np.float32)
    part_acc = xp.empty((tokens, heads, nsplit, dv), np.float32)
    q, k, v = raw(q_ref)[0], raw(k_ref)[0], raw(v_ref)[0]
    mask = raw(mask_ref)[0, 0] if mask_ref is not None else xp.zeros((1, 1), np.float16)
    partial = compiler.function("attention.cu", "attn_partial", device)
    partial(
        (nsplit, heads, tokens),
        (32,),
        (
            q, np.int64(q.strides[1] // 4), np.int64(q.strides[0] // 4),
            k, np.int64(k.strides[1] // 2), np.int64(k.strides[0] // 2),
            v, np.int64(v.strides[1] // 2), np.int64(v.strides[0] // 2),
            mask, np.int64(mask.strides[0] // 2), np.int32(mask_ref is not None),
            np.int32(dk), np.int32(dv), np.int32(heads), np.int32(kv_heads),
            np.int32(length), np.int32(SPLIT), np.float32(scale),
            part_m, part_l, part_acc,
        ),
    )  # fmt: skip
    combine = compiler.function("attention.cu", "attn_combine", device)
    combine(
        (heads, tokens),
        (32,),
        (
            part_m, part_l, part_acc, np.int32(nsplit), np.int32(dv), np.int32(heads),
            out, np.int64(out.strides[1] // 4), np.int64(out.strides[0] // 4),
        ),
    )  # fmt: skip


def _batched(api: ArrayApi, node: Node) -> None:
    xp = api.xp
    out = raw(node.out)[0]  # (T, H, Dv)
    q = load(node.operand(0))[0]  # (T, H, Dk)
    k = load(node.operand(1))[0]  # (L, Hkv, Dk)
    v = load(node.operand(2))[0]  # (L, Hkv, Dv), or (Hkv, Dv, L) when permuted
    mask_ref = node.optional(3)
    tokens, heads, dk = q.shape
    length, kv_heads, _ = k.shape
    group = heads // kv_heads
    keys = k.transpose(1, 2, 0)  # (Hkv, Dk, L)
    values = v.swapaxes(1, 2) if node.params["permuted_v"] else v.transpose(1, 0, 2)
    dv = values.shape[-1]
    mask = load(mask_ref)[0, 0, :tokens] if mask_ref is not None else None  # (T, L)
    scale = np.float32(node.params["scale"])
    chunk = max(1, _SCORE_BYTES // max(1, 4 * heads * length))
    for t0 in range(0, tokens, chunk):
        t1 = min(tokens, t0 + chunk)
        n = t1 - t0
        qh = q[t0:t1].reshape(n, kv_heads, group, dk).transpose(1, 2, 0, 3)
        scores = xp.matmul(qh.reshape(kv_heads, group * n, dk), keys)  # (Hkv, g·n, L)
        scores *= scale
        scores = scores.reshape(kv_heads, group, n, length)
        if mask is not None:
            scores += mask[t0:t1]
        scores -= scores.max(axis=-1, keepdims=True)
        xp.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True, dtype=np.float32)
        mixed = xp.matmul(scores.reshape(kv_heads, group * n, length), values)
        out[t0:t1] = (
            mixed.reshape(kv_heads, group, n, dv).transpose(2, 0, 1, 3).reshape(n, heads, dv)
        )


def scaled_dot_product_attention(node: Node) -> None:
    """Attention of ``query [Dk, H, T]`` over ``key [Dk, Hkv, L]`` and value (see the module)."""
    if node.out.n == 0:
        return
    if _flash_usable(node):
        _flash(node)
    else:
        _batched(api_of(node.out), node)


KERNELS: dict[str, Callable[[Node], None]] = {
    "scaled_dot_product_attention": scaled_dot_product_attention,
}
"""Attention kernel by op name."""
