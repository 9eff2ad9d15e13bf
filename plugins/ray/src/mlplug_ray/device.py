"""The coordinator side: a :class:`RayDevice` per node actor, and the backend's device list.

Every call of the device API is proxied to the node actor (:class:`~mlplug_ray.node.MlplugNode`):
``alloc``/``read``/``unsupported`` wait for the answer. ``write``, ``free``, ``execute`` and
copies from another node are **queued** and sent together in one ``run`` call when the engine
next needs something from the node (``synchronize``, ``read``, ``alloc``, a copy out of it) or
the queue holds over :data:`FLUSH_BYTES`; their failures surface at the next ``synchronize`` or
``read``. Ray runs one caller's calls to an actor in order, so the queue keeps the device API's
order.

* **Segments are replayed by id.** The engine hands a device its whole segment (its run of
  nodes) in one ``execute``; a segment made of the same node records as one sent before (the
  engine keeps its records while a graph's plan, arenas and buffers stay: a decode step) is
  run by its id with one small call (``replay``), as ggml-rpc recomputes a graph it holds.
  Up to :data:`SEGMENTS` segments are kept per device; freeing a buffer forgets the segments
  that use it.
* **Node-to-node copies** (:class:`~mlplug.device.SupportsDirectCopy`): the source node's
  ``read`` is submitted and its Ray object reference queued on the destination node, which
  fetches it: Ray moves the bytes from node to node (from the source node's object store; below
  Ray's inline limit of 100 KiB through the coordinator's process, which owns the reference).
  The coordinator never waits for the bytes.
* **Weights from the node's own file** (:class:`~mlplug.device.SupportsFileWeights`): each node
  reads its layers' weights from its copy of the GGUF file, after checking its size and SHA-256
  against the coordinator's; ``MLPLUG_RAY_WEIGHTS=push`` sends them from the coordinator.

A dead actor (``ray.exceptions.RayActorError``), an actor that does not answer within
``MLPLUG_RAY_TIMEOUT`` seconds, or a failing remote call gives :class:`RayNodeError` naming the
device and the Ray node; the device then refuses every call with that message, except ``free``
and ``close``, which do nothing, so the backend can be closed. Node actors outlive a backend:
a closed device hands its actor (device closed, buffers freed) to a per-cluster pool that the
next backend takes its actors from.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mlplug.device import (
    BackendParams,
    Buffer,
    Device,
    DeviceOutOfMemory,
    DType,
    FileWeight,
    Node,
    TensorRef,
)
from mlplug_cpu.plugin import PLUGIN as CPU_PLUGIN
from mlplug_ray.errors import ModelFileMismatch, RayNodeError
from mlplug_ray.node import EMPTY, MlplugNode, Op, WireNode, WireRef, file_digest
from mlplug_ray.session import POOL, RaySession
from mlplug_ray.settings import (
    ENV_MEMORY_LIMIT,
    ENV_NODES,
    ENV_TIMEOUT,
    env_int,
    env_size,
    model_paths,
    weights_pushed,
)

__all__ = ["FLUSH_BYTES", "SEGMENTS", "RayBuffer", "RayDevice", "load"]

SEGMENTS = 64
"""Segments kept per device for replay (least recently used forgotten first)."""

FLUSH_BYTES = 16 * 1024 * 1024
"""Queued bytes (writes, weights) past which the queue is sent without waiting for a sync."""

_RemoteNode = ray.remote(MlplugNode)

_KERNEL_ERRORS = (ValueError, IndexError, TypeError, ArithmeticError, NotImplementedError)
"""Errors of the node's device that reach the caller as they are (not as RayNodeError)."""


_BY_ACTOR: weakref.WeakValueDictionary[str, RayDevice] = weakref.WeakValueDictionary()
"""Live devices by their actor's id, to name the node when a copy's source died."""


class RayBuffer:
    """A buffer held by a node actor, named by its handle there."""

    __slots__ = ("_device", "accounted", "handle", "nbytes")

    def __init__(self, device: RayDevice, handle: int, nbytes: int, accounted: int) -> None:
        self._device = device
        self.handle = handle
        self.nbytes = nbytes
        self.accounted = accounted

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Copy host bytes into the buffer (queued; ordered before later calls)."""
        self._device.check_window(self, offset, memoryview(data).nbytes)
        self._device.enqueue(("write", self.handle, offset, bytes(data)))

    def read(self, offset: int, n: int) -> bytes:
        """Return ``n`` bytes from ``offset`` after everything submitted before."""
        self._device.check_window(self, offset, n)
        self._device.synchronize()
        data: bytes = self._device.call("read", self._device.remote("read", self.handle, offset, n))
        return data

    def free(self) -> None:
        """Release the buffer on the node (idempotent; nothing to do on a dead node)."""
        if self.handle:
            self._device.release(self)
            self.handle = 0


@dataclass(frozen=True, slots=True)
class _Segment:
    """A segment the node keeps: its id, the records it was made from, the buffers it uses."""

    sid: int
    nodes: tuple[Node, ...]  # held so that the ids in the key are never reused meanwhile
    handles: frozenset[int]


class RayDevice:
    """One node actor as a device of kind ``"gpu"`` (name ``RAY<i>``).

    Args:
        index: The device's number.
        actor: The node actor's handle.
        params: The backend parameters (the node's device is opened with them).
        timeout: Seconds to wait for an answer.
        session: The Ray connection (closed with the last device).
        memory_limit: Cap in bytes on allocations not yet freed; ``None`` = the node's memory.
        model_path: Where the node reads the model file (``None``: the coordinator's path).
        push_weights: Send weights from the coordinator instead of the node reading its file.
    """

    def __init__(
        self,
        index: int,
        actor: Any,
        *,
        params: BackendParams,
        timeout: float,
        session: RaySession,
        memory_limit: int | None,
        model_path: str | None = None,
        push_weights: bool = False,
    ) -> None:
        self.name = f"RAY{index}"
        self.kind = "gpu"
        self.actor = actor
        self.node_id = ""
        self.pid = 0
        self.calls: Counter[str] = Counter()
        """Remote calls made, by node actor method (``run``, ``read``, ``alloc``…)."""
        self.ops: Counter[str] = Counter()
        """Queued calls sent inside ``run``, by kind (``define``, ``replay``, ``write``…)."""
        self._timeout = timeout
        self._session = session
        self._memory_limit = memory_limit
        self._model_path = model_path
        self._push_weights = push_weights
        self._allocated = 0
        self._pending: list[Any] = []
        self._queue: list[Op] = []
        self._queued_bytes = 0
        self._dead = ""
        self._closed = False
        self._segments: OrderedDict[tuple[int, ...], _Segment] = OrderedDict()
        self._users: dict[int, set[tuple[int, ...]]] = {}  # handle -> keys of segments
        self._dropped: list[int] = []  # forgotten segment ids the node has not been told yet
        self._next_segment = 0
        self._sizes: dict[tuple[DType, tuple[int, int, int, int]], int] = {}
        self._answers: dict[object, str | None] = {}  # unsupported(), by node description
        info: dict[str, Any] = self.call("start", self.remote("start", params))
        self.node_id = str(info["node_id"])
        self.pid = int(info["pid"])
        self.actor_id = str(info["actor_id"])
        self.id = f"ray-{self.node_id[:16]}-{index}"
        self.alignment = int(info["alignment"])
        self._node_total = int(info["total"])
        self._repacks = bool(info["repacks"])
        _BY_ACTOR[self.actor_id] = self
        session.opened()

    def __repr__(self) -> str:
        return f"RayDevice({self.name}, node={self.node_id}, pid={self.pid})"

    # -- remote calls -----------------------------------------------------------------------

    def where(self) -> str:
        """Describe the actor for error messages."""
        return f"Ray node {self.node_id or '?'}, actor pid {self.pid or '?'}"

    def remote(self, method: str, *args: Any) -> Any:
        """Submit a call of the node actor's ``method``; return its object reference."""
        self.calls[method] += 1
        return getattr(self.actor, method).remote(*args)

    def call(self, what: str, ref: Any) -> Any:
        """Wait for a remote call's result, translating Ray's failures.

        Raises:
            RayNodeError: The actor died (or the node a copy came from), timed out, or the
                call failed.
            DeviceOutOfMemory: The node's device ran out of memory.
            ModelFileMismatch: The node's copy of the model file is missing or differs.
        """
        if self._dead:
            raise RayNodeError(self._dead, device=self.name, node=self.node_id)
        try:
            return ray.get(ref, timeout=self._timeout)
        except RayActorError as err:
            source = _BY_ACTOR.get(str(getattr(err, "actor_id", "") or ""))
            if source is not None and source is not self:
                source._die(
                    f"[{source.name}] node actor died before a copy to {self.name} "
                    f"({source.where()}): {err}",
                    err,
                )
            self._die(f"[{self.name}] node actor died during {what} ({self.where()}): {err}", err)
        except GetTimeoutError as err:
            self._die(
                f"[{self.name}] node actor did not answer {what} within {self._timeout:g} s "
                f"({self.where()}; set {ENV_TIMEOUT} to wait longer)",
                err,
            )
        except RayTaskError as err:
            cause = err.cause
            source = _BY_ACTOR.get(str(getattr(cause, "actor_id", "") or ""))
            if isinstance(cause, RayActorError) and source is not None and source is not self:
                source._die(
                    f"[{source.name}] node actor died before a copy to {self.name} "
                    f"({source.where()}): {cause}",
                    err,
                )
            if isinstance(cause, DeviceOutOfMemory):
                raise DeviceOutOfMemory(self.name, cause.requested, cause.free) from err
            if isinstance(cause, ModelFileMismatch):
                raise ModelFileMismatch(f"[{self.name}] ({self.where()}): {cause}") from err
            if isinstance(cause, _KERNEL_ERRORS):
                # What a kernel raises for bad input (an id out of range...): the same error
                # as on a local device, with a note naming the node.
                cause.add_note(f"raised on {self.name} ({self.where()})")
                raise cause from err
            raise RayNodeError(
                f"[{self.name}] {what} failed on the node ({self.where()}): {cause!r}",
                device=self.name,
                node=self.node_id,
            ) from err

    def _die(self, message: str, err: BaseException) -> NoReturn:
        self._dead = message
        self._pending.clear()
        raise RayNodeError(message, device=self.name, node=self.node_id) from err

    def submit(self, ref: Any) -> None:
        """Record a submitted call; its failure surfaces at the next ``synchronize``."""
        if self._dead:
            raise RayNodeError(self._dead, device=self.name, node=self.node_id)
        self._pending.append(ref)

    def enqueue(self, op: Op) -> None:
        """Queue a call for the next ``run`` (sent at once past :data:`FLUSH_BYTES`)."""
        if self._dead:
            raise RayNodeError(self._dead, device=self.name, node=self.node_id)
        self._queue.append(op)
        self.ops[op[0]] += 1
        if op[0] in ("write", "upload"):
            self._queued_bytes += len(op[-1])
            if self._queued_bytes > FLUSH_BYTES:
                self.flush()

    def flush(self) -> None:
        """Send the queued calls in one ``run`` call (submitted, not waited for)."""
        if self._queue and not self._dead:
            queue, self._queue, self._queued_bytes = self._queue, [], 0
            self.submit(self.remote("run", queue))

    def check_window(self, buffer: RayBuffer, offset: int, n: int) -> None:
        """Refuse a read or write outside the buffer (before anything is sent).

        Raises:
            ValueError: The window is outside the buffer, or the buffer was freed.
        """
        if not buffer.handle:
            raise ValueError(f"[{self.name}] buffer was freed")
        if offset < 0 or n < 0 or offset + n > buffer.nbytes:
            raise ValueError(
                f"[{self.name}] window [{offset}, {offset + n}) outside a buffer of "
                f"{buffer.nbytes} bytes"
            )

    # -- memory -----------------------------------------------------------------------------

    def total_memory(self) -> int:
        """Return the cap, or the node device's total memory."""
        return self._memory_limit if self._memory_limit is not None else self._node_total

    def free_memory(self) -> int:
        """Return the bytes left under the cap, or the node device's free memory."""
        if self._memory_limit is not None:
            return max(0, self._memory_limit - self._allocated)
        self.flush()  # queued frees first
        free: int = self.call("free_memory", self.remote("free_memory"))
        return free

    def _rounded(self, nbytes: int) -> int:
        return -(-max(nbytes, 1) // self.alignment) * self.alignment

    def alloc(self, nbytes: int) -> RayBuffer:
        """Allocate on the node.

        Raises:
            DeviceOutOfMemory: Past the cap, or the node's device is full.
        """
        size = self._rounded(nbytes)
        if self._memory_limit is not None and self._allocated + size > self._memory_limit:
            raise DeviceOutOfMemory(self.name, nbytes, self.free_memory())
        self.flush()  # queued frees first
        handle, held = self.call("alloc", self.remote("alloc", nbytes))
        self._allocated += size
        return RayBuffer(self, int(handle), max(int(held), nbytes), size)

    def release(self, buffer: RayBuffer) -> None:
        """Free a buffer on the node and forget the segments using it (nothing is sent to a
        dead node)."""
        self._allocated -= buffer.accounted
        for key in self._users.pop(buffer.handle, ()):
            segment = self._segments.pop(key, None)
            if segment is not None:
                self._forget(key, segment, tell=False)  # the node forgets them itself
        if not self._dead and not self._closed:
            self.enqueue(("free", buffer.handle))

    # -- weights (SupportsWeightUpload, SupportsFileWeights) -------------------------------

    def weight_nbytes(self, dtype: DType, ne: tuple[int, int, int, int]) -> int:
        """Return the bytes the node's device holds for a weight (asked once per shape)."""
        if not self._repacks:
            return dtype.nbytes(ne[0] * ne[1] * ne[2] * ne[3])
        key = (dtype, ne)
        size = self._sizes.get(key)
        if size is None:
            size = self._sizes[key] = int(
                self.call("weight_nbytes", self.remote("weight_nbytes", dtype, ne))
            )
        return size

    def upload_weight(self, ref: TensorRef, data: memoryview) -> None:
        """Send a weight's file bytes to the node (its device may repack them; queued)."""
        self.enqueue(("upload", self._wire_ref(ref), bytes(data)))

    def load_file_weights(self, path: str, weights: Sequence[FileWeight]) -> bool:
        """Have the node read ``weights`` from its own copy of the model file (waited for).

        The node's copy is ``MLPLUG_RAY_MODEL_PATHS``'s entry for this device, else ``path``;
        it must have the size and SHA-256 of the coordinator's file at ``path``.

        Returns:
            ``False`` with ``MLPLUG_RAY_WEIGHTS=push`` (the engine sends the bytes instead).

        Raises:
            ModelFileMismatch: The node's copy is missing or differs (naming node and file).
        """
        if self._push_weights:
            return False
        size, digest = file_digest(path)
        there = self._model_path or path
        items = [(self._wire_ref(w.ref), w.file_offset, w.nbytes) for w in weights]
        self.synchronize()
        self.call("load_weights", self.remote("load_weights", there, size, digest, items))
        return True

    # -- execution --------------------------------------------------------------------------

    def _wire_ref(self, ref: TensorRef) -> WireRef:
        handle: int | None = None
        if ref.buffer is not None:
            if not isinstance(ref.buffer, RayBuffer) or ref.buffer._device is not self:
                if ref.n == 0:  # nothing is read or written: any buffer of the node will do
                    return (EMPTY, 0, ref.ne, ref.nb, ref.dtype)
                raise ValueError(f"[{self.name}] operand buffer belongs to another device")
            if not ref.buffer.handle:
                raise ValueError(f"[{self.name}] operand buffer was freed")
            handle = ref.buffer.handle
        return (handle, ref.offset, ref.ne, ref.nb, ref.dtype)

    def _wire(self, node: Node) -> WireNode:
        srcs = tuple(None if s is None else self._wire_ref(s) for s in node.srcs)
        return (node.op, self._wire_ref(node.out), srcs, dict(node.params))

    def unsupported(self, node: Node) -> str | None:
        """Ask the node's device, once per distinct description (op, params, layouts).

        The answer depends only on the description (the ``Device.unsupported`` contract), so
        a new plan (a decode step whose cache view grew) asks nothing again.
        """
        wire = self._wire(node)
        op, out, srcs, params = wire
        try:
            key: object = (op, out, srcs, tuple(params.items()))
            hash(key)
        except TypeError:
            key = (op, out, srcs, repr(sorted(params.items())))
        if key in self._answers:
            return self._answers[key]
        answer: str | None = self.call("unsupported", self.remote("unsupported", wire))
        self._answers[key] = answer
        return answer

    def execute(self, nodes: Sequence[Node]) -> None:
        """Run a segment: by id when the node holds it, else sent whole and kept (queued)."""
        key = tuple(map(id, nodes))
        segment = self._segments.get(key)
        if segment is not None:
            self._segments.move_to_end(key)
            self.enqueue(("replay", segment.sid))
            return
        wire = [self._wire(n) for n in nodes]
        handles = frozenset(
            ref[0] for op in wire for ref in (op[1], *op[2]) if ref is not None and ref[0]
        )
        self._next_segment += 1
        segment = _Segment(self._next_segment, tuple(nodes), handles)
        self._segments[key] = segment
        for handle in handles:
            self._users.setdefault(handle, set()).add(key)
        while len(self._segments) > SEGMENTS:
            old_key, old = self._segments.popitem(last=False)
            self._forget(old_key, old, tell=True)
        dropped, self._dropped = self._dropped, []
        self.enqueue(("define", segment.sid, wire, dropped))

    def _forget(self, key: tuple[int, ...], segment: _Segment, *, tell: bool) -> None:
        for handle in segment.handles:
            users = self._users.get(handle)
            if users is not None:
                users.discard(key)
        if tell:
            self._dropped.append(segment.sid)

    def copy_from(
        self, src: Buffer, src_offset: int, dst: Buffer, dst_offset: int, nbytes: int
    ) -> bool:
        """Copy from another node's buffer: that node's ``read`` is submitted (after its queue)
        and this node fetches the result (queued); Ray hands the bytes from node to node.

        Returns:
            ``False`` (the engine goes through host bytes) when ``src`` is not another live
            node's buffer.
        """
        if not (isinstance(src, RayBuffer) and isinstance(dst, RayBuffer)):
            return False
        source = src._device
        if source is self or dst._device is not self or source._dead or source._closed:
            return False
        source.check_window(src, src_offset, nbytes)
        self.check_window(dst, dst_offset, nbytes)
        source.flush()
        data = source.remote("read", src.handle, src_offset, nbytes)
        self.enqueue(("pull", dst.handle, dst_offset, data))
        return True

    def synchronize(self) -> None:
        """Send the queue, wait for every submitted call; raise the first failure."""
        self.flush()
        pending, self._pending = self._pending, []
        for ref in pending:
            self.call("a submitted call", ref)

    def close(self) -> None:
        """Close the node's device; the actor goes to the pool (or ends). Works after the node
        died."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._segments.clear()
        self._users.clear()
        try:
            if not self._dead:
                self._pending.clear()
                with contextlib.suppress(RayActorError, RayTaskError, GetTimeoutError):
                    ray.get(self.actor.close.remote(), timeout=self._timeout)
                    if not self._session.started and POOL.give(self.node_id, self.actor):
                        return
            # closing must not fail on an actor that is already gone
            with contextlib.suppress(Exception):
                ray.kill(self.actor)
        finally:
            _BY_ACTOR.pop(self.actor_id, None)
            self._session.closed()


def _new_actor(node: str) -> Any:
    """Start a node actor on Ray node ``node`` (anywhere when empty)."""
    # num_cpus=0: the actor reserves no CPU, so several fit on a one-CPU cluster.
    options: dict[str, Any] = {"num_cpus": 0}
    if node:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    return _RemoteNode.options(**options).remote()


def load(params: BackendParams) -> list[Device]:
    """Return the host CPU device, then one :class:`RayDevice` per node actor.

    Raises:
        ValueError: A ``MLPLUG_RAY_*`` variable is malformed.
        RayNodeError: An actor did not start.
    """
    count = env_int(ENV_NODES, None)
    timeout = float(env_int(ENV_TIMEOUT, 120) or 120)
    limit = env_size(ENV_MEMORY_LIMIT)
    push = weights_pushed()
    host = CPU_PLUGIN.load(params)[0]
    session = RaySession()
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))  # type: ignore[no-untyped-call, unused-ignore]
    count = count if count is not None else max(1, len(nodes))
    paths = model_paths(count)
    devices: list[Device] = [host]
    try:
        for i in range(count):
            node = nodes[i % len(nodes)] if nodes else ""
            pooled: Any = POOL.take(node) if node else None
            for actor in (pooled, None) if pooled is not None else (None,):
                if actor is None:
                    actor = _new_actor(node)
                try:
                    device = RayDevice(
                        i,
                        actor,
                        params=params,
                        timeout=timeout,
                        session=session,
                        memory_limit=limit,
                        model_path=paths.get(i),
                        push_weights=push,
                    )
                except RayNodeError:
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                    if actor is pooled:
                        continue  # a pooled actor that died meanwhile: start a fresh one
                    raise
                except BaseException:
                    ray.kill(actor)
                    raise
                break
            devices.append(device)
    except BaseException:
        for started in devices[1:]:
            started.close()
        if len(devices) == 1 and session.started and ray.is_initialized():
            ray.shutdown()
        raise
    return devices
