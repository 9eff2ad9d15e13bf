"""``mlplug.nn.RoPE``: the fused ``rope`` op and the composite path rotate alike."""

from __future__ import annotations

import numpy as np
import pytest

import mlplug
from mlplug.nn.rope import RoPE, RopeConfig

CONFIGS = {
    "normal": RopeConfig(8),
    "neox": RopeConfig(8, neox=True),
    "normal-partial-linear": RopeConfig(6, freq_base=500.0, freq_scale=0.25),
    "neox-partial-yarn": RopeConfig(
        6, neox=True, freq_scale=0.25, ext_factor=1.0, attn_factor=1.0, n_ctx_orig=64
    ),
}


def _rotate(
    rope: RoPE, x: np.ndarray, positions: list[int], permuted: bool
) -> tuple[np.ndarray, int]:
    backend = mlplug.new_backend(None, mlplug.BackendParams(), backend="cpu")
    try:
        backend.load()
        ctx = backend.new_context()
        d, heads, tokens = x.shape[2], x.shape[1], x.shape[0]
        if permuted:
            # [D, T, H] in memory, rotated through its strided [D, H, T] permutation.
            t = ctx.input().from_float_slice(x.transpose(1, 0, 2).ravel(), d, tokens, heads)
            t = t.permute(ctx, 0, 2, 1, 3)
        else:
            t = ctx.input().from_float_slice(x.ravel(), d, heads, tokens)
        y = rope(ctx, t, rope.tables(ctx, positions))
        ctx.forward(y).compute(y)
        out = np.array(y.floats()).reshape(tokens, heads, d)
        nodes = len(ctx._family.graph)
        ctx.close()
        return out, nodes
    finally:
        backend.close()


@pytest.mark.parametrize("permuted", [False, True])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fused_and_composite_paths_agree(name: str, permuted: bool) -> None:
    config = CONFIGS[name]
    x = np.random.default_rng(7).normal(size=(5, 3, 10)).astype(np.float32)  # (T, H, D)
    factors = (1.0, 2.0, 4.0) if name.startswith("normal-partial") else None
    positions = [0, 3, 4, 17, 100]
    fused, n_fused = _rotate(RoPE(config, factors), x, positions, permuted)
    composite, n_composite = _rotate(RoPE(config, factors, fused=False), x, positions, permuted)
    np.testing.assert_allclose(fused, composite, rtol=1e-6, atol=1e-6)
    assert not np.array_equal(fused, x)
    np.testing.assert_array_equal(fused[..., config.n_dims :], x[..., config.n_dims :])
    assert n_fused < n_composite
