"""The scheduler's three steps, each alone: placement, transfers, liveness (DESIGN §3).

Graphs are built through the public API on toy devices (a CPU and one GPU holding
``ctx.layer(0)``); the steps are then called directly on the family's graph.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import mlplug
from mlplug import BackendParams, DType
from mlplug.engine import EngineFactory, GraphBackend
from mlplug.engine.schedule import (
    GraphIndex,
    make_plan,
    place_nodes,
    plan_liveness,
    route_transfers,
)
from mlplug.tensor import Tensor
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
