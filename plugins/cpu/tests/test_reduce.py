"""Softmax, norms, reductions, argsort and topk (SEMANTICS §5.5, §5.8)."""

from __future__ import annotations

import numpy as np
import pytest

from mlplug.device import DType, TensorRef

RNG = np.random.default_rng(1)


def test_softmax_example(h) -> None:
    out = h.run("softmax", h.tensor([1, 2, 3], 3))
    np.testing.assert_allclose(h.values(out), [0.0900, 0.2447, 0.6652], atol=5e-5)


def test_softmax_rows_of_strided_input(h) -> None:
    x = RNG.standard_normal((7, 5)).astype(np.float32)  # ggml [5, 7]
    view = h.permuted(h.tensor(x, 5, 7), 1, 0, 2, 3)  # rows are the columns of x
    out = h.array(h.run("softmax", view))[0, 0]
    e = np.exp(x.T - x.T.max(-1, keepdims=True))
    np.testing.assert_allclose(out, e / e.sum(-1, keepdims=True), rtol=1e-6)


def test_row_reductions_example(h) -> None:
    x = h.tensor([1, 2, 3, 4, 6, 8], 3, 2)
    assert h.values(h.run("sum_rows", x)).tolist() == [6, 18]
    mean = h.run("mean", x)
    assert mean.ne == (1, 2, 1, 1) and h.values(mean).tolist() == [2, 6]
    np.testing.assert_allclose(h.values(h.run("variance", x)), [0.6667, 2.6667], atol=1e-4)
    np.testing.assert_allclose(h.values(h.run("stddev", x)), [0.8165, 1.6330], atol=1e-4)


def test_reductions_keep_the_receiver_dtype(h) -> None:
    x = h.tensor([1, 2, 3, 4, 6, 8], 3, 2, dtype=DType.F16)
    assert h.run("sum_rows", x).dtype == DType.F16
    assert h.run("variance", x).dtype == DType.F16
    assert h.run("mean", x).dtype == DType.F32


def test_empty_rows(h) -> None:
    empty = h.empty(DType.F32, 0)
    assert h.values(h.run("sum_rows", empty)).tolist() == [0]
    assert np.isnan(h.values(h.run("mean", empty))[0])
    assert np.isnan(h.values(h.run("variance", empty))[0])


def test_norm_examples(h) -> None:
    out = h.run("rms_norm", h.tensor([1, 2, 3, 4], 4), None, eps=1e-6)
    np.testing.assert_allclose(h.values(out), [0.3651, 0.7303, 1.0954, 1.4606], atol=1e-4)
    out = h.run("layer_norm", h.tensor([1, 2, 3, 4], 4), None, None, eps=1e-5)
    np.testing.assert_allclose(h.values(out), [-1.3416, -0.4472, 0.4472, 1.3416], atol=1e-4)


def test_norms_with_tiled_weight_and_bias(h) -> None:
    x = RNG.standard_normal((3, 8)).astype(np.float32)  # [8, 3]
    w = RNG.standard_normal(8).astype(np.float32)
    b = RNG.standard_normal((3, 1)).astype(np.float32)  # [1, 3]: one bias per row
    mu = x.mean(-1, keepdims=True)
    norm = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    out = h.run("layer_norm", h.tensor(x, 8, 3), h.tensor(w, 8), h.tensor(b, 1, 3), eps=1e-5)
    np.testing.assert_allclose(h.array(out)[0, 0], norm * w + b, rtol=1e-5, atol=1e-6)
    out = h.run("layer_norm", h.tensor(x, 8, 3), None, h.tensor(b, 1, 3), eps=1e-5)
    np.testing.assert_allclose(h.array(out)[0, 0], norm + b, rtol=1e-5, atol=1e-6)
    out = h.run("rms_norm", h.tensor(x, 8, 3), h.tensor(w, 8), eps=1e-6)
    rms = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(h.array(out)[0, 0], rms * w, rtol=1e-5, atol=1e-6)


def test_rms_norm_in_f16(h) -> None:
    x = RNG.standard_normal(64).astype(np.float32)
    out = h.run("rms_norm", h.tensor(x, 64, dtype=DType.F16), None, eps=1e-6)
    x16 = x.astype(np.float16).astype(np.float64)
    expected = (x16 / np.sqrt((x16 * x16).mean() + 1e-6)).astype(np.float16)
    np.testing.assert_allclose(h.values(out), expected, rtol=1e-3)


def test_argsort_example(h) -> None:
    out = h.run("argsort", h.tensor([3, 1, 4, 1, 5], 5))
    assert out.dtype == DType.I32
    assert h.values(out).tolist() in ([1, 3, 0, 2, 4], [3, 1, 0, 2, 4])


def test_topk_example(h) -> None:
    out = h.run("topk", h.tensor([0.1, 0.9, 0.5, 0.3, 4, 3, 2, 1], 4, 2), k=2)
    assert out.ne == (2, 2, 1, 1) and out.nb[1] == 16  # a window into argsort-sized storage
    assert h.values(out).tolist() == [1, 2, 0, 1]


def test_topk_writes_only_its_window(h) -> None:
    x = RNG.standard_normal((3, 10)).astype(np.float32)
    out = h.run("topk", h.tensor(x, 10, 3), k=4)
    assert out.buffer is not None
    storage = np.frombuffer(out.buffer.read(0, out.buffer.nbytes), np.int32).reshape(3, 10)
    np.testing.assert_array_equal(storage[:, :4], np.argsort(-x, axis=-1)[:, :4])
    assert not storage[:, 4:].any()  # never written (the buffer starts zeroed)


@pytest.mark.parametrize("k", [1, 7, 50])
def test_topk_matches_a_full_sort(h, k) -> None:
    x = RNG.permutation(100 * 4).astype(np.float32).reshape(4, 100)
    out: TensorRef = h.run(
        "topk", h.tensor(x, 100, 4, dtype=DType.F16 if k == 7 else DType.F32), k=k
    )
    ref = x.astype(np.float16) if k == 7 else x
    np.testing.assert_array_equal(
        h.array(out)[0, 0], np.argsort(-ref, axis=-1, kind="stable")[:, :k]
    )
