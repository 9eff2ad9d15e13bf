"""The plugin-author API: everything a device plugin implements or uses (DESIGN §4).

A plugin imports nothing from core but this module. It supplies :class:`Device` objects; the
core engine (placement, scheduling, memory planning, bookkeeping) drives them. The plugin's
light descriptor is an :class:`EnginePlugin`, registered through the ``mlplug.backends`` entry
point group::

    # mlplug_myplugin/plugin.py  (imports nothing heavy)
    from mlplug.device import EnginePlugin, hookimpl

    PLUGIN = EnginePlugin(name="mydev", priority=10, probe=_probe, load=_load,
                          install_hint='pip install "mlplug-mydev"')

    @hookimpl
    def mlplug_register_backends(registry):
        PLUGIN.register(registry)

``load(params)`` imports the heavy library and returns the devices: exactly one of kind
``"cpu"`` (the host device, first) and zero or more of kind ``"gpu"``.

**Execution.** The engine hands a device a list of :class:`Node` records in graph order; each
node names an op of :data:`mlplug.ops.OPS`, its output :class:`TensorRef` and its operand refs.
A ref is a byte-strided window (ggml layout: ``ne``/``nb`` in dim-0-fastest order) into one of
the device's own buffers. Kernels must read operands through their strides (they may be views)
and write the output through its strides (``copy`` writes into a strided view of its
destination). View ops (``reshape``, ``view``, ``permute``) never reach a device.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import pluggy

from mlplug.dtype import ANY, CACHE, CREATE, FLOAT, INT, WEIGHT, DType
from mlplug.ops import OPS, Meta, OpDef, Param, category, contiguous_strides, is_contiguous
from mlplug.params import BackendParams, CacheConfig

__all__ = [
    "ANY",
    "API_VERSION",
    "CACHE",
    "CREATE",
    "FLOAT",
    "INT",
    "OPS",
    "WEIGHT",
    "AccountedBuffer",
    "BackendParams",
    "Buffer",
    "CacheConfig",
    "CappedAllocator",
    "DType",
    "Device",
    "DeviceOutOfMemory",
    "EnginePlugin",
    "FileWeight",
    "HostBuffer",
    "Meta",
    "Node",
    "OpDef",
    "Param",
    "Registrar",
    "Release",
    "SupportsCacheConfig",
    "SupportsDirectCopy",
    "SupportsFileWeights",
    "SupportsHostView",
    "SupportsWeightUpload",
    "TensorRef",
    "category",
    "contiguous_strides",
    "env_size",
    "hookimpl",
    "host_memory",
    "is_contiguous",
    "parse_size",
    "tile_shapes",
]

API_VERSION = 1
"""Version of this API; a plugin built for another major version is refused."""

hookimpl = pluggy.HookimplMarker("mlplug")
"""Marker for a plugin's hook implementations (``@hookimpl def mlplug_register_backends``)."""


class DeviceOutOfMemory(MemoryError):
    """Raised when device memory runs out (cap or hardware).

    :meth:`Device.alloc` raises it when an allocation does not fit. A device that takes memory
    lazily (MLX evaluates arrays inside ``execute``/``synchronize``) may raise it from those
    too; the engine turns either into ``ErrNoMem`` with the memory report.

    Attributes:
        device: The device's ``name``.
        requested: Bytes asked for.
        free: Bytes the device had free (under its cap) at the request.
    """

    def __init__(self, device: str, requested: int, free: int) -> None:
        super().__init__(f"[{device}] cannot allocate {requested} bytes ({free} bytes free)")
        self.device = device
        self.requested = requested
        self.free = free


@runtime_checkable
class Buffer(Protocol):
    """A block of device memory returned by :meth:`Device.alloc`."""

    nbytes: int
    """Size in bytes (at least what was asked for)."""

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Copy host bytes into the buffer at ``offset``."""
        ...

    def read(self, offset: int, n: int) -> bytes:
        """Return ``n`` bytes of the buffer starting at ``offset`` (synchronising first)."""
        ...

    def free(self) -> None:
        """Release the memory; the buffer is unusable afterwards. Idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A strided window into a buffer: what a kernel reads or writes.

    Attributes:
        buffer: The device buffer (``None`` only in the nodes given to ``unsupported``).
        offset: Byte offset of element (0, 0, 0, 0) in the buffer.
        ne: Four extents, dim 0 fastest.
        nb: Four byte strides; for block dtypes ``nb[0]`` steps one block.
        dtype: Element type.
    """

    buffer: Buffer | None
    offset: int
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    dtype: DType

    @property
    def n(self) -> int:
        """Element count."""
        return self.ne[0] * self.ne[1] * self.ne[2] * self.ne[3]

    @property
    def nbytes(self) -> int:
        """Packed size of the elements."""
        return self.dtype.nbytes(self.n)

    @property
    def contiguous(self) -> bool:
        """Whether the window is packed (dims of extent 1 ignored)."""
        return is_contiguous(self.ne, self.nb, self.dtype)

    def span(self) -> tuple[int, int]:
        """Return the byte range ``[start, stop)`` of the buffer the window touches."""
        if self.n == 0:
            return (self.offset, self.offset)
        blocks0 = self.ne[0] // self.dtype.block_size
        last = (blocks0 - 1) * self.nb[0] + sum((self.ne[i] - 1) * self.nb[i] for i in (1, 2, 3))
        return (self.offset, self.offset + last + self.dtype.type_size)


@dataclass(frozen=True, slots=True)
class Node:
    """One op to execute.

    Attributes:
        op: Name in :data:`mlplug.ops.OPS`.
        out: Where the result goes. For ``copy`` it is the (strided) destination window.
        srcs: Operand windows in the order of the op's ``operands`` (``None`` for an absent
            optional operand such as a norm's weight or attention's mask). For ``copy`` the
            second operand is the destination itself.
        params: The normalised parameters the ops table recorded (e.g. ``{"eps": 1e-5}``).
    """

    op: str
    out: TensorRef
    srcs: tuple[TensorRef | None, ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    def operand(self, i: int = 0) -> TensorRef:
        """Return operand ``i``, which the op requires.

        Raises:
            ValueError: The operand is absent (a required operand never is in an engine node).
        """
        ref = self.srcs[i] if i < len(self.srcs) else None
        if ref is None:
            raise ValueError(f"[{self.op}] operand {i} is missing")
        return ref

    def optional(self, i: int) -> TensorRef | None:
        """Return optional operand ``i`` (a norm's weight, attention's mask), or ``None``."""
        return self.srcs[i] if i < len(self.srcs) else None


@runtime_checkable
class Device(Protocol):
    """A compute device as the engine sees it. Every member is required unless marked."""

    name: str
    """Display name and memory-report key (``CPU``, ``CUDA0``, ``Metal``, ``SIM0``…)."""
    id: str
    """Stable identifier (a UUID for CUDA; may be empty)."""
    kind: str
    """``"cpu"`` for the host device, ``"gpu"`` for every other device."""
    alignment: int
    """Byte alignment of allocations; accounted sizes are rounded up to it."""

    def total_memory(self) -> int:
        """Return the device's total memory in bytes (its cap when one is set)."""
        ...

    def free_memory(self) -> int:
        """Return the bytes still free (under the cap when one is set)."""
        ...

    def alloc(self, nbytes: int) -> Buffer:
        """Allocate ``nbytes``; raise :class:`DeviceOutOfMemory` when they do not fit."""
        ...

    def unsupported(self, node: Node) -> str | None:
        """Return ``None`` if the device can execute ``node``, else the reason it cannot.

        Called at scheduling time with refs whose ``buffer`` is ``None``; a node the device
        refuses runs on the CPU device, with the copies inserted by the engine. The answer must
        depend only on the node as described (op, params, layouts): the engine reuses a plan for
        every later graph of the same structure without asking again.
        """
        ...

    def execute(self, nodes: Sequence[Node]) -> None:
        """Execute nodes in order; may return before they finish (see ``synchronize``)."""
        ...

    def synchronize(self) -> None:
        """Wait until everything submitted has finished."""
        ...

    def close(self) -> None:
        """Release everything the device holds (its buffers are freed by the engine first)."""
        ...


@runtime_checkable
class SupportsWeightUpload(Protocol):
    """Optional: a device that repacks weights at load (defaults to ``Buffer.write``)."""

    def upload_weight(self, ref: TensorRef, data: memoryview) -> None:
        """Store a weight's file bytes (GGUF layout, packed) into ``ref``'s buffer."""
        ...

    def weight_nbytes(self, dtype: DType, ne: tuple[int, int, int, int]) -> int:
        """Return the bytes the device really holds for a weight of this type and shape."""
        ...


@runtime_checkable
class SupportsHostView(Protocol):
    """Optional, on a :class:`Buffer` in host memory: a writable view of its bytes.

    The loader reads a weight's file bytes straight into this view (one copy, with ``pread``:
    a file truncated meanwhile gives ``GGUFError``, not a crash); other buffers get the bytes
    through a staging chunk and ``write``.
    """

    def host_view(self, offset: int, n: int) -> memoryview:
        """Return ``n`` writable bytes of the buffer from ``offset`` (format ``"B"``)."""
        ...


@runtime_checkable
class SupportsCacheConfig(Protocol):
    """Optional: a device that overrides the engine's default ``CacheConfig`` (§8.1)."""

    def cache_config(self, flash_attention: bool) -> CacheConfig:
        """Return the cache layout this device's attention expects."""
        ...


@runtime_checkable
class SupportsDirectCopy(Protocol):
    """Optional: copies between devices without a round trip through host bytes.

    The engine moves an operand from device A to device B with ``B.copy_from(...)`` when both
    A and B implement this protocol, after synchronising A; a ``False`` answer (e.g. the source
    buffer belongs to another plugin) makes it fall back to ``read`` + ``write``.
    """

    def copy_from(
        self, src: Buffer, src_offset: int, dst: Buffer, dst_offset: int, nbytes: int
    ) -> bool:
        """Copy ``nbytes`` from ``src`` (another device's buffer) into ``dst`` (this device's).

        Returns:
            Whether the copy was made (it may complete asynchronously, ordered before this
            device's later work); ``False`` leaves both buffers untouched.
        """
        ...


@dataclass(frozen=True, slots=True)
class FileWeight:
    """A weight whose bytes a device may read from its own copy of the model file.

    Attributes:
        ref: Where the weight goes: its buffer, offset, GGUF dtype and layout.
        file_offset: Absolute byte offset of the weight's data in the file.
        nbytes: Its size in the file.
    """

    ref: TensorRef
    file_offset: int
    nbytes: int


@runtime_checkable
class SupportsFileWeights(Protocol):
    """Optional: a device that loads its weights from its own copy of the model file.

    ``load()`` offers every device that implements it the weights placed on it, in one call,
    before copying any bytes (little-endian files only). A remote device reads them where it
    runs instead of receiving them over the network.
    """

    def load_file_weights(self, path: str, weights: Sequence[FileWeight]) -> bool:
        """Store ``weights`` from the device's copy of the GGUF file the engine opened at
        ``path`` (as ``upload_weight`` would store their bytes), and wait for it.

        Returns:
            Whether they were loaded; ``False`` makes the engine copy them as usual.
        """
        ...


@dataclass(frozen=True, slots=True)
class EnginePlugin:
    """A plugin descriptor: light to import; ``load`` imports the heavy library.

    Attributes:
        name: Backend name (``[a-z][a-z0-9_]*``).
        load: ``load(params) -> list[Device]``; the CPU device first.
        priority: Selection priority (first-party: cuda 100, metal 90, cpu 0).
        probe: ``probe() -> (ok, reason)``; must be cheap and must not raise.
        install_hint: What to install when unavailable (``pip install "mlplug[cuda]"``).
        api_version: The device API version the plugin was written for.
    """

    name: str
    load: Callable[[BackendParams], Sequence[Device]]
    priority: int = 0
    probe: Callable[[], tuple[bool, str]] | None = None
    install_hint: str | None = None
    api_version: int = API_VERSION

    def register(self, registry: Registrar) -> None:
        """Register this plugin with ``registry`` (call from the ``mlplug_register_backends`` hook).

        The registry builds the core engine's backend over this plugin's devices; this module
        never imports the engine.

        Raises:
            RuntimeError: The plugin targets another device API version.
        """
        if self.api_version != API_VERSION:
            raise RuntimeError(
                f"[{self.name}] plugin targets device API {self.api_version}, "
                f"core provides {API_VERSION}"
            )
        registry.register_engine_plugin(self)


@runtime_checkable
class Registrar(Protocol):
    """What the ``mlplug_register_backends`` hook receives (``mlplug.registry`` implements it)."""

    def register_engine_plugin(self, plugin: EnginePlugin) -> None:
        """Register a device plugin: the core engine runs over the devices its ``load`` returns."""
        ...

    def register_backend(
        self,
        name: str,
        factory: Callable[[str | None, BackendParams], Any],
        *,
        priority: int = 0,
        probe: Callable[[], tuple[bool, str]] | None = None,
        install_hint: str | None = None,
    ) -> None:
        """Register ``factory(model_path, params) -> mlplug.Backend`` (an own executor)."""
        ...


# ---------------------------------------------------------------------------------------------
# Plugin kit: what every device needs and would otherwise write again


def tile_shapes(
    a_shape: Sequence[int], b_shape: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Return shapes that make plain broadcasting tile ``b`` over ``a`` (SEMANTICS §5.2).

    Each axis where ``b`` repeats (``b`` neither equal to ``a`` nor 1 there) is split into
    ``(a // b, b)`` for ``a`` and ``(1, b)`` for ``b``: reshaped so, numpy/MLX/cupy broadcasting
    over the new axis repeats ``b`` whole, as the semantics ask and broadcasting alone would not.
    The shapes are in the order given (numpy order for numpy arrays).
    """
    sa: list[int] = []
    sb: list[int] = []
    for x, y in zip(a_shape, b_shape, strict=True):
        if y in (x, 1):
            sa.append(x)
            sb.append(y)
        else:
            sa += [x // y, y]
            sb += [1, y]
    return tuple(sa), tuple(sb)


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name == key:
                    return int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sysconf_bytes(pages: str) -> int:
    try:
        return int(os.sysconf(pages)) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return 0


def host_memory() -> tuple[int, int]:
    """Return the host's ``(total, available)`` memory in bytes.

    Linux's ``/proc/meminfo`` (``MemTotal``, ``MemAvailable``: what can be allocated without
    swapping) when it is there, else the ``sysconf`` page counts; ``available`` is ``total``
    where the OS does not say (macOS has no ``SC_AVPHYS_PAGES``), 0 both when nothing does.
    """
    total = _meminfo("MemTotal") or _sysconf_bytes("SC_PHYS_PAGES")
    return total, _meminfo("MemAvailable") or _sysconf_bytes("SC_AVPHYS_PAGES") or total


class Release:
    """Gives one buffer's bytes back to its :class:`CappedAllocator`, once.

    Holds the device weakly, so a buffer that outlives its device does not keep it alive.
    Calling it again (``free()`` then garbage collection) does nothing.
    """

    __slots__ = ("_device", "nbytes")

    def __init__(self, device: CappedAllocator[Any], nbytes: int) -> None:
        self._device: weakref.ref[CappedAllocator[Any]] | None = weakref.ref(device)
        self.nbytes = nbytes

    def __call__(self) -> None:
        ref, self._device = self._device, None
        device = ref() if ref is not None else None
        if device is not None:
            device._give_back(self.nbytes)


class AccountedBuffer:
    """Base for the buffers of a :class:`CappedAllocator`: range checks and the bytes given back.

    The device's ``_alloc(nbytes, release)`` passes ``release`` on; the buffer calls it once,
    on :meth:`free` or when it is garbage collected unfreed (``weakref.finalize``). A subclass
    implements ``write`` and ``read`` (calling :meth:`check` first) and may override
    ``_drop()`` to let go of its storage when freed.
    """

    __slots__ = ("__weakref__", "_finalizer", "name", "nbytes")

    def __init__(self, name: str, nbytes: int, release: Release) -> None:
        self.name = name
        self.nbytes = nbytes
        self._finalizer = weakref.finalize(self, release)

    @property
    def alive(self) -> bool:
        """Whether the buffer has not been freed."""
        return self._finalizer.alive

    def check(self, offset: int, n: int) -> None:
        """Raise ``ValueError`` if the buffer was freed or ``[offset, offset + n)`` is outside."""
        if not self._finalizer.alive:
            raise ValueError(f"[{self.name}] buffer used after free()")
        if offset < 0 or n < 0 or offset + n > self.nbytes:
            raise ValueError(
                f"[{self.name}] bytes [{offset}, {offset + n}) outside a {self.nbytes}-byte buffer"
            )

    def free(self) -> None:
        """Give the bytes back to the device and drop the storage. Idempotent."""
        self._finalizer()
        self._drop()

    def _drop(self) -> None:
        """Let go of the storage (after :meth:`free`)."""


class HostBuffer(AccountedBuffer):
    """A buffer in host memory: :attr:`data` is a writable byte array (a numpy ``uint8`` array,
    a ``bytearray``) that the device's kernels view; ``write``/``read`` copy through it and
    ``host_view`` lends it to the loader (:class:`SupportsHostView`)."""

    __slots__ = ("data",)

    def __init__(self, name: str, data: Any, release: Release) -> None:
        super().__init__(name, memoryview(data).nbytes, release)
        self.data = data

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Copy host bytes into the buffer at ``offset``."""
        src = memoryview(data).cast("B")
        self.check(offset, src.nbytes)
        memoryview(self.data).cast("B")[offset : offset + src.nbytes] = src

    def read(self, offset: int, n: int) -> bytes:
        """Return ``n`` bytes starting at ``offset``."""
        self.check(offset, n)
        return bytes(memoryview(self.data).cast("B")[offset : offset + n])

    def host_view(self, offset: int, n: int) -> memoryview:
        """Return ``n`` writable bytes from ``offset`` (:class:`SupportsHostView`: the loader
        reads weights straight into it)."""
        self.check(offset, n)
        return memoryview(self.data).cast("B")[offset : offset + n]

    def _drop(self) -> None:
        self.data = bytearray()


BufferT = TypeVar("BufferT", bound=Buffer)


class CappedAllocator(Generic[BufferT]):
    """Memory books for a device: bytes allocated and not yet freed, under an optional cap.

    A device class inherits it and supplies the buffers; the base owns the accounting, as
    tinygrad's ``Allocator.alloc`` wraps ``_alloc``. A subclass sets ``name`` before calling
    ``__init__`` and implements:

    * ``_alloc(nbytes, release) -> Buffer``: make a buffer of ``nbytes`` that calls
      ``release()`` when it is freed (and, with ``weakref.finalize``, when it is collected
      unfreed); raise ``MemoryError`` when the memory is not there.
    * ``_hardware_memory() -> (total, free)``: the device's memory without a cap; the default
      is the host's (:func:`host_memory`), right for devices that compute in host memory.

    ``alloc`` refuses with :class:`DeviceOutOfMemory` past the cap; a device whose library takes
    memory lazily (MLX) sets ``hardware_bound = True`` to refuse past the hardware's free memory
    too. ``close_buffers()`` frees the buffers still live (for ``Device.close``).
    """

    __slots__ = ("__weakref__", "_allocated", "_buffers", "_lock", "_memory_limit")

    name: str
    hardware_bound: bool = False
    """Also refuse allocations past ``free_memory()`` when no cap is set."""

    def __init__(self, memory_limit: int | None = None) -> None:
        self._allocated = 0
        self._lock = threading.Lock()
        self._buffers: weakref.WeakSet[BufferT] = weakref.WeakSet()
        self._memory_limit: int | None = None
        CappedAllocator.set_memory_limit(self, memory_limit)

    def _alloc(self, nbytes: int, release: Release) -> BufferT:
        raise NotImplementedError

    def _hardware_memory(self) -> tuple[int, int]:
        return host_memory()

    @property
    def memory_limit(self) -> int | None:
        """The cap in bytes, or ``None``."""
        return self._memory_limit

    def set_memory_limit(self, limit: int | None) -> int | None:
        """Set the cap (``None`` removes it) and return the previous one.

        Memory already allocated stays allocated even past the new cap; further allocations
        fail until enough is freed.

        Raises:
            ValueError: ``limit`` is negative.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"[{self.name}] memory limit must be >= 0, got {limit}")
        previous, self._memory_limit = self._memory_limit, limit
        return previous

    @property
    def allocated(self) -> int:
        """Bytes allocated and not yet freed."""
        return self._allocated

    def total_memory(self) -> int:
        """Return the cap when one is set, else the device's memory."""
        if self._memory_limit is not None:
            return self._memory_limit
        return self._hardware_memory()[0]

    def free_memory(self) -> int:
        """Return the bytes left under the cap, else the device's free memory."""
        if self._memory_limit is not None:
            return max(0, self._memory_limit - self._allocated)
        return self._hardware_memory()[1]

    def alloc(self, nbytes: int) -> BufferT:
        """Allocate ``nbytes`` and count them.

        Raises:
            ValueError: ``nbytes`` is negative.
            DeviceOutOfMemory: The bytes do not fit under the cap (or, for a
                ``hardware_bound`` device, in its free memory), or the allocation failed.
        """
        if nbytes < 0:
            raise ValueError(f"[{self.name}] cannot allocate {nbytes} bytes")
        with self._lock:
            limit = self._memory_limit
            if self.hardware_bound:
                free = self.free_memory()
                if nbytes > free:
                    raise DeviceOutOfMemory(self.name, nbytes, free)
            elif limit is not None and self._allocated + nbytes > limit:
                raise DeviceOutOfMemory(self.name, nbytes, self.free_memory())
            self._allocated += nbytes
        release = Release(self, nbytes)
        try:
            buffer = self._alloc(nbytes, release)
        except MemoryError as err:
            release()
            raise DeviceOutOfMemory(self.name, nbytes, self.free_memory()) from err
        self._buffers.add(buffer)
        return buffer

    def _give_back(self, nbytes: int) -> None:
        with self._lock:
            self._allocated -= nbytes

    def close_buffers(self) -> None:
        """Free every buffer of this device still allocated."""
        for buffer in list(self._buffers):
            buffer.free()


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_size(text: str) -> int:
    """Parse a memory size such as ``512MiB``, ``1.5G``, ``4096`` into bytes.

    Decimal units (``K``, ``M``, ``G``, ``T``, with or without ``B``) are powers of 1000;
    binary units (``KiB``, ``MiB``…) powers of 1024.

    Raises:
        ValueError: The text is not a size.
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a memory size: {text!r} (expected e.g. 512MiB, 2G, 1048576)")
    number, unit = match.group(1), (match.group(2) or "").lower()
    unit = unit[:-1] if unit.endswith("b") and unit != "b" else unit
    if unit not in _UNITS:
        raise ValueError(f"not a memory size: {text!r} (unknown unit)")
    return int(float(number) * _UNITS[unit])


def env_size(variable: str) -> int | None:
    """Return the memory size in environment variable ``variable`` (``None`` when unset or empty).

    Raises:
        ValueError: The value is not a size (:func:`parse_size`); the message names the variable.
    """
    text = os.environ.get(variable, "").strip()
    if not text:
        return None
    try:
        return parse_size(text)
    except ValueError as err:
        raise ValueError(f"{variable}={text!r}: {err}") from err
