"""The coordinator side: a :class:`RayDevice` per node actor, and the backend's device list.

Every call of the device API is proxied to the node actor (:class:`~mlplug_ray.node.MlplugNode`):
``alloc``/``free``/``read``/``unsupported`` wait for the answer; ``write`` and ``execute`` are
submitted and return (Ray runs one caller's calls to an actor in order), their failures surface
at the next ``synchronize`` or ``read``. A segment (the engine's list of nodes for this device)
is one remote call, not one per op.

A dead actor (``ray.exceptions.RayActorError``), an actor that does not answer within
``MLPLUG_RAY_TIMEOUT`` seconds, or a failing remote call gives :class:`RayNodeError` naming the
device and the Ray node; the device then refuses every call with that message, except ``free``
and ``close``, which do nothing, so the backend can be closed.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mlplug.device import (
    BackendParams,
    Device,
    DeviceOutOfMemory,
    Node,
    TensorRef,
    parse_size,
)
from mlplug_cpu.plugin import PLUGIN as CPU_PLUGIN
from mlplug_ray.cluster import init_local
from mlplug_ray.errors import RayNodeError
from mlplug_ray.node import MlplugNode, WireNode, WireRef

__all__ = [
    "ENV_ADDRESS",
    "ENV_MEMORY_LIMIT",
    "ENV_NODES",
    "ENV_TIMEOUT",
    "RayBuffer",
    "RayDevice",
    "RaySession",
    "load",
]

ENV_ADDRESS = "MLPLUG_RAY_ADDRESS"
ENV_NODES = "MLPLUG_RAY_NODES"
ENV_MEMORY_LIMIT = "MLPLUG_RAY_MEMORY_LIMIT"
ENV_TIMEOUT = "MLPLUG_RAY_TIMEOUT"

_RemoteNode = ray.remote(MlplugNode)


class RaySession:
    """The Ray connection of one backend: shut down with its last device if it started Ray."""

    def __init__(self) -> None:
        self.started = False
        self._open = 0
        self._lock = threading.Lock()
        if ray.is_initialized():
            return
        address = os.environ.get(ENV_ADDRESS, "").strip()
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # A private single-machine cluster, on the loopback interface only.
            init_local(num_cpus=1)
        self.started = True

    def opened(self) -> None:
        """Count a device using the session."""
        with self._lock:
            self._open += 1

    def closed(self) -> None:
        """Uncount a device; the last one shuts Ray down if this session started it."""
        with self._lock:
            self._open -= 1
            last = self._open == 0
        if last and self.started and ray.is_initialized():
            ray.shutdown()


class RayBuffer:
    """A buffer held by a node actor, named by its handle there."""

    __slots__ = ("_device", "accounted", "handle", "nbytes")

    def __init__(self, device: RayDevice, handle: int, nbytes: int, accounted: int) -> None:
        self._device = device
        self.handle = handle
        self.nbytes = nbytes
        self.accounted = accounted

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Copy host bytes into the buffer (submitted; ordered before later calls)."""
        self._device.check_window(self, offset, memoryview(data).nbytes)
        self._device.submit(self._device.actor.write.remote(self.handle, offset, bytes(data)))

    def read(self, offset: int, n: int) -> bytes:
        """Return ``n`` bytes from ``offset`` after everything submitted before."""
        self._device.check_window(self, offset, n)
        self._device.synchronize()
        data: bytes = self._device.call(
            "read", self._device.actor.read.remote(self.handle, offset, n)
        )
        return data

    def free(self) -> None:
        """Release the buffer on the node (idempotent; nothing to do on a dead node)."""
        if self.handle:
            self._device.release(self)
            self.handle = 0


class RayDevice:
    """One node actor as a device of kind ``"gpu"`` (name ``RAY<i>``).

    Args:
        index: The device's number.
        actor: The node actor's handle.
        timeout: Seconds to wait for an answer.
        session: The Ray connection (closed with the last device).
        memory_limit: Cap in bytes on allocations not yet freed; ``None`` = the node's memory.
    """

    def __init__(
        self,
        index: int,
        actor: Any,
        *,
        timeout: float,
        session: RaySession,
        memory_limit: int | None,
    ) -> None:
        self.name = f"RAY{index}"
        self.kind = "gpu"
        self.actor = actor
        self.node_id = ""
        self.pid = 0
        self._timeout = timeout
        self._session = session
        self._memory_limit = memory_limit
        self._allocated = 0
        self._pending: list[Any] = []
        self._dead = ""
        self._closed = False
        info: dict[str, Any] = self.call("start", actor.info.remote())
        self.node_id = str(info["node_id"])
        self.pid = int(info["pid"])
        self.id = f"ray-{self.node_id[:16]}-{index}"
        self.alignment = int(info["alignment"])
        self._node_total = int(info["total"])
        session.opened()

    def __repr__(self) -> str:
        return f"RayDevice({self.name}, node={self.node_id}, pid={self.pid})"

    # -- remote calls -----------------------------------------------------------------------

    def where(self) -> str:
        """Describe the actor for error messages."""
        return f"Ray node {self.node_id or '?'}, actor pid {self.pid or '?'}"

    def call(self, what: str, ref: Any) -> Any:
        """Wait for a remote call's result, translating Ray's failures.

        Raises:
            RayNodeError: The actor died, timed out or the call failed.
            DeviceOutOfMemory: The node's device ran out of memory.
        """
        if self._dead:
            raise RayNodeError(self._dead, device=self.name, node=self.node_id)
        try:
            return ray.get(ref, timeout=self._timeout)
        except RayActorError as err:
            self._die(f"[{self.name}] node actor died during {what} ({self.where()}): {err}", err)
        except GetTimeoutError as err:
            self._die(
                f"[{self.name}] node actor did not answer {what} within {self._timeout:g} s "
                f"({self.where()}; set {ENV_TIMEOUT} to wait longer)",
                err,
            )
        except RayTaskError as err:
            cause = err.cause
            if isinstance(cause, DeviceOutOfMemory):
                raise DeviceOutOfMemory(self.name, cause.requested, cause.free) from err
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
        free: int = self.call("free_memory", self.actor.free_memory.remote())
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
        handle, held = self.call("alloc", self.actor.alloc.remote(nbytes))
        self._allocated += size
        return RayBuffer(self, int(handle), max(int(held), nbytes), size)

    def release(self, buffer: RayBuffer) -> None:
        """Free a buffer on the node (nothing to send when the node is dead)."""
        self._allocated -= buffer.accounted
        if not self._dead and not self._closed:
            self._pending.append(self.actor.free.remote(buffer.handle))

    # -- execution --------------------------------------------------------------------------

    def _wire_ref(self, ref: TensorRef) -> WireRef:
        handle: int | None = None
        if ref.buffer is not None:
            if not isinstance(ref.buffer, RayBuffer) or ref.buffer._device is not self:
                raise ValueError(f"[{self.name}] operand buffer belongs to another device")
            handle = ref.buffer.handle
        return (handle, ref.offset, ref.ne, ref.nb, ref.dtype)

    def _wire(self, node: Node) -> WireNode:
        srcs = tuple(None if s is None else self._wire_ref(s) for s in node.srcs)
        return (node.op, self._wire_ref(node.out), srcs, dict(node.params))

    def unsupported(self, node: Node) -> str | None:
        """Ask the node's device (one call; the engine asks once per plan)."""
        answer: str | None = self.call(
            "unsupported", self.actor.unsupported.remote(self._wire(node))
        )
        return answer

    def execute(self, nodes: Sequence[Node]) -> None:
        """Send the whole segment in one remote call (returns before it finishes)."""
        wire = [self._wire(n) for n in nodes]
        self.submit(self.actor.execute.remote(wire))

    def synchronize(self) -> None:
        """Wait for every submitted call; raise the first failure."""
        pending, self._pending = self._pending, []
        for ref in pending:
            self.call("a submitted execute/write/free", ref)

    def close(self) -> None:
        """Close the node's device and end the actor (works after the node died)."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._dead:
                self._pending.clear()
                with contextlib.suppress(RayActorError, RayTaskError, GetTimeoutError):
                    ray.get(self.actor.close.remote(), timeout=self._timeout)
            # closing must not fail on an actor that is already gone
            with contextlib.suppress(Exception):
                ray.kill(self.actor)
        finally:
            self._session.closed()


def _env_size(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return parse_size(text)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err


def _env_int(name: str, default: int | None) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={text!r}: expected a positive integer")
    return value


def load(params: BackendParams) -> list[Device]:
    """Return the host CPU device, then one :class:`RayDevice` per node actor.

    Raises:
        ValueError: A ``MLPLUG_RAY_*`` variable is malformed.
        RayNodeError: An actor did not start.
    """
    count = _env_int(ENV_NODES, None)
    timeout = float(_env_int(ENV_TIMEOUT, 120) or 120)
    limit = _env_size(ENV_MEMORY_LIMIT)
    host = CPU_PLUGIN.load(params)[0]
    session = RaySession()
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))  # type: ignore[no-untyped-call, unused-ignore]
    count = count if count is not None else max(1, len(nodes))
    devices: list[Device] = [host]
    try:
        for i in range(count):
            # num_cpus=0: the actor reserves no CPU, so several fit on a one-CPU test cluster.
            options: dict[str, Any] = {"num_cpus": 0}
            if nodes:
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                    node_id=nodes[i % len(nodes)], soft=False
                )
            actor: Any = _RemoteNode.options(**options).remote(params)
            try:
                device = RayDevice(i, actor, timeout=timeout, session=session, memory_limit=limit)
            except BaseException:
                ray.kill(actor)
                raise
            devices.append(device)
    except BaseException:
        for started in devices[1:]:
            started.close()
        if len(devices) == 1 and session.started and ray.is_initialized():
            ray.shutdown()
        raise
    return devices
