"""The native fused attention kernel (``_attention.c``) against float64, on every ISA it has.

Shapes the kernel treats specially: histories that are not a multiple of its 128-cell block,
grouped-query heads, head sizes that are not a multiple of the vector width, masks with rows or
whole blocks of ``-inf``, long histories split across threads (merged at the end) and the
permuted value layout.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from mlplug.device import DType, TensorRef
from mlplug_cpu.kernels import attention, native

ENV_ISA = "MLPLUG_CPU_ATTENTION_ISA"
RNG = np.random.default_rng(12)
NATIVE_BUILT = native.extension() is not None


def _isas() -> list[str]:
    if not NATIVE_BUILT:
        return ["none"]
    best = native.extension().attention_isa()  # type: ignore[union-attr]
    return {"avx512": ["avx512", "avx2", "generic"], "avx2": ["avx2", "generic"]}.get(
        best, ["generic"]
    )


@pytest.fixture(params=_isas())
def isa(request, monkeypatch) -> Iterator[str]:
    """Run a test on each kernel the CPU has; the numpy path is made to fail loudly."""
    if request.param == "none":
        pytest.skip("mlplug_cpu._native is not built")
    monkeypatch.setenv(native.ENV_NATIVE, "1")
    native.configure_from_env()
    monkeypatch.setenv(ENV_ISA, request.param)
    assert attention.active() == f"native-{request.param}"

    def no_numpy(ref: TensorRef) -> np.ndarray:
        raise AssertionError("the numpy attention path ran")

    monkeypatch.setattr(attention, "load", no_numpy)
    yield request.param
    monkeypatch.delenv(native.ENV_NATIVE)
    native.configure_from_env()


def _reference(q, k, v, mask, scale) -> np.ndarray:
    """float64 attention: q (T, H, Dk), k (L, Hkv, Dk), v (L, Hkv, Dv), mask (T, L) or None."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    kk = np.repeat(k, group, axis=1)  # (L, H, Dk)
    vv = np.repeat(v, group, axis=1)
    scores = scale * np.einsum("thd,lhd->htl", q, kk)
    if mask is not None:
        scores = scores + mask.astype(np.float64)[None]
    with np.errstate(invalid="ignore"):
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("htl,lhd->thd", p, vv)


def _run(
    h,
    *,
    tokens: int,
    heads: int,
    kv_heads: int,
    length: int,
    dk: int = 64,
    dv: int = 64,
    kv_dtype: DType = DType.F16,
    mask: np.ndarray | None = None,
    mask_dtype: DType = DType.F32,
    permuted: bool = False,
    scale: float = 0.125,
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (kernel output, float64 reference) as (T, H, Dv) arrays."""
    q = RNG.standard_normal((tokens, heads, dk)).astype(np.float32)
    k = RNG.standard_normal((length, kv_heads, dk)).astype(np.float32)
    v = RNG.standard_normal((length, kv_heads, dv)).astype(np.float32)
    key = h.tensor(k, dk, kv_heads, length, dtype=kv_dtype)
    if permuted:
        value = h.tensor(v.transpose(1, 2, 0), length, dv, kv_heads, dtype=kv_dtype)
    else:
        value = h.tensor(v, dv, kv_heads, length, dtype=kv_dtype)
    mask_ref = None
    if mask is not None:
        mask_ref = h.tensor(mask, length, mask.shape[0], dtype=mask_dtype)
    h.device.num_threads = threads  # execute() runs native kernels on these
    out = h.run(
        "scaled_dot_product_attention",
        h.tensor(q, dk, heads, tokens),
        key,
        value,
        mask_ref,
        scale=scale,
        permuted_v=permuted,
    )
    # The reference sees the stored (rounded) key, value and mask.
    k_used = np.asarray(h.array(key)[0])
    v_used = h.array(value)[0].transpose(2, 0, 1) if permuted else h.array(value)[0]
    m_used = None if mask_ref is None else h.array(mask_ref)[0, 0, :tokens]
    return h.array(out)[0], _reference(q, k_used, v_used, m_used, scale)


def _close(out: np.ndarray, expected: np.ndarray) -> None:
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)


def _causal(tokens: int, length: int, past: int) -> np.ndarray:
    """Mask (T, L): token t (at position past + t) sees cells j <= past + t."""
    mask = np.zeros((tokens, length), np.float32)
    for t in range(tokens):
        mask[t, past + t + 1 :] = -np.inf
    return mask


@pytest.mark.parametrize("length", [1, 5, 127, 128, 129, 300, 1000])
def test_decode_odd_history_lengths(h, isa, length) -> None:
    out, expected = _run(
        h, tokens=1, heads=8, kv_heads=2, length=length, mask=np.zeros((1, length), np.float32)
    )
    _close(out, expected)


@pytest.mark.parametrize("kv_dtype", [DType.F32, DType.F16, DType.BF16], ids=lambda d: d.name)
@pytest.mark.parametrize("permuted", [False, True], ids=["standard", "permuted"])
def test_value_layouts_and_dtypes(h, isa, kv_dtype, permuted) -> None:
    length = 200
    out, expected = _run(
        h,
        tokens=3,
        heads=4,
        kv_heads=4,
        length=length,
        kv_dtype=kv_dtype,
        permuted=permuted,
        mask=_causal(3, length, length - 3),
    )
    _close(out, expected)


@pytest.mark.parametrize("length", [5, 97, 300])
@pytest.mark.parametrize(("tokens", "heads", "kv_heads"), [(1, 8, 1), (1, 32, 4), (40, 8, 2)])
@pytest.mark.parametrize(("dk", "dv"), [(64, 64), (40, 24), (7, 130)])
def test_permuted_values_for_few_and_many_rows(h, isa, length, tokens, heads, kv_heads, dk, dv):
    # A decode step (up to 16 query rows per KV head) reads the transposed value block as it is
    # (a dot product per row and d); a prompt tile (32 rows) transposes it into rows first.
    length += tokens - 1  # every token sees at least `length` cells
    out, expected = _run(
        h,
        tokens=tokens,
        heads=heads,
        kv_heads=kv_heads,
        length=length,
        dk=dk,
        dv=dv,
        kv_dtype=DType.F16,
        permuted=True,
        mask=_causal(tokens, length, length - tokens),
        scale=dk**-0.5,
    )
    _close(out, expected)


@pytest.mark.parametrize(("heads", "kv_heads"), [(1, 1), (6, 3), (32, 4), (12, 1)])
@pytest.mark.parametrize(("dk", "dv"), [(64, 64), (40, 24), (7, 130)])
def test_grouped_query_heads_and_head_sizes(h, isa, heads, kv_heads, dk, dv) -> None:
    length = 150
    out, expected = _run(
        h,
        tokens=5,
        heads=heads,
        kv_heads=kv_heads,
        length=length,
        dk=dk,
        dv=dv,
        mask=_causal(5, length, length - 5),
        scale=dk**-0.5,
    )
    _close(out, expected)


@pytest.mark.parametrize("mask_dtype", [DType.F32, DType.F16], ids=lambda d: d.name)
def test_causal_prompt_skips_hidden_blocks(h, isa, mask_dtype) -> None:
    # 300 tokens from an empty cache padded to 512 cells: later tiles see more blocks, the
    # padding cells (256 ..) are hidden from every token.
    tokens, length = 300, 512
    out, expected = _run(
        h,
        tokens=tokens,
        heads=8,
        kv_heads=2,
        length=length,
        mask=_causal(tokens, length, 0),
        mask_dtype=mask_dtype,
    )
    _close(out, expected)


def test_rows_of_minus_inf_give_zeros_and_leave_the_others(h, isa) -> None:
    tokens, length = 6, 260
    mask = _causal(tokens, length, length - tokens)
    mask[2] = -np.inf  # a padding token: sees nothing (its output is unspecified, §8.7)
    mask[4, :200] = -np.inf  # sees only cells 200 .. 258: blocks 0 hidden, 1 partly
    out, expected = _run(h, tokens=tokens, heads=4, kv_heads=2, length=length, mask=mask)
    assert np.all(out[2] == 0.0)
    keep = [0, 1, 3, 4, 5]
    _close(out[keep], expected[keep])


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_long_history_split_across_threads(h, isa, threads) -> None:
    # One decode token over 4096 cells (enough work for several threads): with more than one
    # thread the history is split into slices whose softmax states are merged; a -inf stretch
    # makes one slice see nothing at all.
    length = 4096
    mask = np.zeros((1, length), np.float32)
    mask[0, 1000:2600] = -np.inf
    out, expected = _run(
        h, tokens=1, heads=32, kv_heads=1, length=length, mask=mask, threads=threads
    )
    _close(out, expected)


def test_no_mask_and_large_scores(h, isa) -> None:
    # Scores far beyond exp's range: the running max keeps every exponent <= 0.
    out, expected = _run(h, tokens=2, heads=2, kv_heads=1, length=300, scale=40.0)
    _close(out, expected)


def test_quantised_cache_falls_back_to_numpy(h, monkeypatch) -> None:
    # Q8_0 is not read natively: the numpy path runs and agrees with the reference.
    if not NATIVE_BUILT:
        pytest.skip("mlplug_cpu._native is not built")
    out, expected = _run(
        h, tokens=2, heads=4, kv_heads=2, length=40, dk=32, dv=32, kv_dtype=DType.Q8_0
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
