"""The ``reference`` backend's single device: the float64 reference behind the device API.

Buffers are ``bytearray``s. Each node's operands are read through their byte strides (any
dtype, views included) into float64 logical values, :func:`~.reference.evaluate` computes the
exact result, and :func:`~.convert.encode` rounds it into the output's dtype, written through
the output's strides (``copy`` writes into a strided window of its destination; ``topk``'s
result is a non-contiguous window). Same-dtype copies (``contiguous``, ``duplicate``, ``copy``
to its own dtype) move bytes, so they work for every dtype, quantised weight types included.

Independent code: it shares nothing with any device plugin. It is slow by design (float64,
one numpy call chain per node); it exists to make graphs runnable with no plugin installed and
to serve as the baseline the conformance suite itself is tested against.

``MLPLUG_REFERENCE_MEMORY_LIMIT`` (e.g. ``64MiB``) caps the device, so out-of-memory paths are
testable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from mlplug.device import DeviceOutOfMemory, DType, Meta, Node, TensorRef, parse_size
from mlplug_conformance import convert
from mlplug_conformance.reference import KERNELS, evaluate, numpy_shape

__all__ = ["ReferenceBuffer", "ReferenceDevice"]

_BYTE_OPS = {"contiguous", "duplicate"}
_ENV_LIMIT = "MLPLUG_REFERENCE_MEMORY_LIMIT"


class ReferenceBuffer:
    """Device memory: a ``bytearray``."""

    __slots__ = ("_device", "data", "nbytes")

    def __init__(self, device: ReferenceDevice, nbytes: int) -> None:
        self._device: ReferenceDevice | None = device
        self.nbytes = nbytes
        self.data = bytearray(nbytes)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Copy host bytes into the buffer at ``offset``."""
        n = len(data)
        if offset < 0 or offset + n > self.nbytes:
            raise IndexError(f"[reference] write of {n} bytes at {offset} past {self.nbytes}")
        self.data[offset : offset + n] = data

    def read(self, offset: int, n: int) -> bytes:
        """Return ``n`` bytes starting at ``offset``."""
        if offset < 0 or offset + n > self.nbytes:
            raise IndexError(f"[reference] read of {n} bytes at {offset} past {self.nbytes}")
        return bytes(self.data[offset : offset + n])

    def free(self) -> None:
        """Release the memory. Idempotent."""
        if self._device is not None:
            self._device.used -= self.nbytes
            self._device = None
            self.data = bytearray()


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 34


class ReferenceDevice:
    """The host device of the ``reference`` backend (kind ``cpu``, named ``CPU``)."""

    name = "CPU"
    id = "reference"
    kind = "cpu"
    alignment = 32

    def __init__(self, memory_limit: int | None = None) -> None:
        self.limit = memory_limit
        self.used = 0

    @classmethod
    def from_env(cls) -> ReferenceDevice:
        """Return a device capped by ``MLPLUG_REFERENCE_MEMORY_LIMIT`` when it is set."""
        text = os.environ.get(_ENV_LIMIT, "").strip()
        return cls(parse_size(text) if text else None)

    def total_memory(self) -> int:
        """Return the cap, or the machine's physical memory."""
        return self.limit if self.limit is not None else _physical_memory()

    def free_memory(self) -> int:
        """Return the bytes still free under the cap."""
        return max(0, self.total_memory() - self.used)

    def alloc(self, nbytes: int) -> ReferenceBuffer:
        """Allocate ``nbytes`` zeroed bytes."""
        if self.limit is not None and self.used + nbytes > self.limit:
            raise DeviceOutOfMemory(self.name, nbytes, self.free_memory())
        try:
            buffer = ReferenceBuffer(self, nbytes)
        except MemoryError as err:
            raise DeviceOutOfMemory(self.name, nbytes, self.free_memory()) from err
        self.used += nbytes
        return buffer

    def unsupported(self, node: Node) -> str | None:
        """Return why a node cannot run here (an undecodable or unwritable dtype), or None."""
        if node.op not in KERNELS:
            return f"the reference has no {node.op}"
        if _byte_copy(node):
            return None
        for ref in node.srcs:
            if ref is not None and ref.dtype is DType.OTHER:
                return "an operand has dtype OTHER"
        if node.out.dtype not in convert.ENCODABLE:
            return f"cannot write results of dtype {node.out.dtype.name}"
        return None

    def execute(self, nodes: Sequence[Node]) -> None:
        """Execute nodes in order (synchronously)."""
        for node in nodes:
            if _byte_copy(node):
                src = node.srcs[0]
                assert src is not None
                _scatter(node.out, _gather(src))
                continue
            values = [None if s is None else _read(s) for s in node.srcs]
            out = node.out
            meta = Meta(out.ne, out.nb, out.dtype)
            result = evaluate(node.op, values, node.params, meta)
            if out.n:
                _scatter(out, np.frombuffer(convert.encode(result, out.dtype), dtype=np.uint8))

    def synchronize(self) -> None:
        """Nothing to wait for: execution is synchronous."""

    def close(self) -> None:
        """Nothing to release beyond the buffers (freed by the engine)."""


def _byte_copy(node: Node) -> bool:
    src = node.srcs[0] if node.srcs else None
    if src is None or src.dtype != node.out.dtype:
        return False
    return node.op in _BYTE_OPS or node.op == "copy"


def _block_shape(ref: TensorRef) -> tuple[tuple[int, ...], tuple[int, ...]]:
    ne, nb = ref.ne, ref.nb
    shape = (ne[3], ne[2], ne[1], ne[0] // ref.dtype.block_size, ref.dtype.type_size)
    return shape, (nb[3], nb[2], nb[1], nb[0], 1)


def _gather(ref: TensorRef) -> np.ndarray:
    """Return the window's bytes in logical order (blocks for block dtypes), as uint8."""
    if ref.n == 0:
        return np.zeros(0, dtype=np.uint8)
    assert ref.buffer is not None
    start, stop = ref.span()
    raw = np.frombuffer(ref.buffer.read(start, stop - start), dtype=np.uint8)
    shape, strides = _block_shape(ref)
    view = np.lib.stride_tricks.as_strided(
        raw[ref.offset - start :], shape, strides, writeable=False
    )
    return np.ascontiguousarray(view).reshape(-1)


def _read(ref: TensorRef) -> np.ndarray:
    """Return the window's logical values (float64, or int64 for integer dtypes)."""
    return convert.decode(_gather(ref), ref.dtype).reshape(numpy_shape(ref.ne))


def _scatter(ref: TensorRef, packed: np.ndarray) -> None:
    """Write logical-order packed bytes into the window through its strides."""
    if ref.n == 0:
        return
    buffer = ref.buffer
    assert buffer is not None
    if ref.contiguous:
        buffer.write(ref.offset, packed.tobytes())
        return
    shape, strides = _block_shape(ref)
    start, stop = ref.span()
    if isinstance(buffer, ReferenceBuffer):
        base = np.frombuffer(buffer.data, dtype=np.uint8)
        span, shift = base, ref.offset
    else:
        span, shift = (
            np.frombuffer(bytearray(buffer.read(start, stop - start)), np.uint8),
            ref.offset - start,
        )
    window = np.lib.stride_tricks.as_strided(span[shift:], shape, strides, writeable=True)
    window[...] = packed.reshape(shape)
    if not isinstance(buffer, ReferenceBuffer):
        buffer.write(start, span.tobytes())
