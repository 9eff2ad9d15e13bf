"""The scheduler's three steps, each alone: placement, transfers, liveness (DESIGN §3).

Graphs are built through the public API on toy devices (a CPU and one GPU holding
``ctx.layer(0)``); the steps are then called directly on the family's graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import mlplug
from mlplug import BackendParams, DType
from mlplug.device import EnginePlugin, Node
from mlplug.engine import EngineFactory, GraphBackend
from mlplug.engine.schedule import (
    GraphIndex,
    make_plan,
    place_nodes,
    plan_liveness,
    route_transfers,
)
from mlplug.tensor import Tensor
from mlplug_conformance import synth
from toy_device import ToyDevice, toy_plugin

CPU, GPU = 0, 1


@pytest.fixture
def gpu_backend() -> Iterator[tuple[GraphBackend, list[ToyDevice]]]:
    plugin, devices = toy_plugin(1, gpu_unsupported=("neg",))
    backend = EngineFactory(plugin)(None, BackendParams(num_gpu_layers=1))
    yield backend, devices
    backend.close()


def index(ctx: mlplug.Context, *outputs: Tensor) -> GraphIndex:
    backend = ctx._family.executor
    assert isinstance(backend, GraphBackend)
    ctx.forward(*outputs)
    return GraphIndex(ctx._family.graph, outputs, backend.is_weight, backend._storage_device)


def place(ctx: mlplug.Context, ix: GraphIndex) -> object:
    backend = ctx._family.executor
    assert isinstance(backend, GraphBackend)
    return place_nodes(ix, backend.devices, GPU, backend.is_weight, backend._storage_device)


def test_placement_follows_operands_and_falls_back(
    gpu_backend: tuple[GraphBackend, list[ToyDevice]],
) -> None:
    backend, _ = gpu_backend
    ctx = backend.new_context()
    g = ctx.layer(0).from_float_slice(range(8), 8)  # on the GPU
    c = ctx.input().from_float_slice(range(8), 8)  # on the CPU
    on_cpu = c.scale(ctx, 2.0)  # operands on the CPU only
    mixed = on_cpu.add(ctx, g)  # one operand on the GPU: runs there
    view = mixed.reshape(ctx, 2, 4)  # executes nothing, lives with its storage
    refused = view.neg(ctx)  # the GPU declines neg: the CPU runs it
    ix = index(ctx, refused)
    p = place(ctx, ix)
    graph = ix.graph
    assert [graph[i]._op for i in range(len(graph))] == ["scale", "add", "reshape", "neg"]
    assert p.device == [CPU, GPU, -1, CPU]  # type: ignore[attr-defined]
    assert p.location == [CPU, GPU, GPU, CPU]  # type: ignore[attr-defined]
    assert not p.reads_weights  # type: ignore[attr-defined]


def test_placement_names_the_op_no_device_runs(
    gpu_backend: tuple[GraphBackend, list[ToyDevice]],
) -> None:
    backend, _ = gpu_backend
    ctx = backend.new_context()
    s = ctx.input().from_float_slice(range(4), 4).sin(ctx)
    ix = index(ctx, s)
    with pytest.raises(mlplug.UnsupportedOpError, match=r"^sin: no device can execute it"):
        place(ctx, ix)


def test_transfers_once_per_span_until_a_copy_writes_it(
    gpu_backend: tuple[GraphBackend, list[ToyDevice]],
) -> None:
    backend, _ = gpu_backend
    ctx = backend.new_context()
    g = ctx.layer(0).from_float_slice(range(4), 4)  # on the GPU
    c = ctx.input().from_float_slice(range(4), 4)  # on the CPU
    a = g.add(ctx, c)  # GPU; c moves over
    b = a.mul(ctx, c)  # GPU; the same span of c is already there
    w = b.copy(ctx, c)  # copy runs where c lives (CPU); b moves over; c is rewritten
    d = g.add(ctx, w)  # GPU: c (through w) must move again
    ix = index(ctx, d)
    steps = route_transfers(ix, place(ctx, ix))  # type: ignore[arg-type]
    c_ref = ix.srcs[0][1]
    kinds = [
        ("move", s.device, s.source) if s.node < 0 else (ix.graph[s.node]._op, s.device)
        for s in steps
    ]
    b_ref = 1
    assert kinds == [
        ("move", GPU, c_ref),
        ("add", GPU),
        ("mul", GPU),
        ("move", CPU, b_ref),
        ("copy", CPU),
        ("move", GPU, c_ref),
        ("add", GPU),
    ]
    assert steps[1].remote == (-1, 0) and steps[2].remote == (-1, 0)  # one transfer, two readers
    assert steps[4].remote == (3, -1)
    assert steps[6].remote == (-1, 5)
    assert all(s.span == (0, 16) for s in steps if s.node < 0)


def test_liveness_ranges_and_space_reuse(
    gpu_backend: tuple[GraphBackend, list[ToyDevice]],
) -> None:
    backend, devices = gpu_backend
    ctx = backend.new_context()
    x = ctx.input().zeros(DType.F32, 256)  # 1 KiB
    a = x.scale(ctx, 1.0)
    b = a.scale(ctx, 1.0)
    c = b.scale(ctx, 1.0)  # a is dead by now: c may take its place
    d = c.add(ctx, a.reshape(ctx, 16, 16).reshape(ctx, 256))  # ...unless read later through a view
    ix = index(ctx, d)
    p = place(ctx, ix)
    steps = route_transfers(ix, p)  # type: ignore[arg-type]
    plan = plan_liveness(ix, p, steps, devices)  # type: ignore[arg-type]
    a_i, b_i, c_i, d_i = (ix.graph.index(t) for t in (a, b, c, d))
    assert (plan.slots[a_i].first, plan.slots[a_i].last) == (0, 3)  # the view extends a's life
    assert (plan.slots[b_i].first, plan.slots[b_i].last) == (1, 2)
    assert (plan.slots[d_i].first, plan.slots[d_i].last) == (3, 4)  # an output: to the end
    offsets = {plan.slots[i].offset for i in (a_i, b_i, c_i)}
    assert len(offsets) == 3  # a, b and c are live together at step 2
    assert plan.slots[d_i].offset == plan.slots[b_i].offset  # b died at step 2: d reuses it
    assert plan.arena == {CPU: 3 * 1024}


def test_transfer_slots_live_until_their_last_reader(
    gpu_backend: tuple[GraphBackend, list[ToyDevice]],
) -> None:
    backend, devices = gpu_backend
    ctx = backend.new_context()
    g = ctx.layer(0).from_float_slice(range(8), 8)
    c = ctx.input().from_float_slice(range(8), 8)
    a = g.add(ctx, c)
    b = a.add(ctx, g)
    e = b.mul(ctx, c)
    ix = index(ctx, e)
    p = place(ctx, ix)
    plan = plan_liveness(ix, p, route_transfers(ix, p), devices)  # type: ignore[arg-type]
    moved = plan.steps[0]
    assert moved.node < 0 and moved.slot is not None
    assert (moved.slot.first, moved.slot.last) == (0, 3)  # read by `a` (step 1) and `e` (step 3)
    # At most three of (moved span, a, b, e) are live at once (a dies when b has read it),
    # each 32 bytes aligned to 32.
    assert plan.arena[GPU] == 3 * 32


def test_make_plan_is_the_three_steps(
    gpu_backend: tuple[GraphBackend, list[ToyDevice]],
) -> None:
    backend, devices = gpu_backend
    ctx = backend.new_context()
    g = ctx.layer(0).from_float_slice(range(8), 8)
    y = g.add(ctx, ctx.input().from_float_slice(range(8), 8)).neg(ctx)
    ix = index(ctx, y)
    plan = make_plan(ix, devices, GPU, backend.is_weight, backend._storage_device)  # type: ignore[arg-type]
    p = place(ctx, ix)
    alone = plan_liveness(ix, p, route_transfers(ix, p), devices)  # type: ignore[arg-type]
    assert plan.steps == alone.steps and plan.slots == alone.slots and plan.arena == alone.arena


# -- plans reused for graphs of the same structure ------------------------------------------------


def _chain(ctx: mlplug.Context, values: list[float], n_ops: int = 3) -> Tensor:
    y = ctx.input().from_float_slice(values, len(values))
    for _ in range(n_ops):
        y = y.scale(ctx, 2.0)
    return y.add(ctx, ctx.input().from_float_slice([1.0] * len(values), len(values)))


def test_a_graph_of_the_same_structure_reuses_the_plan(
    toy: mlplug.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlplug.engine import graph_backend

    made: list[object] = []

    def counting(*args: object, **kw: object) -> object:
        plan = make_plan(*args, **kw)  # type: ignore[arg-type]
        made.append(plan)
        return plan

    monkeypatch.setattr(graph_backend, "make_plan", counting)
    results = []
    for step in range(4):  # new contexts, new input buffers, new values: one plan
        ctx = toy.new_context()
        y = _chain(ctx, [float(step), 1.0, 2.0])
        ctx.forward(y).compute(y)
        results.append(y.floats().tolist())
        ctx.close()
    assert len(made) == 1
    assert results == [[8.0 * s + 1, 9.0, 17.0] for s in range(4)]
    ctx = toy.new_context()
    y = _chain(ctx, [1.0, 2.0, 3.0], n_ops=4)  # another structure: planned anew
    ctx.forward(y).compute(y)
    assert len(made) == 2 and y.floats().tolist() == [17.0, 33.0, 49.0]
    ctx = toy.new_context()
    y = _chain(ctx, [1.0, 2.0, 3.0, 4.0])  # another shape: planned anew
    ctx.forward(y).compute(y)
    assert len(made) == 3 and y.floats().tolist() == [9.0, 17.0, 25.0, 33.0]


def test_recomputing_a_graph_reads_the_buffers_current_values(toy: mlplug.Backend) -> None:
    ctx = toy.new_context()
    x = ctx.input().zeros(DType.F32, 4)
    y = x.scale(ctx, 3.0)
    ctx.forward(y).compute(y)
    assert y.floats().tolist() == [0.0] * 4
    ctx._family.executor.fill(x, np.array([1, 2, 3, 4], np.float32).tobytes())
    ctx.compute(y)
    assert y.floats().tolist() == [3.0, 6.0, 9.0, 12.0]


def test_reused_plans_follow_a_grown_arena(toy: mlplug.Backend) -> None:
    small = toy.new_context()
    y = _chain(small, [1.0, 2.0])
    small.forward(y).compute(y)
    big = toy.new_context()
    z = _chain(big, [float(i) for i in range(4096)])
    big.forward(z).compute(z)  # the arena grows: records made for the old one are stale
    again = toy.new_context()
    w = _chain(again, [3.0, 4.0])
    again.forward(w).compute(w)
    assert w.floats().tolist() == [25.0, 33.0]
    assert z.floats()[-1] == 8.0 * 4095 + 1


def test_operands_on_the_same_leaf_or_on_two_leaves_are_different_structures(
    toy: mlplug.Backend,
) -> None:
    ctx = toy.new_context()
    a = ctx.input().from_float_slice([1.0, 2.0], 2)
    b = ctx.input().from_float_slice([10.0, 20.0], 2)
    same = a.add(ctx, a)
    ctx.forward(same).compute(same)
    other = toy.new_context()
    c = other.input().from_float_slice([1.0, 2.0], 2)
    d = other.input().from_float_slice([10.0, 20.0], 2)
    two = c.add(other, d)
    other.forward(two).compute(two)
    assert same.floats().tolist() == [2.0, 4.0] and two.floats().tolist() == [11.0, 22.0]
    assert b.floats().tolist() == [10.0, 20.0]


class _Picky(ToyDevice):
    """A toy CPU that declines ``neg`` of a window not at the start of its buffer."""

    def unsupported(self, node: Node) -> str | None:
        src = node.srcs[0] if node.srcs else None
        if node.op == "neg" and src is not None and src.offset:
            return "neg needs an offset of 0"
        return super().unsupported(node)


def test_two_views_of_one_storage_are_different_operands() -> None:
    plugin = EnginePlugin(name="picky", load=lambda params: [_Picky("CPU", "cpu")])
    with EngineFactory(plugin)(None, BackendParams()) as backend:
        for first in (True, False):
            ctx = backend.new_context()
            x = ctx.input().from_float_slice([1.0, 2.0, 3.0, 4.0], 4)
            lo, hi = x.view(ctx, 0, 2), x.view(ctx, 8, 2)
            y = (lo if first else hi).neg(ctx)
            ctx.forward(lo, hi, y)  # the same nodes; y reads another view
            if first:
                ctx.compute(y)
                assert y.floats().tolist() == [-1.0, -2.0]
            else:
                with pytest.raises(mlplug.UnsupportedOpError, match="offset of 0"):
                    ctx.compute(y)


class _NoF16Products(ToyDevice):
    """A toy CPU that declines ``mulmat`` of an F16 matrix (even an empty one)."""

    def unsupported(self, node: Node) -> str | None:
        src = node.srcs[0] if node.srcs else None
        if node.op == "mulmat" and src is not None and src.dtype is DType.F16:
            return "no F16 products"
        return super().unsupported(node)


def test_the_layout_of_an_empty_operand_is_part_of_the_structure() -> None:
    plugin = EnginePlugin(name="nof16", load=lambda params: [_NoF16Products("CPU", "cpu")])
    with EngineFactory(plugin)(None, BackendParams()) as backend:
        for dtype in (DType.F32, DType.F16):
            ctx = backend.new_context()
            a = ctx.input().zeros(dtype, 0)  # no element: nothing is read, but the device sees it
            y = a.mulmat(ctx, ctx.input().zeros(DType.F32, 0))
            ctx.forward(y)
            if dtype is DType.F32:
                ctx.compute(y)
                assert y.floats().tolist() == [0.0]
            else:
                with pytest.raises(mlplug.UnsupportedOpError, match="no F16 products"):
                    ctx.compute(y)


@pytest.mark.parametrize("main_gpu", [0, 1])
def test_a_node_gathering_from_two_gpus_follows_its_operand_computed_last(
    tmp_path: Path, main_gpu: int
) -> None:
    # SEMANTICS §6.4 rule 5: the GPU of the operand computed last; main_gpu when every GPU
    # operand is a stored tensor. Two blocks over two GPUs: layer 0 on GPU 0, layer 1 on GPU 1.
    path = synth.write_llama_gguf(
        tmp_path / "two-blocks.gguf",
        n_layers=2,
        n_embd=32,
        n_head=2,
        n_head_kv=1,
        n_ff=32,
        n_vocab=64,
    )
    plugin, _ = toy_plugin(2)
    backend = EngineFactory(plugin)(
        str(path), BackendParams(num_gpu_layers=2, main_gpu=main_gpu, tensor_split=(1, 1))
    )
    try:
        ctx = backend.new_context()
        a = ctx.layer(0).from_float_slice(range(8), 8)  # GPU 0 (device 1)
        b = ctx.layer(1).from_float_slice(range(8, 16), 8)  # GPU 1 (device 2)
        x = a.scale(ctx, 2.0)  # computed on device 1
        y = b.scale(ctx, 3.0)  # computed on device 2
        stream = x.add(ctx, y)  # y is the operand computed last: device 2
        back = y.add(ctx, x).add(ctx, stream.scale(ctx, 0.5))  # stream (device 2) is latest
        stored = a.add(ctx, b)  # no computed operand: main_gpu
        ctx.forward(x)  # graph order (post-order of forward calls): x, then y, then the rest
        ctx.forward(y)
        ix = index(ctx, back, stored)
        assert isinstance(backend, GraphBackend)
        p = place_nodes(
            ix, backend.devices, 1 + main_gpu, backend.is_weight, backend._storage_device
        )
        ops = [(t._op, d) for t, d in zip(ix.graph, p.device, strict=True)]  # type: ignore[attr-defined]
        where = dict(zip(map(id, ix.graph), p.device, strict=True))  # type: ignore[attr-defined]
        assert where[id(x)] == 1 and where[id(y)] == 2, ops
        assert where[id(stream)] == 2
        assert where[id(back)] == 2
        assert where[id(stored)] == 1 + main_gpu
        ctx.forward(back, stored).compute(back, stored)
        xs, ys = 2.0 * np.arange(8), 3.0 * np.arange(8, 16)
        assert np.allclose(back.numpy(), ys + xs + 0.5 * (xs + ys))
        assert np.allclose(stored.numpy(), np.arange(8) + np.arange(8, 16))
    finally:
        backend.close()
