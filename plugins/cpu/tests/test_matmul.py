"""mulmat, mulmat_full_prec and mulmat_id (SEMANTICS §5.4) with every kind of weight."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from mlplug.device import DType

RNG = np.random.default_rng(3)


@pytest.mark.parametrize("op", ["mulmat", "mulmat_full_prec"])
def test_examples(h, op) -> None:
    v = h.tensor([0, 1, 2], 3)
    assert h.values(h.run(op, v, v)).tolist() == [5]
    out = h.run(op, h.tensor(np.arange(4), 4), h.tensor(np.arange(12), 4, 3))
    assert out.ne == (1, 3, 1, 1) and h.values(out).tolist() == [14, 38, 62]
    out = h.run(op, h.tensor(np.arange(20), 4, 5), h.tensor(np.arange(120), 4, 3, 10))
    assert out.ne == (5, 3, 10, 1)
    assert h.values(out)[:10].tolist() == [14, 38, 62, 86, 110, 38, 126, 214, 302, 390]


def test_grouped_query_attention_block_repeat(h) -> None:
    k = RNG.standard_normal((2, 5, 2)).astype(np.float32)  # ggml [2, 5, 2]: 2 KV heads
    q = RNG.standard_normal((4, 3, 2)).astype(np.float32)  # ggml [2, 3, 4]: 4 query heads
    out = h.array(h.run("mulmat", h.tensor(k, 2, 5, 2), h.tensor(q, 2, 3, 4)))[0]
    assert out.shape == (4, 3, 5)
    for head in range(4):
        np.testing.assert_allclose(out[head], q[head] @ k[head // 2].T, rtol=1e-6)


def test_block_repeat_in_dims_2_and_3(h) -> None:
    a = RNG.standard_normal((2, 3, 4, 8)).astype(np.float32)  # ggml [8, 4, 3, 2]
    b = RNG.standard_normal((4, 6, 5, 8)).astype(np.float32)  # ggml [8, 5, 6, 4]
    out = h.array(h.run("mulmat", h.tensor(a, 8, 4, 3, 2), h.tensor(b, 8, 5, 6, 4)))
    rep = np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)
    np.testing.assert_allclose(out, b @ rep.swapaxes(-1, -2), rtol=1e-5, atol=1e-5)


def test_strided_operands(h) -> None:
    # Attention scores: k.permute(0,2,1,3).mulmat(q.permute(0,2,1,3)) on [D, H, T] tensors.
    key = RNG.standard_normal((6, 2, 8)).astype(np.float32)  # ggml [8, 2, 6]: L=6, Hkv=2
    query = RNG.standard_normal((3, 4, 8)).astype(np.float32)  # ggml [8, 4, 3]: T=3, H=4
    k = h.permuted(h.tensor(key, 8, 2, 6, dtype=DType.F16), 0, 2, 1, 3)  # [8, 6, 2]
    q = h.permuted(h.tensor(query, 8, 4, 3), 0, 2, 1, 3)  # [8, 3, 4]
    out = h.array(h.run("mulmat_full_prec", k, q))[0]  # (H, T, L)
    k16 = key.astype(np.float16).astype(np.float64)
    for head in range(4):
        np.testing.assert_allclose(out[head], query[:, head] @ k16[:, head // 2].T, rtol=1e-5)


def test_empty_contraction_gives_zeros(h) -> None:
    out = h.run("mulmat", h.empty(DType.F32, 0), h.empty(DType.F32, 0))
    assert out.ne == (1, 1, 1, 1) and h.values(out).tolist() == [0]


def _weight_bytes(dtype: DType, rows: int, k: int) -> bytes:
    """Valid random blocks: random bits, with every fp16 scale set to a small finite value."""
    if dtype in (DType.Q8_0, DType.Q4_0, DType.Q5_1):
        x = RNG.standard_normal((rows, k)).astype(np.float32)
        q = gguf.quants.quantize(x, Q(dtype.ggml_type))
        return q.tobytes()
    raw = RNG.integers(0, 256, dtype.nbytes(rows * k), dtype=np.uint8)
    blocks = raw.reshape(-1, dtype.type_size)
    scale = np.frombuffer(np.float16(0.02).tobytes(), np.uint8)
    if dtype == DType.Q4_K:  # d, dmin, scales, qs
        blocks[:, 0:2] = scale
        blocks[:, 2:4] = scale
    elif dtype == DType.Q6_K:  # ql, qh, scales, d
        blocks[:, 208:210] = scale
    return raw.tobytes()


def _assert_within_activation_rounding(out: np.ndarray, x: np.ndarray, w: np.ndarray) -> None:
    """``out`` is ``x @ wᵀ`` up to rounding ``x`` to 8 bits per 32-block.

    The native kernels quantise the activation (SEMANTICS §5: the vec-dot format): each element
    moves by at most half a step, max|x_block|/254.
    """
    blocks = np.abs(x.reshape(*x.shape[:-1], -1, 32)).max(-1) / 254
    half_step = np.repeat(blocks, 32, axis=-1)
    bound = half_step @ np.abs(w).T + 1e-5 * (np.abs(x) @ np.abs(w).T)
    assert np.all(np.abs(out - x @ w.T) <= bound)


@pytest.mark.parametrize("dtype", [DType.Q4_0, DType.Q8_0, DType.Q4_K, DType.Q6_K, DType.Q5_1])
def test_quantised_weights_match_gguf_dequantise(h, dtype) -> None:
    rows, k, tokens = 7, 512, 5
    data = _weight_bytes(dtype, rows, k)
    w = gguf.quants.dequantize(
        np.frombuffer(data, np.uint8).reshape(rows, -1), Q(dtype.ggml_type)
    ).astype(np.float64)
    x = RNG.standard_normal((tokens, k)).astype(np.float32)
    out = h.run("mulmat", h.raw_tensor(data, dtype, k, rows), h.tensor(x, k, tokens))
    assert out.ne == (rows, tokens, 1, 1)
    _assert_within_activation_rounding(h.array(out)[0, 0], x, w)


def test_q8_k_weights_decode_by_hand(h) -> None:
    rows, k = 3, 256
    d = np.array([0.5, -0.25, 2.0], np.float32)
    q = RNG.integers(-128, 128, (rows, k), dtype=np.int8)
    sums = q.reshape(rows, 16, 16).sum(-1).astype(np.int16)
    blocks = b"".join(d[r].tobytes() + q[r].tobytes() + sums[r].tobytes() for r in range(rows))
    assert len(blocks) == rows * 292
    x = RNG.standard_normal((2, k)).astype(np.float32)
    out = h.run("mulmat", h.raw_tensor(blocks, DType.Q8_K, k, rows), h.tensor(x, k, 2))
    w = d[:, None].astype(np.float64) * q
    np.testing.assert_allclose(h.array(out)[0, 0], x @ w.T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [DType.F16, DType.BF16, DType.F64])
def test_float_weights(h, dtype) -> None:
    w = RNG.standard_normal((4, 32))
    x = RNG.standard_normal((3, 32)).astype(np.float32)
    if dtype == DType.F64:
        weight = h.raw_tensor(w.tobytes(), dtype, 32, 4)
        expected = x @ w.astype(np.float32).T
    else:
        weight = h.tensor(w, 32, 4, dtype=dtype)
        expected = x @ h.array(weight)[0, 0].T
    out = h.run("mulmat", weight, h.tensor(x, 32, 3))
    np.testing.assert_allclose(h.array(out)[0, 0], expected, rtol=1e-5, atol=1e-5)


def test_mulmat_id_example(h) -> None:
    experts = h.tensor(np.arange(60), 4, 3, 5)
    b = h.tensor([1, 0, 0, 0, 0, 1, 0, 0], 4, 1, 2)
    ids = h.tensor([4, 1, 0, 4], 2, 2, dtype=DType.I32)
    out = h.run("mulmat_id", experts, b, ids)
    assert out.ne == (3, 2, 2, 1)
    assert h.values(out).tolist() == [48, 52, 56, 12, 16, 20, 1, 5, 9, 49, 53, 57]


def test_mulmat_id_quantised_experts_and_one_b_per_slot(h) -> None:
    n_expert, rows, k, tokens, used = 4, 5, 64, 3, 2
    data = gguf.quants.quantize(
        RNG.standard_normal((n_expert * rows, k)).astype(np.float32), Q.Q4_0
    )
    w = gguf.quants.dequantize(data, Q.Q4_0).reshape(n_expert, rows, k)
    x = RNG.standard_normal((tokens, used, k)).astype(np.float32)  # b [K, n_used, T]
    chosen = np.array([[3, 0], [1, 1], [2, 3]], np.int32)  # ids [n_used, T]
    out = h.run(
        "mulmat_id",
        h.raw_tensor(data.tobytes(), DType.Q4_0, k, rows, n_expert),
        h.tensor(x, k, used, tokens),
        h.tensor(chosen, used, tokens, dtype=DType.I32),
    )
    got = h.array(out)[0]  # (T, n_used, rows)
    for t in range(tokens):
        for e in range(used):
            _assert_within_activation_rounding(got[t, e], x[t, e], w[chosen[t, e]])


@pytest.mark.parametrize("bad", [5, -1])
def test_mulmat_id_out_of_range_raises_index_error(h, bad) -> None:
    experts = h.tensor(np.arange(60), 4, 3, 5)
    b = h.tensor(np.ones(8), 4, 1, 2)
    with pytest.raises(IndexError):
        h.run("mulmat_id", experts, b, h.tensor([0, 1, bad, 2], 2, 2, dtype=DType.I32))
