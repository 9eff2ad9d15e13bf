"""Scheduling a graph onto devices and planning its compute memory (DESIGN §3).

A plan is made in three named steps, each a function of the one before:

1. :func:`place_nodes` — **placement** (SEMANTICS §6.4 rule 5 and the fallback rule):

   * a view executes nothing and lives where the storage it views lives;
   * ``copy`` runs where its destination's storage lives;
   * any other node runs on the device of its first weight operand; else on the GPU its
     operands live on, on ``main_gpu`` when they live on several GPUs, on the CPU when none is
     on a GPU;
   * a device that declares a node unsupported hands it to the CPU device (unless
     ``cpu_fallback`` is off: then the refusal raises ``UnsupportedOpError``).

2. :func:`route_transfers` — **transfers**: operands that live on another device are copied
   (the byte span the operand's window touches) into a temporary on the executing device, once
   per compute until a ``copy`` node writes the storage they came from.

3. :func:`plan_liveness` — **liveness and memory**: every node result and temporary is a *slot*
   with a live range in steps; slots are packed first-fit into one arena per device, reusing
   the space of slots whose last reader has run. A slot's range includes every reader, so no
   kernel's output overlaps one of its inputs. The arena sizes are the graph memory that
   ``reserve()`` allocates.

Plans refer to tensors by position (:class:`GraphIndex`), never by identity, so a plan made for
one graph serves every later graph of the same structure (:attr:`GraphIndex.key`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlplug.device import Node, TensorRef
from mlplug.errors import UnsupportedOpError
from mlplug.ops import OPS

from .books import round_up

if TYPE_CHECKING:
    from mlplug.device import Device
    from mlplug.tensor import Tensor

__all__ = [
    "GraphIndex",
    "Placement",
    "Plan",
    "Slot",
    "Step",
    "make_plan",
    "place_nodes",
    "plan_liveness",
    "route_transfers",
]

NONE = -(1 << 62)
"""The reference of an absent or zero-size operand."""


def _root(t: Tensor) -> Tensor:
    return t._root or t


def _spec_ref(t: Tensor) -> TensorRef:
    m = t._meta
    return TensorRef(None, m.offset, m.ne, m.nb, m.dtype)


def _spec(t: Tensor) -> Node:
    srcs = tuple(None if s is None else _spec_ref(s) for s in t._srcs)
    return Node(t._op or "", _spec_ref(t), srcs, t._params)


def _span(t: Tensor) -> tuple[int, int]:
    """Byte range of the root storage that ``t``'s window touches."""
    return _spec_ref(t).span()


def _params_key(params: dict[str, Any]) -> object:
    try:
        key = tuple(params.items())
        hash(key)
    except TypeError:
        return repr(sorted(params.items()))
    return key


class GraphIndex:
    """A graph's tensors by position, and its structural key.

    A *reference* names a storage root: ``r >= 0`` is the node ``graph[r]``, ``r < 0`` the
    buffer tensor ``leaves[-1 - r]`` (weights, ``input()``/``layer(i)`` buffers, in order of
    first use). Two graphs with equal :attr:`key` get the same plan.
    """

    __slots__ = ("graph", "key", "leaves", "outputs", "root", "srcs")

    def __init__(
        self,
        graph: Sequence[Tensor],
        outputs: Sequence[Tensor],
        is_weight: Callable[[Tensor], bool],
        storage_device: Callable[[Tensor], int],
    ) -> None:
        # One pass over the graph, written for speed: it runs on every compute of a new graph
        # (a decode step), so it is the cost of a reused plan.
        self.graph = graph
        leaves: list[Tensor] = []
        self.leaves = leaves
        refs: dict[int, int] = {id(n): i for i, n in enumerate(graph)}
        get = refs.get
        leaf_keys: list[object] = []

        def leaf(t: Tensor) -> int:
            r = -1 - len(leaves)
            refs[id(t)] = r
            leaves.append(t)
            leaf_keys.append((storage_device(t), is_weight(t), t._meta))
            return r

        roots: list[int] = []
        all_srcs: list[tuple[int, ...]] = []
        node_keys: list[object] = []
        for i, node in enumerate(graph):
            top = node._root
            if top is None:
                roots.append(i)
            else:
                r = get(id(top))
                roots.append(leaf(top) if r is None else r)
            srcs: list[int] = []
            # The key names each operand itself (a view is a node of its own), not its root:
            # two views of one storage are different operands. A zero-size buffer operand is
            # not indexed (nothing is read from it) but devices see its layout: it is described.
            operands: list[object] = []
            for src in node._srcs:
                if src is None:
                    srcs.append(NONE)
                    operands.append(NONE)
                    continue
                own = get(id(src))
                if src._meta.ne[0] == 0:  # zero-size layouts are [0, 1, 1, 1]
                    srcs.append(NONE)
                    operands.append((NONE, src._meta) if own is None else own)
                    continue
                top = src._root
                if top is None:
                    r = leaf(src) if own is None else own
                    own = r
                else:
                    r = get(id(top))
                    if r is None:
                        r = leaf(top)
                srcs.append(r)
                operands.append(own)
            all_srcs.append(tuple(srcs))
            params = node._params
            node_keys.append(
                (node._op, node._meta, _params_key(params) if params else (), tuple(operands))
            )
        self.root = roots
        """Per node: the reference of its storage root (itself for a compute node)."""
        self.srcs = all_srcs
        """Per node: the root reference of each operand (``NONE`` if absent or zero-size)."""
        outs = []
        for t in outputs:
            top = t._root or t
            r = get(id(top))
            outs.append(leaf(top) if r is None else r)
        self.outputs = tuple(outs)
        self.key = (tuple(node_keys), tuple(leaf_keys), self.outputs)

    def tensor(self, r: int) -> Tensor:
        """Return the root tensor a reference names."""
        return self.graph[r] if r >= 0 else self.leaves[-1 - r]


@dataclass(slots=True)
class Slot:
    """A piece of one device's arena: a node's result or a transferred operand."""

    device: int
    size: int
    first: int
    last: int
    offset: int = 0


@dataclass(slots=True)
class Step:
    """Execute ``graph[node]`` on ``device``, or (``node < 0``) copy a span onto ``device``.

    Attributes:
        device: The device the step runs on.
        node: Graph position of the node executed; ``-1`` for a transfer.
        source: Transfer: the reference of the root whose bytes are copied.
        span: Transfer: the byte range of that root's storage.
        slot: Transfer: the slot the bytes go to (set by :func:`plan_liveness`).
        remote: Node: per operand, the step index of the transfer that brought it onto
            ``device``, or ``-1`` when it is local (or absent).
    """

    device: int
    node: int = -1
    source: int = NONE
    span: tuple[int, int] = (0, 0)
    slot: Slot | None = None
    remote: tuple[int, ...] = ()


@dataclass(slots=True)
class Placement:
    """Where each node runs and where each storage root lives.

    Attributes:
        device: Per graph position, the executing device (``-1``: a view, or zero-size).
        location: Per graph position, the device holding the node's storage (views: the
            device of the storage they view; ``-1`` for zero-size nodes).
        leaf_device: Per leaf, the device of its storage.
        reads_weights: Whether an executed node reads a model weight.
    """

    device: list[int]
    location: list[int]
    leaf_device: list[int]
    reads_weights: bool

    def where(self, r: int) -> int:
        """Return the device holding the storage root ``r``."""
        return self.location[r] if r >= 0 else self.leaf_device[-1 - r]


@dataclass(slots=True)
class Plan:
    """What the executor runs and the arena sizes it needs."""

    placement: Placement
    steps: list[Step] = field(default_factory=list)
    slots: dict[int, Slot] = field(default_factory=dict)
    """The arena slot of each executed node's own storage (by graph position)."""
    arena: dict[int, int] = field(default_factory=dict)
    """Bytes needed per device."""

    @property
    def reads_weights(self) -> bool:
        """Whether the graph reads a model weight."""
        return self.placement.reads_weights


def place_nodes(
    ix: GraphIndex,
    devices: Sequence[Device],
    main_gpu_device: int,
    is_weight: Callable[[Tensor], bool],
    storage_device: Callable[[Tensor], int],
    *,
    cpu_fallback: bool = True,
) -> Placement:
    """Choose the executing device of every node (step 1).

    ``cpu_fallback`` off: a node the chosen GPU declines raises instead of running on the CPU.

    Raises:
        UnsupportedOpError: No device can execute a node (naming the op and the reason).
    """
    leaf_device = [storage_device(t) for t in ix.leaves]
    leaf_weight = [is_weight(t) for t in ix.leaves]
    n = len(ix.graph)
    placement = Placement([-1] * n, [-1] * n, leaf_device, False)
    where = placement.where
    unsupported: dict[tuple[int, int], str | None] = {}

    def refusal(device: int, i: int) -> str | None:
        key = (device, i)
        if key not in unsupported:
            unsupported[key] = devices[device].unsupported(_spec(ix.graph[i]))
        return unsupported[key]

    for i, node in enumerate(ix.graph):
        if node._meta.n == 0:
            continue
        kind = OPS[node._op or ""].kind
        if kind == "view":
            placement.location[i] = where(ix.root[i])
            continue
        srcs = [r for r in ix.srcs[i] if r != NONE]
        weights = [r for r in srcs if r < 0 and leaf_weight[-1 - r]]
        if weights:
            placement.reads_weights = True
        if kind == "copy":
            device = where(ix.root[i])
            reason = refusal(device, i)
            if reason is not None:
                raise UnsupportedOpError(
                    f"{node._op}: device {devices[device].name} cannot execute it ({reason})"
                )
        else:
            if weights:
                device = where(weights[0])
            else:
                device = _gathering_device(srcs, where, main_gpu_device)
            reason = refusal(device, i)
            if reason is not None and device != 0:
                if not cpu_fallback:
                    raise UnsupportedOpError(
                        f"{node._op}: device {devices[device].name} declines it ({reason})"
                    )
                device = 0
                reason = refusal(0, i)
            if reason is not None:
                raise UnsupportedOpError(f"{node._op}: no device can execute it ({reason})")
            placement.location[i] = device
        placement.device[i] = device
    return placement


def _gathering_device(srcs: Sequence[int], where: Callable[[int], int], main_gpu: int) -> int:
    """Return where a node with no weight operand runs (SEMANTICS §6.4 rule 5).

    On the CPU (device 0) when no operand is on a GPU; on that GPU when one is; when operands are
    on several GPUs, on the GPU of the operand computed last (``srcs`` are storage roots, and a
    computed root's reference is its position in graph order), else on ``main_gpu``. Following
    the operand computed last keeps a residual stream on the GPU of the layer that just ran
    (as ggml's scheduler does): gathering on ``main_gpu`` sent the stream across devices twice
    per layer of a split model.
    """
    gpus = {where(r) for r in srcs} - {0}
    if not gpus:
        return 0
    if len(gpus) == 1:
        return gpus.pop()
    computed = [r for r in srcs if r >= 0 and where(r) != 0]
    return where(max(computed)) if computed else main_gpu


def route_transfers(ix: GraphIndex, placement: Placement) -> list[Step]:
    """Order the steps: every executed node, after the transfers its remote operands need.

    A span moved onto a device serves every later reader there until a ``copy`` node writes
    the storage it came from (step 2).
    """
    steps: list[Step] = []
    transfers: dict[tuple[int, int, int, int], int] = {}
    of_root: dict[int, list[tuple[int, int, int, int]]] = {}
    where = placement.where
    for i, node in enumerate(ix.graph):
        device = placement.device[i]
        if device < 0:
            continue
        remote = []
        for s, r in zip(node._srcs, ix.srcs[i], strict=True):
            if r == NONE or where(r) == device:
                remote.append(-1)
                continue
            assert s is not None
            start, stop = _span(s)
            key = (r, device, start, stop)
            k = transfers.get(key)
            if k is None:
                k = len(steps)
                steps.append(Step(device, source=r, span=(start, stop)))
                transfers[key] = k
                of_root.setdefault(r, []).append(key)
            remote.append(k)
        if OPS[node._op or ""].kind == "copy":
            # The copy writes into its destination's storage: earlier transfers of it are stale.
            for key in of_root.pop(ix.root[i], []):
                transfers.pop(key, None)
        steps.append(Step(device, node=i, remote=tuple(remote)))
    return steps


def plan_liveness(
    ix: GraphIndex, placement: Placement, steps: list[Step], devices: Sequence[Device]
) -> Plan:
    """Give every result and transfer a slot with its live range; pack the arenas (step 3)."""
    plan = Plan(placement, steps)
    slots = plan.slots

    def use(r: int, at: int) -> None:
        slot = slots.get(r)
        if slot is not None:
            slot.last = max(slot.last, at)

    for k, step in enumerate(steps):
        if step.node < 0:
            use(step.source, k)
            start, stop = step.span
            step.slot = Slot(step.device, stop - start, k, k)
            continue
        i = step.node
        for r, t in zip(ix.srcs[i], step.remote, strict=True):
            if r == NONE:
                continue
            if t < 0:
                use(r, k)
            else:
                transfer = steps[t].slot
                assert transfer is not None
                transfer.last = max(transfer.last, k)
        node = ix.graph[i]
        if OPS[node._op or ""].kind == "copy":
            use(ix.root[i], k)
            continue
        slots[i] = Slot(step.device, node._meta.storage, k, k)
    end = len(steps)
    for r in ix.outputs:
        use(r, end)
    _assign_offsets(plan, devices)
    return plan


def make_plan(
    ix: GraphIndex,
    devices: Sequence[Device],
    main_gpu_device: int,
    is_weight: Callable[[Tensor], bool],
    storage_device: Callable[[Tensor], int],
    *,
    cpu_fallback: bool = True,
) -> Plan:
    """Schedule a graph and plan its memory: placement, transfers, liveness.

    Args:
        ix: The graph (nodes in execution order) and the nodes whose results must survive to
            the end (listed in ``compute``, or the graph's leaves for ``reserve``).
        devices: Index 0 is the CPU.
        main_gpu_device: Device index of ``main_gpu`` (0 when there is no GPU).
        is_weight: ``is_weight(root) -> bool`` for buffer tensors.
        storage_device: ``storage_device(buffer_tensor) -> int``.
        cpu_fallback: Whether a node a GPU declines runs on the CPU (else it raises).
    """
    placement = place_nodes(
        ix, devices, main_gpu_device, is_weight, storage_device, cpu_fallback=cpu_fallback
    )
    steps = route_transfers(ix, placement)
    return plan_liveness(ix, placement, steps, devices)


def _assign_offsets(plan: Plan, devices: Sequence[Device]) -> None:
    """First-fit packing of every device's slots by live range."""
    by_device: dict[int, list[Slot]] = {}
    for step in plan.steps:
        slot = step.slot if step.node < 0 else plan.slots.get(step.node)
        if slot is not None:
            by_device.setdefault(slot.device, []).append(slot)
        by_device.setdefault(step.device, [])
    for device, slots in by_device.items():
        alignment = max(1, devices[device].alignment)
        live: list[Slot] = []  # sorted by offset
        peak = 0
        for slot in slots:  # already in order of first use
            live = [s for s in live if s.last >= slot.first]
            size = round_up(max(slot.size, 1), alignment)
            offset = 0
            for other in sorted(live, key=lambda s: s.offset):
                if offset + size <= other.offset:
                    break
                offset = max(
                    offset,
                    round_up(other.offset + round_up(max(other.size, 1), alignment), alignment),
                )
            slot.offset = offset
            live.append(slot)
            peak = max(peak, offset + size)
        # Every executing device gets a non-empty arena, so that zero-element operands always
        # have a buffer to point at.
        plan.arena[device] = max(peak, alignment)
