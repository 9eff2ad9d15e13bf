"""conv_2d, im2col and avg_pool_2d against direct loops (SEMANTICS §5.9)."""

from __future__ import annotations

import numpy as np
import pytest

from mlplug.device import DType

RNG = np.random.default_rng(5)


def _conv_reference(x, w, s0, s1, p0, p1, d0, d1):
    """x (N, IC, H, W), w (OC, IC, KH, KW) → (N, OC, OH, OW), straight from the formula."""
    n, _, height, width = x.shape
    oc, _, kh, kw = w.shape
    oh = (height + 2 * p1 - d1 * (kh - 1) - 1) // s1 + 1
    ow = (width + 2 * p0 - d0 * (kw - 1) - 1) // s0 + 1
    out = np.zeros((n, oc, oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            for ky in range(kh):
                for kx in range(kw):
                    iy, ix = oy * s1 + ky * d1 - p1, ox * s0 + kx * d0 - p0
                    if 0 <= iy < height and 0 <= ix < width:
                        out[:, :, oy, ox] += x[:, :, iy, ix] @ w[:, :, ky, kx].T
    return out


@pytest.mark.parametrize("params", [(1, 1, 1, 1, 1, 1), (2, 1, 0, 2, 1, 2), (3, 2, 1, 0, 2, 1)])
@pytest.mark.parametrize("kernel_dtype", [DType.F32, DType.F16])
def test_conv_2d(h, params, kernel_dtype) -> None:
    x = RNG.standard_normal((2, 3, 9, 11)).astype(np.float32)  # ggml [11, 9, 3, 2]
    w = RNG.standard_normal((4, 3, 3, 2)).astype(np.float32)  # ggml [2, 3, 3, 4]
    s0, s1, p0, p1, d0, d1 = params
    kernel = h.tensor(w, 2, 3, 3, 4, dtype=kernel_dtype)
    out = h.run(
        "conv_2d", kernel, h.tensor(x, 11, 9, 3, 2), s0=s0, s1=s1, p0=p0, p1=p1, d0=d0, d1=d1
    )
    expected = _conv_reference(x, h.array(kernel), *params)
    assert h.array(out).shape == expected.shape
    np.testing.assert_allclose(h.array(out), expected, rtol=1e-5, atol=1e-5)


def test_im2col_example_shape_and_values(h) -> None:
    x = RNG.standard_normal((1, 3, 24, 32)).astype(np.float32)
    kernel = h.empty(DType.F16, 3, 3, 3, 16)
    out = h.run("im2col", kernel, h.tensor(x, 32, 24, 3, 1), s0=1, s1=1, p0=1, p1=1, d0=1, d1=1)
    assert out.ne == (27, 32, 24, 1)
    cols = h.array(out)[0]  # (OH, OW, IC·KH·KW)
    padded = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    for oy, ox in [(0, 0), (5, 7), (23, 31)]:
        np.testing.assert_array_equal(cols[oy, ox], padded[:, oy : oy + 3, ox : ox + 3].ravel())


def test_avg_pool_2d_counts_padding(h) -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    out = h.run("avg_pool_2d", h.tensor(x, 4, 4, 1, 1, dtype=DType.F16), k=2, s=2, p=1)
    assert out.ne == (3, 3, 1, 1) and out.dtype == DType.F32
    padded = np.pad(x[0, 0], 1)
    expected = [
        [padded[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].sum() / 4 for j in range(3)] for i in range(3)
    ]
    np.testing.assert_array_equal(h.array(out)[0, 0], expected)


def test_avg_pool_2d_overlapping_windows(h) -> None:
    x = RNG.standard_normal((2, 3, 7, 6)).astype(np.float32)
    out = h.array(h.run("avg_pool_2d", h.tensor(x, 6, 7, 3, 2), k=3, s=1, p=0))
    expected = np.zeros((2, 3, 5, 4))
    for i in range(5):
        for j in range(4):
            expected[:, :, i, j] = x[:, :, i : i + 3, j : j + 3].mean(axis=(-2, -1))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
