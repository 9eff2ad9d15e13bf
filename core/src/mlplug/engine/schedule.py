"""Scheduling a graph onto devices and planning its compute memory (DESIGN §3).

**Placement of nodes** (SEMANTICS §6.4 rule 5 and the fallback rule):

* a view executes nothing and lives where the storage it views lives;
* ``copy`` runs where its destination's storage lives;
* any other node runs on the device of its first weight operand; else on the GPU its operands
  live on, on ``main_gpu`` when they live on several GPUs, on the CPU when none is on a GPU;
* a device that declares a node unsupported hands it to the CPU device (unless
  ``cpu_fallback`` is off: then the refusal raises ``UnsupportedOpError``).

Operands that live on another device are copied (the byte span the operand's window touches)
into a temporary on the executing device, once per compute until a ``copy`` node writes the
storage they came from.

**Memory.** Every node result and temporary is a *slot* with a live range in steps; slots are
packed first-fit into one arena per device, reusing the space of slots whose last reader has
run. A slot's range includes every reader, so no kernel's output overlaps one of its inputs.
The arena sizes are the graph memory that ``reserve()`` allocates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlplug.device import Node, TensorRef
from mlplug.errors import UnsupportedOpError
from mlplug.ops import OPS

from .books import round_up

if TYPE_CHECKING:
    from mlplug.device import Device
    from mlplug.tensor import Tensor

__all__ = ["Plan", "Slot", "Step", "make_plan"]


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
    """Execute ``node`` on ``device``, or (``transfer``) copy a span onto ``device``."""

    device: int
    node: Tensor | None = None
    transfer_root: Tensor | None = None
    span: tuple[int, int] = (0, 0)
    slot: Slot | None = None


@dataclass(slots=True)
class Plan:
    """What the executor runs and the arena sizes it needs."""

    steps: list[Step] = field(default_factory=list)
    location: dict[int, int] = field(default_factory=dict)
    """Device of the storage of each executed node (by ``id``)."""
    slots: dict[int, Slot] = field(default_factory=dict)
    """The arena slot of each executed node's own storage (by ``id``)."""
    arena: dict[int, int] = field(default_factory=dict)
    """Bytes needed per device."""
    reads_weights: bool = False


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


def make_plan(
    graph: Sequence[Tensor],
    outputs: Sequence[Tensor],
    devices: Sequence[Device],
    main_gpu_device: int,
    is_weight: Callable[[Tensor], bool],
    storage_device: Callable[[Tensor], int],
    *,
    cpu_fallback: bool = True,
) -> Plan:
    """Schedule ``graph`` and plan its memory.

    Args:
        graph: Nodes in execution order.
        outputs: Nodes whose results must survive to the end (listed in ``compute``, or the
            graph's leaves for ``reserve``).
        devices: Index 0 is the CPU.
        main_gpu_device: Device index of ``main_gpu`` (0 when there is no GPU).
        is_weight: ``is_weight(root) -> bool`` for buffer tensors.
        storage_device: ``storage_device(buffer_tensor) -> int``.
        cpu_fallback: Whether a node a GPU declines runs on the CPU (else it raises).
    """
    plan = Plan()
    slots_by_node: dict[int, Slot] = {}
    transfers: dict[tuple[int, int, int, int], Slot] = {}
    transfers_of_root: dict[int, list[tuple[int, int, int, int]]] = {}
    unsupported_cache: dict[tuple[int, int], str | None] = {}

    def where(t: Tensor) -> int:
        root = _root(t)
        if root._op is None:
            return storage_device(root)
        return plan.location[id(root)]

    def use(t: Tensor, step: int) -> None:
        slot = slots_by_node.get(id(_root(t)))
        if slot is not None:
            slot.last = max(slot.last, step)

    for node in graph:
        if node._meta.n == 0:
            continue
        opdef = OPS[node._op or ""]
        if opdef.kind == "view":
            plan.location[id(node)] = where(node)
            continue
        srcs = [s for s in node._srcs if s is not None and s._meta.n > 0]
        for s in srcs:
            root = _root(s)
            if root._op is None and is_weight(root):
                plan.reads_weights = True
        if opdef.kind == "copy":
            device = where(node)
        else:
            weight = next((s for s in srcs if _root(s)._op is None and is_weight(_root(s))), None)
            if weight is not None:
                device = where(weight)
            else:
                gpus = {where(s) for s in srcs} - {0}
                device = (gpus.pop() if len(gpus) == 1 else main_gpu_device) if gpus else 0
            reason = _unsupported(devices, device, node, unsupported_cache)
            if reason is not None and device != 0:
                if not cpu_fallback:
                    raise UnsupportedOpError(
                        f"{node._op}: device {devices[device].name} declines it ({reason})"
                    )
                device = 0
                reason = _unsupported(devices, 0, node, unsupported_cache)
            if reason is not None:
                raise UnsupportedOpError(f"{node._op}: no device can execute it ({reason})")
        if opdef.kind == "copy":
            reason = _unsupported(devices, device, node, unsupported_cache)
            if reason is not None:
                raise UnsupportedOpError(
                    f"copy: device {devices[device].name} cannot execute it ({reason})"
                )
        # Bring operands that live elsewhere onto the executing device.
        for s in srcs:
            if where(s) == device:
                continue
            root = _root(s)
            start, stop = _span(s)
            key = (id(root), device, start, stop)
            slot = transfers.get(key)
            if slot is None:
                use(s, len(plan.steps))
                slot = Slot(device, stop - start, len(plan.steps), len(plan.steps))
                plan.steps.append(Step(device, transfer_root=root, span=(start, stop), slot=slot))
                transfers[key] = slot
                transfers_of_root.setdefault(id(root), []).append(key)
            slot.last = len(plan.steps)
        step_index = len(plan.steps)
        for s in srcs:
            if where(s) == device:
                use(s, step_index)
        if opdef.kind == "copy":
            # The copy writes into its destination's storage: earlier transfers of it are stale.
            for key in transfers_of_root.pop(id(_root(node)), []):
                transfers.pop(key, None)
            use(node, step_index)
            plan.steps.append(Step(device, node=node))
            continue
        slot = Slot(device, node._meta.storage, step_index, step_index)
        slots_by_node[id(node)] = slot
        plan.slots[id(node)] = slot
        plan.location[id(node)] = device
        plan.steps.append(Step(device, node=node))

    end = len(plan.steps)
    for t in outputs:
        use(t, end)
    _assign_offsets(plan, devices)
    return plan


def _unsupported(
    devices: Sequence[Device], device: int, node: Tensor, cache: dict[tuple[int, int], str | None]
) -> str | None:
    key = (device, id(node))
    if key not in cache:
        cache[key] = devices[device].unsupported(_spec(node))
    return cache[key]


def _assign_offsets(plan: Plan, devices: Sequence[Device]) -> None:
    """First-fit packing of every device's slots by live range."""
    by_device: dict[int, list[Slot]] = {}
    for step in plan.steps:
        slot = step.slot if step.transfer_root is not None else plan.slots.get(id(step.node))
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
