"""The engine on toy devices: layout, lifetime, scheduling, planning, books, OOM, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import mlplug
from mlplug import (
    AllocationStatus,
    BackendParams,
    ConcurrentUseError,
    Context,
    ContextError,
    DType,
    DTypeError,
    ErrNoMem,
    NotComputedError,
    ShapeError,
)
from mlplug.engine import EngineFactory
from toy_device import ToyDevice, toy_plugin

A, F, U = AllocationStatus.ALLOCATED, AllocationStatus.FAILED, AllocationStatus.UNALLOCATED


def values(ctx: Context, *shape: int) -> mlplug.Tensor:
    n = int(np.prod(shape))
    return ctx.input().from_float_slice(np.arange(n, dtype=np.float32), *shape)


# -- layout and introspection (§1) ---------------------------------------------------------------


def test_fresh_strides_examples(ctx: Context) -> None:
    assert [ctx.input().zeros(DType.F32, 4, 3).stride(i) for i in range(4)] == [4, 16, 48, 48]
    t = ctx.input().zeros(DType.F16, 128, 8, 1024)
    assert [t.stride(i) for i in range(4)] == [2, 256, 2048, 2097152]
    q = ctx.input().zeros(DType.Q8_0, 64, 2)
    assert [q.stride(i) for i in range(4)] == [34, 68, 136, 136]


@pytest.mark.parametrize(
    ("shape", "expected"), [((4, 1, 1), (4,)), ((1, 1), (1,)), ((1, 4), (1, 4)), ((3, 0, 2), (0,))]
)
def test_shape_drops_trailing_ones(
    ctx: Context, shape: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    t = ctx.input().zeros(DType.F32, *shape)
    assert t.shape() == expected
    with pytest.raises(IndexError):
        t.dim(4)
    with pytest.raises(IndexError):
        t.stride(-1)


def test_numpy_order_example(ctx: Context) -> None:
    arr = values(ctx, 4, 3).numpy()
    assert arr.dtype == np.float32
    assert arr.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_zero_element_tensors(ctx: Context) -> None:
    t = ctx.input().zeros(DType.F32, 3, 0, 2)
    assert [t.dim(i) for i in range(4)] == [0, 1, 1, 1]
    assert t.bytes() == b"" and t.floats().size == 0 and t.numpy().shape == (0,)


def test_from_slice_reads_numpy_in_c_order(ctx: Context) -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    t = ctx.input().from_float_slice(arr, *reversed(arr.shape))
    assert np.array_equal(t.numpy(), arr)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.input().from_float_slice([1, 2, 3], 2), ShapeError),
        (lambda c: c.input().from_float_slice([1, 2], 2, 2), ShapeError),
        (lambda c: c.input().from_float_slice([], 1), ShapeError),
        (lambda c: c.input().from_int_slice(np.array([1.0, 2.0]), 2), DTypeError),
        (lambda c: c.input().from_int_slice([1, 2**31], 2), ValueError),
        (lambda c: c.input().zeros(DType.Q4_K, 256), DTypeError),
        (lambda c: c.input().zeros(DType.Q8_0, 33), ShapeError),
        (lambda c: c.input().zeros(DType.F32), ShapeError),
        (lambda c: c.input().zeros(DType.F32, 1, 1, 1, 1, 1), ShapeError),
        (lambda c: c.input().zeros(DType.F32, -1), ShapeError),
        (lambda c: c.zeros(DType.F32, 4), ContextError),
        (lambda c: c.layer(1), IndexError),
    ],
)
def test_creation_errors(ctx: Context, call, error: type[Exception]) -> None:
    with pytest.raises(error):
        call(ctx)


def test_from_int_slice_accepts_empty_and_ints(ctx: Context) -> None:
    assert ctx.input().from_int_slice([], 0).bytes() == b""
    t = ctx.input().from_int_slice([1, -2, 3], 3)
    assert t.numpy().tolist() == [1, -2, 3] and t.numpy().dtype == np.int32


# -- execution model (§2) ------------------------------------------------------------------------


def test_forward_compute_and_readability(ctx: Context) -> None:
    a = values(ctx, 6, 2)
    b = ctx.input().from_float_slice([100, 200, 300], 3)
    c = a.add(ctx, b)
    d = c.scale(ctx, 2.0)
    with pytest.raises(NotComputedError):
        c.floats()
    ctx.forward(d).compute(d)
    assert d.floats().tolist() == [
        2 * v for v in [100, 201, 302, 103, 204, 305, 106, 207, 308, 109, 210, 311]
    ]
    with pytest.raises(NotComputedError):  # intermediate, never listed
        c.floats()


def test_compute_does_not_add_nodes_and_empty_graph_is_fine(ctx: Context) -> None:
    a = values(ctx, 4)
    ctx.compute()
    ctx.compute(a)  # buffer tensors are readable anyway
    n = a.neg(ctx)
    ctx.compute(n)
    with pytest.raises(NotComputedError):
        n.floats()


def test_results_survive_later_computes_and_are_refreshed(ctx: Context) -> None:
    a = values(ctx, 4)
    dst = ctx.input().zeros(DType.F32, 4)
    s = a.scale(ctx, 3.0)
    ctx.forward(s).compute(s)
    first = s.floats().copy()
    cp = s.copy(ctx, dst)
    ctx.forward(cp).compute()
    assert np.array_equal(s.floats(), first)
    assert np.array_equal(dst.floats(), first)


def test_copy_writes_only_when_in_graph_and_views_show_buffer(ctx: Context) -> None:
    a = values(ctx, 4)
    dst = ctx.input().zeros(DType.F32, 8)
    half = dst.view(ctx, 16, 4)
    cp = a.copy(ctx, half)
    assert dst.floats().tolist() == [0] * 8
    ctx.forward(cp).compute(cp)
    assert dst.floats().tolist() == [0, 0, 0, 0, 0, 1, 2, 3]
    assert cp.floats().tolist() == [0, 1, 2, 3]
    ctx2 = ctx  # copies re-execute on every compute: idempotent
    ctx2.compute()
    assert dst.floats().tolist() == [0, 0, 0, 0, 0, 1, 2, 3]


def test_later_nodes_observe_copy(ctx: Context) -> None:
    buf = ctx.input().zeros(DType.F32, 4)
    a = values(ctx, 4)
    cp = a.copy(ctx, buf)
    total = buf.sum_rows(ctx)
    ctx.forward(cp, total).compute(total)
    assert total.floats().tolist() == [6.0]


def test_strided_views_read_in_logical_order(ctx: Context) -> None:
    x = values(ctx, 4, 3)
    assert_view = {
        (16, 4): [4, 5, 6, 7],
        (4, 2, 16, 3): [1, 2, 5, 6, 9, 10],
        (0, 2, 8, 2, 16, 3): list(range(12)),
    }
    outs = {args: x.view(ctx, *args) for args in assert_view}
    ctx.forward(*outs.values()).compute(*outs.values())
    for args, expected in assert_view.items():
        assert outs[args].floats().tolist() == expected
    t = values(ctx, 3, 2).permute(ctx, 1, 0, 2, 3)
    ctx.forward(t).compute(t)
    assert t.floats().tolist() == [0, 3, 1, 4, 2, 5]
    assert not t.is_contiguous()


def test_capacity_and_context_bounds(toy: mlplug.Backend) -> None:
    with pytest.raises(ValueError):
        toy.new_context_size(0)
    with pytest.raises(ValueError):
        toy.new_context_size(toy.new_context().max_graph_nodes() + 1)
    ctx = toy.new_context_size(2)
    a = values(ctx, 4)
    chain = a.neg(ctx).neg(ctx).neg(ctx)
    with pytest.raises(ContextError, match="capacity"):
        ctx.forward(chain)
    assert ctx.max_graph_nodes() == 2
    ctx.close()


def test_close_family_and_backend(toy: mlplug.Backend) -> None:
    ctx = toy.new_context()
    inp = ctx.input()
    a = values(inp, 4)
    n = a.neg(ctx)
    ctx.forward(n).compute(n)
    inp.close()  # closing any member closes the family
    for call in (
        n.floats,
        a.floats,
        lambda: ctx.forward(n),
        lambda: ctx.compute(),
        lambda: ctx.input(),
    ):
        with pytest.raises(ContextError):
            call()
    ctx.close()  # idempotent
    assert ctx.max_graph_nodes() > 0
    other = toy.new_context()
    with pytest.raises(ContextError):
        a.neg(other)
    toy.close()
    toy.close()
    toy.backend_memory()
    with pytest.raises(ContextError):
        toy.new_context()


def test_operands_from_another_backend_raise(toy: mlplug.Backend) -> None:
    plugin, _ = toy_plugin()
    other = EngineFactory(plugin)(None, BackendParams())
    a = values(toy.new_context(), 4)
    b = values(other.new_context(), 4)
    with pytest.raises(ContextError):
        a.add(toy.new_context(), b)
    other.close()


# -- placement across devices ------------------------------------------------------------------


def test_multi_device_graph_equals_single_device() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 8)).astype(np.float32)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    results = []
    for gpus, layers in ((0, 0), (2, 1)):
        plugin, devices = toy_plugin(gpus)
        backend = EngineFactory(plugin)(
            None, BackendParams(num_gpu_layers=layers, main_gpu=gpus - 1 if gpus else 0)
        )
        ctx = backend.new_context()
        wt = ctx.layer(0).from_float_slice(w, 8, 5)
        xt = ctx.input().from_float_slice(x, 8, 3)
        y = wt.mulmat(ctx, xt).add(ctx, xt.sum_rows(ctx).reshape(ctx, 1, 3)).neg(ctx)
        ctx.forward(y).compute(y)
        results.append(y.numpy())
        if gpus:
            assert devices[2].executed == ["mulmat", "add", "neg"]  # main_gpu = 1 holds layer 0
            assert devices[0].executed == ["sum_rows"]  # inputs only on the CPU
        backend.close()
    assert np.allclose(results[0], results[1])
    assert np.allclose(results[0], -(x @ w.T + x.sum(-1, keepdims=True)))


def test_unsupported_node_falls_back_to_cpu() -> None:
    plugin, devices = toy_plugin(1, gpu_unsupported=("neg",))
    backend = EngineFactory(plugin)(None, BackendParams(num_gpu_layers=1))
    ctx = backend.new_context()
    a = ctx.layer(0).from_float_slice([1, 2, 3], 3)
    y = a.neg(ctx).add(ctx, a)  # neg falls back to the CPU; add has an input on the GPU
    ctx.forward(y).compute(y)
    assert y.floats().tolist() == [0, 0, 0]
    assert devices[0].executed == ["neg"] and devices[1].executed == ["add"]
    backend.close()


def test_without_cpu_fallback_a_declined_node_raises_naming_the_device() -> None:
    plugin, devices = toy_plugin(1, gpu_unsupported=("neg",))
    backend = EngineFactory(plugin)(None, BackendParams(num_gpu_layers=1, cpu_fallback=False))
    ctx = backend.new_context()
    a = ctx.layer(0).from_float_slice([1, 2, 3], 3)
    y = a.neg(ctx)
    ctx.forward(y)
    with pytest.raises(mlplug.UnsupportedOpError, match=r"^neg: device TOY0 declines it \(TOY0"):
        ctx.compute(y)
    assert devices[0].executed == []
    # Graphs of ops the GPU runs are unaffected.
    ctx2 = backend.new_context()
    b = ctx2.layer(0).from_float_slice([1, 2, 3], 3)
    z = b.add(ctx2, b)
    ctx2.forward(z).compute(z)
    assert z.floats().tolist() == [2, 4, 6]
    backend.close()


def test_no_device_supports_raises(toy: mlplug.Backend) -> None:
    ctx = toy.new_context()
    s = values(ctx, 4).sin(ctx)
    ctx.forward(s)
    with pytest.raises(mlplug.UnsupportedOpError, match=r"^sin: "):
        ctx.compute(s)


# -- memory planning and books -----------------------------------------------------------------


def test_planner_reuses_buffers_and_reserve_bounds_peak(toy: mlplug.Backend) -> None:
    ctx = toy.new_context()
    x = values(ctx, 1024)
    y = x
    for _ in range(20):
        y = y.scale(ctx, 1.0001)
    ctx.forward(y)
    ctx.reserve()
    reserved = toy.backend_memory().cpu.graph
    assert reserved.status is A and 0 < reserved.size <= 3 * 4096
    ctx.compute(y)
    assert toy.backend_memory().cpu.graph == reserved  # compute needed no more
    assert np.allclose(y.floats(), np.arange(1024) * 1.0001**20, rtol=1e-5)


def test_graph_memory_only_grows(toy: mlplug.Backend) -> None:
    big = toy.new_context()
    y = values(big, 4096).neg(big).neg(big)
    big.forward(y).reserve()
    size = toy.backend_memory().cpu.graph.size
    small = toy.new_context()
    z = values(small, 4).neg(small)
    small.forward(z).reserve()
    assert toy.backend_memory().cpu.graph.size == size


def test_layer_buffers_are_counted_as_cache() -> None:
    plugin, _ = toy_plugin(1)
    backend = EngineFactory(plugin)(None, BackendParams(num_gpu_layers=1))
    ctx = backend.new_context()
    ctx.layer(0).zeros(DType.F32, 10)  # 40 bytes -> 64 with alignment 32
    ctx.input().zeros(DType.F32, 1000)  # inputs are not counted
    mem = backend.backend_memory()
    assert mem.gpus[0].cache == (mlplug.Memory(64, A),)
    assert mem.cpu.cache == (mlplug.Memory(0, U),)
    assert mem.input_weights == mlplug.Memory(0, U)
    ctx.close()
    assert backend.backend_memory().gpus[0].cache == (mlplug.Memory(0, U),)
    backend.close()


def test_out_of_memory_on_cache_and_graph() -> None:
    plugin, devices = toy_plugin(1, gpu_cap=1024)
    backend = EngineFactory(plugin)(None, BackendParams(num_gpu_layers=1))
    ctx = backend.new_context()
    with pytest.raises(ErrNoMem) as info:
        ctx.layer(0).zeros(DType.F32, 1000)
    err = info.value
    assert isinstance(err, MemoryError)
    assert err.memory.gpus[0].cache == (mlplug.Memory(4000, F),)
    assert str(err) == f"insufficient memory - required allocations: {err.memory}"
    assert devices[1].used == 0  # the failed allocation holds no memory
    # Smaller work still computes on the same device.
    a = ctx.layer(0).from_float_slice([1.0] * 100, 100)
    doubled = a.scale(ctx, 2.0)
    ctx.forward(doubled).compute(doubled)
    assert doubled.floats().tolist() == [2.0] * 100
    backend.close()
    assert devices[1].used == 0


def test_reserve_failure_marks_graph_failed() -> None:
    plugin, _ = toy_plugin(1, gpu_cap=2048)
    backend = EngineFactory(plugin)(None, BackendParams(num_gpu_layers=1))
    ctx = backend.new_context()
    a = ctx.layer(0).from_float_slice([1.0] * 256, 256)  # 1024 bytes, half the cap
    y = a.scale(ctx, 2.0).scale(ctx, 3.0)  # needs 2 x 1024 bytes of arena
    z = ctx.input().from_float_slice([1.0] * 8, 8).neg(ctx)
    ctx.forward(y, z)
    with pytest.raises(ErrNoMem) as info:
        ctx.reserve()
    mem = info.value.memory
    assert mem.gpus[0].graph.status is F and mem.gpus[0].graph.size == 2048
    assert mem.cpu.graph.status is U and mem.cpu.graph.size > 0
    backend.close()
    assert backend.backend_memory() is not None


# -- threads (§2.6) ------------------------------------------------------------------------------


def test_concurrent_compute_raises() -> None:
    gate, entered = threading.Event(), threading.Event()

    class Slow(ToyDevice):
        def execute(self, nodes):  # type: ignore[no-untyped-def]
            entered.set()
            gate.wait(5)
            super().execute(nodes)

    plugin = mlplug.device.EnginePlugin("slow", lambda p: [Slow("CPU", "cpu")])
    backend = EngineFactory(plugin)(None, BackendParams())
    ctx = backend.new_context()
    y = values(ctx, 4).neg(ctx)
    ctx.forward(y)
    worker = threading.Thread(target=ctx.compute, args=(y,))
    worker.start()
    assert entered.wait(5)
    with pytest.raises(ConcurrentUseError):
        ctx.compute(y)
    with pytest.raises(ConcurrentUseError):
        backend.close()
    gate.set()
    worker.join()
    assert y.floats().tolist() == [-0.0, -1.0, -2.0, -3.0]
    backend.close()


def test_backend_without_model(toy: mlplug.Backend) -> None:
    calls: list[float] = []
    toy.load(progress=calls.append)
    assert calls == [1.0]
    assert toy.get("token_embd.weight") is None
    assert toy.config().architecture() == "unknown"
    assert toy.cache_config() == mlplug.CacheConfig(32, True, DType.OTHER, 0)


def test_out_of_memory_while_executing_becomes_errnomem() -> None:
    class Lazy(ToyDevice):
        def execute(self, nodes):  # type: ignore[no-untyped-def]
            raise mlplug.device.DeviceOutOfMemory(self.name, 1 << 30, 0)

    plugin = mlplug.device.EnginePlugin(
        "lazy", lambda p: [ToyDevice("CPU", "cpu"), Lazy("LAZY0", "gpu")]
    )
    backend = EngineFactory(plugin)(None, BackendParams(num_gpu_layers=1))
    ctx = backend.new_context()
    y = ctx.layer(0).from_float_slice([1.0], 1).neg(ctx)
    ctx.forward(y)
    with pytest.raises(ErrNoMem) as info:
        ctx.compute(y)
    assert info.value.memory.gpus[0].graph.status is F
    assert info.value.memory.gpus[0].graph.size == 1 << 30
    backend.close()


def test_repeated_computes_retain_each_result_once(ctx: Context) -> None:
    y = values(ctx, 4).neg(ctx)
    ctx.forward(y)
    for _ in range(5):
        ctx.compute(y)
    assert list(ctx._family.results.values()) == [y]
    assert y.floats().tolist() == [-0.0, -1.0, -2.0, -3.0]
