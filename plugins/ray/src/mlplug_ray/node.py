"""The node actor: one mlplug device on a Ray node, driven by the coordinator's RayDevice.

:class:`MlplugNode` is a plain class; :mod:`mlplug_ray.device` makes it a Ray actor class
(``ray.remote(MlplugNode)``). It owns the host device of the node's local plugin (``mlplug-cpu``,
loaded through its public :data:`~mlplug_cpu.plugin.PLUGIN`, never its internals) and the
buffers allocated on it, named by integer handles. Nodes arrive in a wire form (:data:`WireRef`
tuples instead of buffer objects). A segment (the engine's node list for this device) is sent
once with an id (``define``), kept decoded, and run again by that id (``replay``), as ggml-rpc
recomputes a graph it already holds. The coordinator queues segments, writes and frees and sends
them in one :meth:`MlplugNode.run` call when it needs a result.

Weights can come from the node's own copy of the GGUF file (:meth:`MlplugNode.load_weights`):
the file is checked by size and SHA-256 against the coordinator's before a byte is used.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from typing import Any, cast

from mlplug.device import (
    BackendParams,
    Buffer,
    Device,
    DType,
    Node,
    SupportsWeightUpload,
    TensorRef,
)
from mlplug_cpu.plugin import PLUGIN as CPU_PLUGIN
from mlplug_ray.errors import ModelFileMismatch

__all__ = ["EMPTY", "FileWeight", "MlplugNode", "Op", "WireNode", "WireRef", "file_digest"]

WireRef = tuple[int | None, int, tuple[int, int, int, int], tuple[int, int, int, int], DType]
"""A :class:`~mlplug.device.TensorRef` on the wire: (handle or None, offset, ne, nb, dtype).

Handles count from 1; :data:`EMPTY` names a scratch buffer of the node, for a zero-element
operand whose (unused) window the engine placed in another device's memory."""

EMPTY = 0

WireNode = tuple[str, WireRef, tuple[WireRef | None, ...], dict[str, Any]]
"""A :class:`~mlplug.device.Node` on the wire: (op, out, srcs, params)."""

Op = tuple[Any, ...]
"""A queued call: ``("define", sid, nodes, drop)``, ``("replay", sid)``, ``("write", handle,
offset, data)``, ``("pull", handle, offset, object_ref)``, ``("upload", ref, data)``,
``("free", handle)``."""

FileWeight = tuple[WireRef, int, int]
"""A weight to read from the model file: (where it goes, file offset, bytes in the file)."""

_DIGESTS: dict[tuple[str, int, int], str] = {}
"""SHA-256 of files already hashed in this process, by (real path, size, mtime)."""


def file_digest(path: str) -> tuple[int, str]:
    """Return a file's size and SHA-256 (hex), cached per process by path, size and mtime.

    Raises:
        OSError: The file cannot be read.
    """
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        with open(real, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        _DIGESTS[key] = digest
    return stat.st_size, digest


class MlplugNode:
    """The device of one Ray node (runs inside the actor process).

    The actor outlives a backend: :meth:`close` closes the device and frees every buffer,
    :meth:`start` opens a new one, so that one actor serves backend after backend.

    The device is made by :meth:`start`, not by the constructor, so that a failure there is
    an answer to a call rather than a dead actor.
    """

    def __init__(self) -> None:
        self._device: Device | None = None
        self._buffers: dict[int, Buffer] = {}
        self._segments: dict[int, list[Node]] = {}
        self._uses: dict[int, set[int]] = {}  # handle -> ids of the segments using it
        self._empty: Buffer | None = None
        self._next = 0
        self.busy_s = 0.0
        """Seconds spent in :meth:`run` (for benchmarks: the node's share of a token)."""

    def start(self, params: BackendParams) -> dict[str, Any]:
        """Open a fresh local device with ``params`` (closing one left open); return
        :meth:`info`."""
        if self._device is not None:
            self.close()
        self._device = CPU_PLUGIN.load(params)[0]
        return self.info()

    @property
    def device(self) -> Device:
        """The local device (refused when closed).

        Raises:
            RuntimeError: The node was closed and not opened again.
        """
        if self._device is None:
            raise RuntimeError("the node's device is closed")
        return self._device

    def info(self) -> dict[str, Any]:
        """Return the node's identity and memory figures (also a liveness check)."""
        import ray

        device = self.device
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "actor_id": ray.get_runtime_context().get_actor_id(),
            "pid": os.getpid(),
            "device": device.name,
            "alignment": device.alignment,
            "total": device.total_memory(),
            "free": device.free_memory(),
            "repacks": isinstance(device, SupportsWeightUpload),
        }

    def busy(self) -> float:
        """Return the seconds spent in :meth:`run` so far."""
        return self.busy_s

    def free_memory(self) -> int:
        """Return the local device's free bytes."""
        return self.device.free_memory()

    def weight_nbytes(self, dtype: DType, ne: tuple[int, int, int, int]) -> int:
        """Return the bytes the local device holds for a weight (its repacked size)."""
        device = self.device
        if isinstance(device, SupportsWeightUpload):
            return device.weight_nbytes(dtype, ne)
        return dtype.nbytes(ne[0] * ne[1] * ne[2] * ne[3])

    def alloc(self, nbytes: int) -> tuple[int, int]:
        """Allocate on the local device; return ``(handle, nbytes held)``.

        Raises:
            DeviceOutOfMemory: The local device cannot hold it.
        """
        buffer = self.device.alloc(nbytes)
        self._next += 1
        self._buffers[self._next] = buffer
        return self._next, buffer.nbytes

    def free(self, handle: int) -> None:
        """Free a buffer (idempotent) and forget the segments that use it."""
        for sid in self._uses.pop(handle, ()):
            self._segments.pop(sid, None)
        buffer = self._buffers.pop(handle, None)
        if buffer is not None:
            buffer.free()

    def write(self, handle: int, offset: int, data: bytes) -> None:
        """Copy bytes into a buffer (``data`` may be another node's :meth:`read`, resolved)."""
        self._buffers[handle].write(offset, data)

    def read(self, handle: int, offset: int, n: int) -> bytes:
        """Return bytes of a buffer (after everything submitted before)."""
        return self._buffers[handle].read(offset, n)

    def upload_weight(self, ref: WireRef, data: bytes) -> None:
        """Store a weight's file bytes (the local device may repack them)."""
        self._store_weight(self._ref(ref), memoryview(data))

    def load_weights(self, path: str, size: int, digest: str, weights: Sequence[FileWeight]) -> int:
        """Read weights from this node's copy of the model file; return the bytes read.

        Raises:
            ModelFileMismatch: The file is missing, or its size or SHA-256 differs from the
                coordinator's (nothing is loaded then).
        """
        try:
            have_size, have_digest = file_digest(path)
        except OSError as err:
            raise ModelFileMismatch(f"cannot read the model file {path}: {err}") from err
        if have_size != size or have_digest != digest:
            raise ModelFileMismatch(
                f"the model file {path} differs from the coordinator's: {have_size} bytes, "
                f"sha256 {have_digest[:16]}... (expected {size} bytes, sha256 {digest[:16]}...)"
            )
        done = 0
        fd = os.open(path, os.O_RDONLY)
        try:
            for ref, offset, nbytes in weights:
                data = os.pread(fd, nbytes, offset)
                if len(data) != nbytes:
                    raise ModelFileMismatch(f"the model file {path} ended early")
                self._store_weight(self._ref(ref), memoryview(data))
                done += nbytes
        finally:
            os.close(fd)
        self.device.synchronize()
        return done

    def unsupported(self, node: WireNode) -> str | None:
        """Ask the local device whether it runs the node (refs carry no buffer)."""
        return self.device.unsupported(self._node(node))

    def define(
        self, sid: int, nodes: Sequence[WireNode], drop: Sequence[int], *, run: bool = True
    ) -> None:
        """Keep a segment under id ``sid`` (forgetting the ids in ``drop``); execute it unless
        ``run`` is false."""
        for old in drop:
            self._segments.pop(old, None)
        built = [self._node(n) for n in nodes]
        self._segments[sid] = built
        for _, out, srcs, _ in nodes:
            for ref in (out, *srcs):
                if ref is not None and ref[0]:
                    self._uses.setdefault(ref[0], set()).add(sid)
        if run:
            self._run(built)

    def replay(self, sid: int) -> None:
        """Execute the segment kept under ``sid`` again.

        Raises:
            KeyError: No segment has that id (it was never defined, or a buffer it uses was
                freed).
        """
        self._run(self._segments[sid])

    def run(self, ops: Sequence[Op]) -> None:
        """Perform queued calls in order: a decode step's work on this node in one remote call.

        A ``pull`` waits for another node's :meth:`read` (a Ray object reference): Ray brings
        the bytes from that node. The coordinator submits that read before this call and only
        after flushing the other node's queue, so the wait never closes a cycle.

        After a segment fails, the later segments are skipped (``define`` still keeps its
        segment) and the writes and frees are still done, so that the node's buffers and
        segments stay what the coordinator believes; then the first failure is raised.

        Raises:
            ValueError: An unknown kind of call.
        """
        start = time.perf_counter()
        try:
            self._perform(ops)
        finally:
            self.busy_s += time.perf_counter() - start

    def _perform(self, ops: Sequence[Op]) -> None:
        failure: Exception | None = None
        for op in ops:
            kind = op[0]
            try:
                if kind == "replay":
                    if failure is None:
                        self.replay(op[1])
                    continue
                if kind == "define":
                    self.define(op[1], op[2], op[3], run=failure is None)
                    continue
            except Exception as err:
                failure = err
                continue
            if kind == "write":
                self.write(op[1], op[2], op[3])
            elif kind == "pull":
                import ray

                self.write(op[1], op[2], cast("bytes", ray.get(op[3])))
            elif kind == "upload":
                self.upload_weight(op[1], op[2])
            elif kind == "free":
                self.free(op[1])
            else:
                raise ValueError(f"unknown queued call {kind!r}")
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Free every buffer and close the local device (the actor stays, see :meth:`start`)."""
        self._segments.clear()
        self._uses.clear()
        for handle in list(self._buffers):
            self.free(handle)
        if self._empty is not None:
            self._empty.free()
            self._empty = None
        if self._device is not None:
            self._device.close()
            self._device = None

    def _run(self, nodes: list[Node]) -> None:
        device = self.device
        device.execute(nodes)
        device.synchronize()

    def _store_weight(self, ref: TensorRef, data: memoryview) -> None:
        device = self.device
        if isinstance(device, SupportsWeightUpload):
            device.upload_weight(ref, data)
        else:
            assert ref.buffer is not None
            ref.buffer.write(ref.offset, data)

    def _ref(self, ref: WireRef) -> TensorRef:
        handle, offset, ne, nb, dtype = ref
        if handle is None:
            buffer = None
        elif handle == EMPTY:
            buffer = self._scratch()
        else:
            buffer = self._buffers[handle]
        return TensorRef(buffer, offset, ne, nb, dtype)

    def _scratch(self) -> Buffer:
        """A small buffer of this node for zero-element operands whose window lay elsewhere."""
        if self._empty is None:
            self._empty = self.device.alloc(self.device.alignment)
        return self._empty

    def _node(self, node: WireNode) -> Node:
        op, out, srcs, params = node
        refs = tuple(None if s is None else self._ref(s) for s in srcs)
        return Node(op, self._ref(out), refs, params)
