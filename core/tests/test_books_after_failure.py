"""After a failure and a release, the books show what is really held (SEMANTICS §7.2, §7.3)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import mlplug
from mlplug import AllocationStatus, DType, ErrNoMem, ShapeError
from mlplug.config import Config
from mlplug.engine import EngineFactory
from mlplug.gguf import GGUFFile
from mlplug.kvcache import Batch, Causal
from mlplug_conformance import synth
from toy_device import ToyBuffer, toy_plugin

A, F, U = AllocationStatus.ALLOCATED, AllocationStatus.FAILED, AllocationStatus.UNALLOCATED


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Run with the cycle collector off: what is freed must be freed at once."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def cyclic_garbage() -> list[object]:
    """Return the objects only the cycle collector would have freed."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found = list(gc.garbage)
    gc.garbage.clear()
    gc.set_debug(0)
    return found


def fill_cache(backend: mlplug.Backend, cache: Causal, n: int) -> None:
    with backend.new_context() as ctx:
        cache.start_forward(ctx, Batch(tuple(range(n)), (0,) * n))
        cache.set_layer(0)
        kv = ctx.input().from_float_slice(np.ones(64 * 8 * n, np.float32), 64, 8, n)
        cache.put(ctx, kv, kv)
        ctx.compute()


def test_kv_cache_oom_then_close_leaves_nothing_in_the_books() -> None:
    plugin, devices = toy_plugin(1, gpu_cap=1 << 20)
    backend = EngineFactory(plugin)(None, mlplug.BackendParams(num_gpu_layers=1))
    big = Causal()
    big.set_config(mlplug.CacheConfig())
    big.init(backend, DType.F32, 1, 300, 4)  # K fits (600 KiB), V does not
    with pytest.raises(ErrNoMem) as info:
        fill_cache(backend, big, 4)
    failed = info.value.memory.gpus[0].cache[0]
    assert failed == mlplug.Memory(2 * 64 * 8 * 300 * 4, F)
    big.close()
    assert backend.backend_memory().gpus[0].cache == (mlplug.Memory(0, U),)
    assert devices[1].used == 0
    # The next, smaller cache reports its own size only.
    small = Causal()
    small.set_config(mlplug.CacheConfig())
    small.init(backend, DType.F32, 1, 8, 4)
    fill_cache(backend, small, 4)
    assert backend.backend_memory().gpus[0].cache == (mlplug.Memory(2 * 64 * 8 * 8 * 4, A),)
    graph = backend.backend_memory().gpus[0].graph.size  # the put graph's arena
    assert devices[1].used == 2 * 64 * 8 * 8 * 4 + graph
    small.close()
    assert backend.backend_memory().gpus[0].cache == (mlplug.Memory(0, U),)
    assert devices[1].used == graph
    backend.close()


def test_failed_buffer_counts_until_its_family_closes() -> None:
    plugin, devices = toy_plugin(1, gpu_cap=1024)
    backend = EngineFactory(plugin)(None, mlplug.BackendParams(num_gpu_layers=1))
    ctx = backend.new_context()
    ctx.layer(0).zeros(DType.F32, 64)  # 256 bytes
    with pytest.raises(ErrNoMem):
        ctx.layer(0).zeros(DType.F32, 1000)
    assert backend.backend_memory().gpus[0].cache == (mlplug.Memory(256 + 4000, F),)
    other = backend.new_context()
    other.layer(0).zeros(DType.F32, 8)  # a later success: ALLOCATED (the last attempt, §7.2)
    assert backend.backend_memory().gpus[0].cache == (mlplug.Memory(256 + 4000 + 32, A),)
    ctx.close()
    assert backend.backend_memory().gpus[0].cache == (mlplug.Memory(32, A),)
    assert devices[1].used == 32
    other.close()
    assert backend.backend_memory().gpus[0].cache == (mlplug.Memory(0, U),)
    backend.close()


def test_oom_on_an_input_tensor_names_what_failed() -> None:
    plugin, _ = toy_plugin(0, cpu_cap=1 << 20)
    backend = EngineFactory(plugin)(None, mlplug.BackendParams())
    ctx = backend.new_context()
    with pytest.raises(ErrNoMem) as info:
        ctx.input().zeros(DType.F32, 1 << 20)  # 4 MiB; inputs have no entry in the report
    err = info.value
    assert "input tensor F32[1048576, 1, 1, 1]" in err.failed
    assert "cannot allocate 4194304 bytes" in str(err)
    backend.close()


def test_tensor_past_int64_bytes_is_a_shape_error(toy: mlplug.Backend) -> None:
    ctx = toy.new_context()
    for make in (ctx.input().zeros, ctx.layer(0).empty):
        with pytest.raises(ShapeError, match="bytes"):
            make(DType.F32, 2**62, 4)
    ctx.close()


def test_the_cpu_device_turns_a_huge_request_into_errnomem() -> None:
    backend = mlplug.new_backend(None, mlplug.BackendParams(), backend="cpu")
    with backend.new_context() as ctx, pytest.raises(ErrNoMem, match="input tensor"):
        ctx.input().empty(DType.F32, 2**61 - 8)
    backend.close()


@pytest.mark.usefixtures("no_gc")
def test_failed_new_backend_frees_everything_at_once(tmp_path: Path) -> None:
    path = synth.write_llama_gguf(
        tmp_path / "m.gguf", n_layers=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96, n_vocab=40
    )
    plugin, devices = toy_plugin(1, cpu_cap=4096, gpu_cap=1 << 30)
    with pytest.raises(ErrNoMem):  # the GPU allocates, then the CPU fails
        EngineFactory(plugin)(str(path), mlplug.BackendParams(num_gpu_layers=1))
    assert [d.used for d in devices] == [0, 0]
    left = [o for o in cyclic_garbage() if isinstance(o, (Config, GGUFFile, ToyBuffer))]
    assert left == []
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(path.read_bytes())
    synth.set_tensor_type(bad, "blk.1.attn_q.weight", 200)
    with pytest.raises(mlplug.GGUFError):
        EngineFactory(plugin)(str(bad), mlplug.BackendParams())
    assert [o for o in cyclic_garbage() if isinstance(o, (Config, GGUFFile))] == []


@pytest.mark.usefixtures("no_gc")
def test_closed_backend_drops_weights_and_metadata_at_once(tmp_path: Path) -> None:
    path = synth.write_llama_gguf(
        tmp_path / "m.gguf", n_layers=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96, n_vocab=40
    )
    plugin, devices = toy_plugin(0)
    backend = EngineFactory(plugin)(str(path), mlplug.BackendParams())
    backend.close()
    del backend
    assert devices[0].used == 0
    assert [o for o in cyclic_garbage() if isinstance(o, (Config, GGUFFile, ToyBuffer))] == []
