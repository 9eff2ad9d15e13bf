"""The Metal device: memory and its cap, ErrNoMem through the engine, cache configs, ops."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import mlplug
from mlplug.device import (
    OPS,
    BackendParams,
    CacheConfig,
    DeviceOutOfMemory,
    DType,
    Node,
    SupportsCacheConfig,
    SupportsWeightUpload,
    TensorRef,
)

mx = pytest.importorskip(
    "mlx.core", reason="MLX is not installed (pip install 'mlx[cpu]')", exc_type=ImportError
)

device = pytest.importorskip("mlplug_metal.device", reason="mlplug-metal is not installed")
MlxDevice, load = device.MlxDevice, device.load
KERNELS = pytest.importorskip("mlplug_metal.kernels").KERNELS


@pytest.fixture
def on_mlx_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MLPLUG_METAL_DEVICE", "cpu")
    monkeypatch.delenv("MLPLUG_METAL_MEMORY_LIMIT", raising=False)
    monkeypatch.delenv("MLPLUG_CPU_MEMORY_LIMIT", raising=False)
    yield


def test_load_gives_the_host_cpu_then_metal(on_mlx_cpu: None) -> None:
    cpu, metal = load(BackendParams())
    assert (cpu.kind, cpu.name) == ("cpu", "CPU")
    assert (metal.kind, metal.name) == ("gpu", "Metal")
    assert isinstance(metal, SupportsWeightUpload) and isinstance(metal, SupportsCacheConfig)
    assert metal.total_memory() > 0 and 0 <= metal.free_memory() <= metal.total_memory()
    metal.close()


def test_asking_for_the_gpu_without_metal_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    if mx.metal.is_available():
        pytest.skip("this machine has a Metal GPU")
    monkeypatch.setenv("MLPLUG_METAL_DEVICE", "gpu")
    with pytest.raises(RuntimeError, match="no Metal GPU"):
        load(BackendParams())


def test_cap_limits_allocations_and_sets_mlx_limit() -> None:
    before = mx.get_memory_limit()
    dev = MlxDevice(mx.cpu, memory_limit=1000)
    try:
        assert mx.get_memory_limit() == 1000
        assert (dev.total_memory(), dev.free_memory()) == (1000, 1000)
        buf = dev.alloc(600)
        with pytest.raises(DeviceOutOfMemory) as info:
            dev.alloc(600)
        assert (info.value.requested, info.value.free) == (600, 400)
        assert dev.set_memory_limit(2000) == 1000
        kept = dev.alloc(600)
        buf.free()
        assert dev.free_memory() == 1400 and kept.nbytes == 600
    finally:
        dev.close()
    assert dev.memory_limit is None and mx.get_memory_limit() == before


def test_weights_over_the_cap_raise_errnomem(
    tmp_path: Any, on_mlx_cpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    synth = pytest.importorskip("mlplug_conformance.synth")
    path = synth.write_llama_gguf(
        tmp_path / "m.gguf",
        n_layers=4,
        n_embd=64,
        n_head=4,
        n_head_kv=2,
        n_ff=128,
        n_vocab=32,
        weight_type=DType.Q8_0,
    )
    monkeypatch.setenv("MLPLUG_METAL_MEMORY_LIMIT", "60KiB")
    with pytest.raises(mlplug.ErrNoMem) as info:
        mlplug.new_backend(str(path), BackendParams(num_gpu_layers=4), backend="metal")
    metal = info.value.memory.gpus[0]
    assert metal.name == "Metal"
    assert {m.status for m in metal.weights if m.size} == {mlplug.AllocationStatus.FAILED}
    # Fewer layers fit; a cache buffer past the cap fails cleanly and the backend still works.
    with mlplug.new_backend(str(path), BackendParams(num_gpu_layers=1), backend="metal") as be:
        be.load()
        ctx = be.new_context()
        with pytest.raises(mlplug.ErrNoMem):
            ctx.layer(3).zeros(DType.F32, 64 * 1024)
        small = ctx.layer(3).from_float_slice([1.0, 2.0], 2)
        out = small.scale(ctx, 2.0)
        ctx.forward(out).compute(out)
        assert out.floats().tolist() == [2.0, 4.0]


@pytest.mark.parametrize("flash", [False, True])
def test_cache_config_and_fused_attention_through_the_engine(on_mlx_cpu: None, flash: bool) -> None:
    params = BackendParams(num_gpu_layers=1, flash_attention=flash)
    with mlplug.new_backend(None, params, backend="metal") as be:
        config = be.cache_config()
        assert config == CacheConfig(32, not flash, DType.F16 if flash else DType.OTHER, 0)
        rng = np.random.default_rng(0)
        dk, heads, kv_heads, tokens, length = 64, 4, 2, 3, 32
        q_np = rng.standard_normal((tokens, heads, dk)).astype(np.float32)
        k_np = rng.standard_normal((length, kv_heads, dk)).astype(np.float32)
        v_np = rng.standard_normal((length, kv_heads, dk)).astype(np.float32)
        ctx = be.new_context()
        layer = ctx.layer(0)
        q = layer.from_float_slice(q_np, dk, heads, tokens)
        k = layer.from_float_slice(k_np, dk, kv_heads, length)
        v = layer.from_float_slice(v_np, dk, kv_heads, length)
        mask_np = np.where(
            np.arange(length)[None, :] > np.arange(tokens)[:, None] + 20, -np.inf, 0
        ).astype(np.float32)
        mask = layer.from_float_slice(mask_np, length, tokens)
        if config.permuted_v:
            v = v.permute(ctx, 1, 2, 0, 3).contiguous(ctx)  # [L, Dv, Hkv]
        out = q.scaled_dot_product_attention(ctx, k, v, mask, 0.125)
        ctx.forward(out).compute(out)
        got = out.numpy()  # (T, H, Dv)
        group = heads // kv_heads
        for h in range(heads):
            scores = q_np[:, h] @ k_np[:, h // group].T * 0.125 + mask_np
            p = np.exp(scores - scores.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            np.testing.assert_allclose(got[:, h], p @ v_np[:, h // group], rtol=1e-4, atol=1e-5)


def test_every_op_has_a_kernel_and_is_supported(metal: Any) -> None:
    assert set(KERNELS) == set(OPS)
    ref = TensorRef(None, 0, (1, 1, 1, 1), (4, 4, 4, 4), DType.F32)
    for name in OPS:
        assert metal.unsupported(Node(name, ref, (ref,))) is None
    reason = metal.unsupported(Node("frobnicate", ref, ()))
    assert reason is not None and "frobnicate" in reason
    with pytest.raises(NotImplementedError, match="frobnicate"):
        metal.execute([Node("frobnicate", ref, ())])


def test_graph_across_devices_and_repeated_computes(on_mlx_cpu: None) -> None:
    # Inputs on the CPU, work on Metal (layer 0), a copy into a Metal cache buffer.
    with mlplug.new_backend(None, BackendParams(num_gpu_layers=1), backend="metal") as be:
        ctx = be.new_context()
        cache = ctx.layer(0).zeros(DType.F16, 4, 3)
        x = ctx.input().from_float_slice(np.arange(4, dtype=np.float32), 4)
        w = ctx.layer(0).from_float_slice(np.full(4, 2.0, np.float32), 4)
        y = w.mul(ctx, x)
        row = cache.view(ctx, 8, 4)  # second row
        ctx.forward(y.copy(ctx, row))
        total = cache.sum_rows(ctx)
        ctx.forward(total).compute(total)
        assert total.floats().tolist() == [0.0, 12.0, 0.0]
        ctx.compute(total)
        assert cache.floats().reshape(3, 4)[1].tolist() == [0.0, 2.0, 4.0, 6.0]
