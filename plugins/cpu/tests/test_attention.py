"""Fused scaled-dot-product attention against a plain numpy softmax(QK)V (SEMANTICS §8.7)."""

from __future__ import annotations

import numpy as np
import pytest

from mlplug.device import DType
from mlplug_cpu.kernels import attention

RNG = np.random.default_rng(4)


def _reference(q, k, v, mask, scale):
    """q (T, H, Dk), k (L, Hkv, Dk), v (L, Hkv, Dv), mask (T, L) or None → (T, H, Dv)."""
    tokens, heads, _ = q.shape
    group = heads // k.shape[1]
    out = np.zeros((tokens, heads, v.shape[-1]))
    for hd in range(heads):
        for t in range(tokens):
            s = scale * (k[:, hd // group] @ q[t, hd])
            if mask is not None:
                s = s + mask[t]
            p = np.exp(s - s.max())
            out[t, hd] = (p / p.sum()) @ v[:, hd // group]
    return out


# Block dtypes cannot hold a permuted V (SEMANTICS §8.2), so Q8_0 only in the standard layout.
@pytest.mark.parametrize(
    "permuted,kv_dtype",
    [
        (False, DType.F32),
        (False, DType.F16),
        (False, DType.Q8_0),
        (True, DType.F32),
        (True, DType.F16),
        (True, DType.BF16),
    ],
)
def test_attention_matches_numpy(h, permuted, kv_dtype) -> None:
    tokens, heads, kv_heads, dk, dv, length, tm = 3, 4, 2, 32, 32, 6, 8
    q = RNG.standard_normal((tokens, heads, dk)).astype(np.float32)
    k = RNG.standard_normal((length, kv_heads, dk)).astype(np.float32)
    v = RNG.standard_normal((length, kv_heads, dv)).astype(np.float32)
    mask = np.zeros((tm, length), np.float32)
    mask[np.triu_indices(tm, 1, length)] = -np.inf  # causal
    mask[tokens:] = np.nan  # rows t >= T must be ignored
    key = h.tensor(k, dk, kv_heads, length, dtype=kv_dtype)
    if permuted:
        value = h.tensor(v.transpose(1, 2, 0), length, dv, kv_heads, dtype=kv_dtype)
    else:
        value = h.tensor(v, dv, kv_heads, length, dtype=kv_dtype)
    out = h.run(
        "scaled_dot_product_attention",
        h.tensor(q, dk, heads, tokens),
        key,
        value,
        h.tensor(mask, length, tm),
        scale=0.125,
        permuted_v=permuted,
    )
    assert out.ne == (dv, heads, tokens, 1) and out.dtype == DType.F32
    k_used = h.array(key)[0]
    v_used = h.array(value)[0].transpose(2, 0, 1) if permuted else h.array(value)[0]
    expected = _reference(q, k_used, v_used, mask[:tokens], 0.125)
    np.testing.assert_allclose(h.array(out)[0], expected, rtol=1e-5, atol=1e-5)


def test_attention_f16_mask_no_mask_and_strided_query(h) -> None:
    tokens, heads, dk, length = 2, 2, 8, 5
    qbase = RNG.standard_normal((heads, tokens, dk)).astype(np.float32)  # ggml [Dk, T, H]
    query = h.permuted(h.tensor(qbase, dk, tokens, heads), 0, 2, 1, 3)  # [Dk, H, T] view
    k = RNG.standard_normal((length, heads, dk)).astype(np.float32)
    v = RNG.standard_normal((length, heads, dk)).astype(np.float32)
    mask = np.zeros((tokens, length), np.float32)
    mask[0, 3:] = -np.inf
    key, value = h.tensor(k, dk, heads, length), h.tensor(v, dk, heads, length)
    q = qbase.transpose(1, 0, 2)
    out = h.run(
        "scaled_dot_product_attention",
        query,
        key,
        value,
        h.tensor(mask, length, tokens, dtype=DType.F16),
        scale=0.3,
        permuted_v=False,
    )
    np.testing.assert_allclose(
        h.array(out)[0], _reference(q, k, v, mask, 0.3), rtol=1e-5, atol=1e-6
    )
    out = h.run(
        "scaled_dot_product_attention", query, key, value, None, scale=0.3, permuted_v=False
    )
    np.testing.assert_allclose(
        h.array(out)[0], _reference(q, k, v, None, 0.3), rtol=1e-5, atol=1e-6
    )


def test_attention_in_query_chunks(h, monkeypatch) -> None:
    monkeypatch.setattr(attention, "_SCORE_BYTES", 64)  # forces one token per chunk
    tokens, heads, dk, length = 5, 2, 4, 7
    q = RNG.standard_normal((tokens, heads, dk)).astype(np.float32)
    k = RNG.standard_normal((length, 1, dk)).astype(np.float32)
    v = RNG.standard_normal((length, 1, dk)).astype(np.float32)
    out = h.run(
        "scaled_dot_product_attention",
        h.tensor(q, dk, heads, tokens),
        h.tensor(k, dk, 1, length),
        h.tensor(v, dk, 1, length),
        None,
        scale=1.0,
        permuted_v=False,
    )
    np.testing.assert_allclose(
        h.array(out)[0], _reference(q, k, v, None, 1.0), rtol=1e-5, atol=1e-6
    )
