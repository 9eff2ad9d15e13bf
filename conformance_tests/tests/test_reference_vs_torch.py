"""The float64 reference agrees with PyTorch for every op PyTorch defines.

The reference is the single source of truth every plugin is judged by, so it is checked against an
independent implementation too: PyTorch's CPU kernels in float64, on seeded random operands of
several shapes (odd extents, broadcasts, strides, padding, dilation, GQA). The mapping between
ggml's order and PyTorch's is the one SEMANTICS states (numpy order is PyTorch's order: a ggml
``[W, H, C, N]`` tensor is PyTorch's ``(N, C, H, W)``). ``torch`` is a test-only dependency (the
``dev`` extra); the module skips without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mlplug.dtype import DType
from mlplug.ops import OPS, Meta
from mlplug_conformance.reference import evaluate, numpy_shape

torch = pytest.importorskip("torch")
F = torch.nn.functional

F32 = DType.F32
RTOL, ATOL = 1e-12, 1e-12


def rand(rng: np.random.Generator, *ne: int) -> tuple[Meta, np.ndarray]:
    """A seeded F32 operand of ggml extents ``ne`` as float64 logical values (numpy order)."""
    meta = Meta.fresh(F32, ne)
    return meta, rng.standard_normal(numpy_shape(meta.ne))


def ref(op: str, *operands: tuple[Meta, np.ndarray] | None, **params: Any) -> np.ndarray:
    """The reference's exact result of ``op`` (numpy order, 4-D)."""
    metas = [None if o is None else o[0] for o in operands]
    result = OPS[op].infer(metas, params)
    return evaluate(op, [None if o is None else o[1] for o in operands], result.params, result.meta)


def tt(a: np.ndarray) -> Any:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def close(got: np.ndarray, want: Any) -> None:
    np.testing.assert_allclose(got, want.numpy(), rtol=RTOL, atol=ATOL)


SHAPES = [(1,), (7, 3), (33, 5, 2), (31, 2, 3, 2)]

UNARY: dict[str, Callable[[Any], Any]] = {
    "neg": torch.neg,
    "sin": torch.sin,
    "cos": torch.cos,
    "tanh": torch.tanh,
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "sqr": torch.square,
    "softmax": lambda x: torch.softmax(x, dim=-1),
    "sum_rows": lambda x: x.sum(-1, keepdim=True),
    "mean": lambda x: x.mean(-1, keepdim=True),
    "variance": lambda x: x.var(-1, unbiased=False, keepdim=True),
    "stddev": lambda x: x.std(-1, unbiased=False, keepdim=True),
}


@pytest.mark.parametrize("ne", SHAPES, ids=lambda ne: "x".join(map(str, ne)))
@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_and_rows(op: str, ne: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    a = rand(rng, *ne)
    close(ref(op, a), UNARY[op](tt(a[1])))


def test_sqrt() -> None:
    meta, x = rand(np.random.default_rng(2), 17, 3)
    x = np.abs(x)
    close(ref("sqrt", (meta, x)), torch.sqrt(tt(x)))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ne", SHAPES[1:], ids=lambda ne: "x".join(map(str, ne)))
def test_layer_norm(ne: tuple[int, ...], weighted: bool) -> None:
    rng = np.random.default_rng(3)
    a = rand(rng, *ne)
    w = rand(rng, ne[0]) if weighted else None
    b = rand(rng, ne[0]) if weighted else None
    got = ref("layer_norm", a, w, b, eps=1e-5)
    want = F.layer_norm(
        tt(a[1]),
        (ne[0],),
        None if w is None else tt(w[1].reshape(-1)),
        None if b is None else tt(b[1].reshape(-1)),
        eps=1e-5,
    )
    close(got, want)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ne", SHAPES[1:], ids=lambda ne: "x".join(map(str, ne)))
def test_rms_norm(ne: tuple[int, ...], weighted: bool) -> None:
    rng = np.random.default_rng(4)
    a = rand(rng, *ne)
    w = rand(rng, ne[0]) if weighted else None
    got = ref("rms_norm", a, w, eps=1e-6)
    want = F.rms_norm(tt(a[1]), (ne[0],), None if w is None else tt(w[1].reshape(-1)), eps=1e-6)
    close(got, want)


@pytest.mark.parametrize(("k", "m", "n", "batch"), [(1, 1, 1, 1), (64, 17, 5, 1), (33, 8, 3, 2)])
def test_mulmat(k: int, m: int, n: int, batch: int) -> None:
    rng = np.random.default_rng(5)
    a, b = rand(rng, k, m, batch), rand(rng, k, n, batch)
    # ggml: out[i, j] = Σ_k a[k, i]·b[k, j], i.e. B @ Aᵀ in numpy order.
    want = torch.matmul(tt(b[1]), tt(a[1]).transpose(-1, -2))
    close(ref("mulmat", a, b), want)


CONV = [
    # (W, H, IC, N), (KW, KH, OC), (s0, s1, p0, p1, d0, d1)
    ((8, 6, 3, 1), (3, 3, 4), (1, 1, 1, 1, 1, 1)),
    ((11, 7, 2, 2), (3, 2, 5), (2, 1, 0, 1, 1, 1)),
    ((13, 9, 1, 1), (3, 3, 2), (1, 2, 2, 0, 2, 1)),
    ((5, 5, 4, 3), (1, 1, 3), (1, 1, 0, 0, 1, 1)),
]


@pytest.mark.parametrize(("inp", "ker", "geom"), CONV)
def test_conv_2d(inp: tuple[int, ...], ker: tuple[int, int, int], geom: tuple[int, ...]) -> None:
    rng = np.random.default_rng(6)
    w, h, ic, n = inp
    kw, kh, oc = ker
    s0, s1, p0, p1, d0, d1 = geom
    kernel, x = rand(rng, kw, kh, ic, oc), rand(rng, w, h, ic, n)
    got = ref("conv_2d", kernel, x, s0=s0, s1=s1, p0=p0, p1=p1, d0=d0, d1=d1)
    want = F.conv2d(tt(x[1]), tt(kernel[1]), stride=(s1, s0), padding=(p1, p0), dilation=(d1, d0))
    close(got, want)


@pytest.mark.parametrize(("inp", "ker", "geom"), CONV)
def test_im2col_is_unfold(
    inp: tuple[int, ...], ker: tuple[int, int, int], geom: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(7)
    w, h, ic, n = inp
    kw, kh, oc = ker
    s0, s1, p0, p1, d0, d1 = geom
    kernel, x = rand(rng, kw, kh, ic, oc), rand(rng, w, h, ic, n)
    got = ref("im2col", kernel, x, s0=s0, s1=s1, p0=p0, p1=p1, d0=d0, d1=d1)
    cols = F.unfold(tt(x[1]), (kh, kw), dilation=(d1, d0), padding=(p1, p0), stride=(s1, s0))
    # unfold: (N, IC·KH·KW, OH·OW) with the same ic·KH·KW + ky·KW + kx row order as im2col;
    # im2col in numpy order is (N, OH, OW, IC·KH·KW).
    oh, ow = got.shape[1], got.shape[2]
    close(got, cols.reshape(n, ic * kh * kw, oh, ow).permute(0, 2, 3, 1))


@pytest.mark.parametrize(("ne", "k", "s", "p"), [((8, 6, 3, 1), 2, 2, 0), ((9, 7, 2, 2), 3, 2, 1)])
def test_avg_pool_2d(ne: tuple[int, ...], k: int, s: int, p: int) -> None:
    a = rand(np.random.default_rng(8), *ne)
    want = F.avg_pool2d(tt(a[1]), k, s, p, count_include_pad=True)
    close(ref("avg_pool_2d", a, k=k, s=s, p=p), want)


def test_argsort_and_topk() -> None:
    a = rand(np.random.default_rng(9), 37, 4, 3)  # continuous values: no ties
    x = tt(a[1])
    np.testing.assert_array_equal(ref("argsort", a), torch.argsort(x, dim=-1).numpy())
    top = torch.topk(x, 5, dim=-1, largest=True, sorted=True).indices
    np.testing.assert_array_equal(ref("topk", a, k=5), top.numpy())


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("d", "h", "hkv", "t", "length"), [(8, 4, 4, 1, 9), (16, 6, 2, 5, 33)])
def test_scaled_dot_product_attention(
    d: int, h: int, hkv: int, t: int, length: int, masked: bool
) -> None:
    rng = np.random.default_rng(10)
    q, k, v = rand(rng, d, h, t), rand(rng, d, hkv, length), rand(rng, d, hkv, length)
    mask = None
    if masked:
        m = rng.standard_normal((1, 1, t, length))
        m[..., 0, length // 2 :] = -np.inf  # a causal-style cut on the first row
        mask = (Meta.fresh(F32, (length, t)), m)
    scale = 1.0 / np.sqrt(d)
    got = ref("scaled_dot_product_attention", q, k, v, mask, scale=scale, permuted_v=False)
    # numpy order: query (1, T, H, D) -> torch (H, T, D); key/value (1, L, Hkv, D) -> (Hkv, L, D)
    qt = tt(q[1][0]).permute(1, 0, 2)
    kt = tt(k[1][0]).permute(1, 0, 2)
    vt = tt(v[1][0]).permute(1, 0, 2)
    attn = None if mask is None else tt(mask[1][0, 0])
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=attn, scale=scale, enable_gqa=True)
    close(got, out.permute(1, 0, 2).unsqueeze(0))  # (H, T, Dv) -> numpy (1, T, H, Dv)
