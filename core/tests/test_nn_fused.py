"""``mlplug.nn`` layers: the optional fused ops (``swiglu``, ``geglu``, ``rms_norm_add``) and the
composite paths (``fused=False``) compute alike, and the fused path records fewer nodes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import mlplug
from mlplug.nn import Linear, RMSNorm
from mlplug.nn.transformer import FeedForward

RNG = np.random.default_rng(21)
N_EMBD, N_FF, TOKENS = 16, 24, 3


def _run(build: Callable[[mlplug.Context], mlplug.Tensor]) -> tuple[np.ndarray, int]:
    """Build a graph on the cpu backend; return the result's values and the graph's node count."""
    backend = mlplug.new_backend(None, mlplug.BackendParams(), backend="cpu")
    try:
        backend.load()
        ctx = backend.new_context()
        y = build(ctx)
        ctx.forward(y).compute(y)
        out = np.array(y.floats())
        nodes = len(ctx._family.graph)
        ctx.close()
        return out, nodes
    finally:
        backend.close()


def _tensor(ctx: mlplug.Context, values: np.ndarray, *ne: int) -> mlplug.Tensor:
    return ctx.input().from_float_slice(values.astype(np.float32).ravel(), *ne)


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_feed_forward_fused_and_composite_agree(activation: str) -> None:
    gate, up = RNG.normal(size=(N_FF, N_EMBD)), RNG.normal(size=(N_FF, N_EMBD))
    down, x = RNG.normal(size=(N_EMBD, N_FF)), RNG.normal(size=(TOKENS, N_EMBD))

    def build(fused: bool) -> Callable[[mlplug.Context], mlplug.Tensor]:
        def graph(ctx: mlplug.Context) -> mlplug.Tensor:
            def linear(w: np.ndarray) -> Linear:
                return Linear(_tensor(ctx, w, w.shape[1], w.shape[0]))

            ffn = FeedForward(linear(gate), linear(up), linear(down), activation, fused=fused)
            return ffn(ctx, _tensor(ctx, x, N_EMBD, TOKENS))

        return graph

    fused, n_fused = _run(build(True))
    composite, n_composite = _run(build(False))
    np.testing.assert_allclose(fused, composite, rtol=1e-5, atol=1e-5)
    assert n_fused == n_composite - 1
    g, u = x @ gate.T, x @ up.T
    act = (
        g / (1 + np.exp(-g))
        if activation == "silu"
        else 0.5 * g * (1 + np.tanh(0.7978845608 * g * (1 + 0.044715 * g * g)))
    )
    np.testing.assert_allclose(fused.reshape(TOKENS, N_EMBD), (act * u) @ down.T, rtol=1e-4)


@pytest.mark.parametrize("with_weight", [True, False])
def test_rms_norm_with_residual_fused_and_composite_agree(with_weight: bool) -> None:
    x, r, w = (
        RNG.normal(size=(TOKENS, N_EMBD)),
        RNG.normal(size=(TOKENS, N_EMBD)),
        RNG.normal(size=N_EMBD),
    )

    def build(fused: bool) -> Callable[[mlplug.Context], mlplug.Tensor]:
        def graph(ctx: mlplug.Context) -> mlplug.Tensor:
            weight = _tensor(ctx, w, N_EMBD) if with_weight else None
            norm = RMSNorm(weight, 1e-5, fused=fused)
            return norm(
                ctx, _tensor(ctx, x, N_EMBD, TOKENS), residual=_tensor(ctx, r, N_EMBD, TOKENS)
            )

        return graph

    fused, n_fused = _run(build(True))
    composite, n_composite = _run(build(False))
    np.testing.assert_allclose(fused, composite, rtol=1e-6, atol=1e-6)
    assert n_fused == n_composite - 1
    expected = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-5) * (w if with_weight else 1)
    np.testing.assert_allclose(fused.reshape(TOKENS, N_EMBD), expected + r, rtol=1e-5, atol=1e-6)
