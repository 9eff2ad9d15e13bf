"""The CUDA devices on cupy (or emulated with numpy), and the backend's device list.

One :class:`CudaDevice` per GPU (``CUDA0``, ``CUDA1``…, id the GPU's UUID), after the host CPU
device of ``mlplug-cpu``. Buffers are flat ``uint8`` cupy arrays from cupy's memory pool (one
pool per GPU); kernels view them through each :class:`~mlplug.device.TensorRef`'s strides
(:mod:`mlplug_cuda.kernels`) and run on the device's own stream.

Memory: ``total_memory``/``free_memory`` come from the CUDA runtime (``cudaMemGetInfo``; the
pool's cached free blocks count as free). A cap per device (``MLPLUG_CUDA_MEMORY_LIMIT=SIZE`` or
:meth:`CudaDevice.set_memory_limit`) bounds the bytes allocated and not yet freed; past it, or
when cupy raises ``OutOfMemoryError``, ``alloc`` raises :class:`~mlplug.device.DeviceOutOfMemory`
(the engine's ``ErrNoMem``). Kernel temporaries that run out of memory do the same from
``execute``. A CUDA error inside a kernel becomes :class:`CudaKernelError` naming the op and the
device; ``close`` still releases everything.

Transfers between two GPUs are peer copies (:class:`~mlplug.device.SupportsDirectCopy`).

Emulation (``MLPLUG_CUDA_EMULATE=N``): ``N`` devices named ``CUDA0``… with ids ``emulated-0``…,
numpy arrays in host memory and the numpy twins of the CUDA C kernels (:mod:`mlplug_cuda.xp`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from mlplug.device import (
    AccountedBuffer,
    BackendParams,
    Buffer,
    CacheConfig,
    CappedAllocator,
    Device,
    DeviceOutOfMemory,
    DType,
    Node,
    Release,
    host_memory,
    parse_size,
)
from mlplug_cpu.device import load as load_cpu
from mlplug_cuda.graphs import GraphReplay
from mlplug_cuda.kernels import KERNELS
from mlplug_cuda.kernels.quant import DECODED, ENCODED
from mlplug_cuda.plugin import emulated_gpus
from mlplug_cuda.xp import ArrayApi, emulation, gpu

__all__ = [
    "ALIGNMENT",
    "ENV_GRAPHS",
    "ENV_MEMORY_LIMIT",
    "CudaBuffer",
    "CudaDevice",
    "CudaKernelError",
    "EmulatedCudaError",
    "load",
]

ENV_MEMORY_LIMIT = "MLPLUG_CUDA_MEMORY_LIMIT"
"""Cap on each CUDA device (``512MiB``, ``2G``)."""
ENV_GRAPHS = "MLPLUG_CUDA_GRAPHS"
"""``1`` replays repeated graphs with CUDA graphs (off by default until checked on a GPU)."""
ALIGNMENT = 256

_FLASH = CacheConfig(
    cache_padding=256, permuted_v=False, mask_dtype=DType.F16, mask_batch_padding=0
)
_NO_FLASH = CacheConfig(
    cache_padding=32, permuted_v=True, mask_dtype=DType.OTHER, mask_batch_padding=0
)

# Ops that move stored bytes unchanged: any dtype works, decodable or not.
_BYTE_OPS = frozenset({"contiguous", "duplicate", "set", "pad", "concat", "stack", "repeat"})


class CudaKernelError(RuntimeError):
    """A CUDA error raised inside a kernel; the message names the op and the device."""


class EmulatedCudaError(RuntimeError):
    """What the emulation treats as a CUDA error (tests raise it to check the wrapping)."""


class CudaBuffer(AccountedBuffer):
    """Device memory: a flat ``uint8`` array (:attr:`data`) of ``nbytes``.

    Range checks and giving the bytes back come from :class:`~mlplug.device.AccountedBuffer`.

    Attributes:
        api: The array API of the device.
        device_index: The GPU's index (for kernels compiled per device).
    """

    __slots__ = ("_on_stream", "api", "data", "device_index")

    def __init__(self, device: CudaDevice, data: Any, nbytes: int, release: Release) -> None:
        super().__init__(device.name, nbytes, release)
        self._on_stream = device.on_stream
        self.api = device.api
        self.device_index = device.index
        self.data = data

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Copy host bytes into the buffer at ``offset``."""
        src = np.frombuffer(memoryview(data).cast("B"), np.uint8)
        self.check(offset, src.size)
        if src.size:
            if self.api.emulated:
                self.data[offset : offset + src.size] = src
            else:
                # On the device's stream, so that kernels queued after it see the bytes (the
                # stream does not synchronise with the legacy default stream).
                with self._on_stream():
                    self.data[offset : offset + src.size].set(src)

    def read(self, offset: int, n: int) -> bytes:
        """Return ``n`` bytes starting at ``offset`` (waiting for the device's work)."""
        self.check(offset, n)
        with self._on_stream():  # ordered after the device's queued kernels; blocks until done
            return self.api.asnumpy(self.data[offset : offset + n]).tobytes()

    def _drop(self) -> None:
        self.data = self.api.xp.zeros(0, np.uint8)  # back to cupy's pool


class CudaDevice(CappedAllocator[CudaBuffer]):
    """One GPU (or an emulated one): kind ``"gpu"``, name ``CUDA<index>``.

    Args:
        api: The array API (cupy, or numpy under emulation).
        index: The GPU's CUDA index.
        memory_limit: Cap in bytes on memory allocated and not yet freed; ``None`` = none.
        graphs: Replay repeated batches with CUDA graphs (:mod:`mlplug_cuda.graphs`).
    """

    __slots__ = (
        "_stream",
        "alignment",
        "api",
        "direct_copies",
        "gpu_name",
        "id",
        "index",
        "kind",
        "name",
        "replay",
    )

    def __init__(
        self,
        api: ArrayApi,
        index: int,
        *,
        memory_limit: int | None = None,
        graphs: bool = False,
    ) -> None:
        self.api = api
        self.index = index
        self.name = f"CUDA{index}"
        self.kind = "gpu"
        self.alignment = ALIGNMENT
        super().__init__(memory_limit)
        self.direct_copies = 0
        self._stream: Any = None
        if api.emulated:
            self.id, self.gpu_name = f"emulated-{index}", "emulated"
        else:
            with api.xp.cuda.Device(index):
                props = api.xp.cuda.runtime.getDeviceProperties(index)
                self.gpu_name = props["name"].decode(errors="replace")
                uuid = props.get("uuid", b"")
                self.id = _format_uuid(uuid) if uuid else f"cuda-{index}"
                self._stream = api.xp.cuda.Stream(non_blocking=True)
        self.replay = GraphReplay(api, self._stream, self._run) if graphs else None

    def __repr__(self) -> str:
        return f"CudaDevice({self.name}, {self.gpu_name!r}, limit={self._memory_limit})"

    @contextmanager
    def on_stream(self) -> Iterator[None]:
        """Make this GPU and its stream current while the block runs (nothing under emulation)."""
        if self._stream is None:
            yield
            return
        with self.api.xp.cuda.Device(self.index), self._stream:
            yield

    # -- memory ---------------------------------------------------------------------------------

    def _hardware_memory(self) -> tuple[int, int]:
        """Return ``(total, free)`` of the GPU (the host's memory under emulation)."""
        if self.api.emulated:
            return host_memory()
        cp = self.api.xp
        with cp.cuda.Device(self.index):
            free, total = cp.cuda.runtime.memGetInfo()
            cached = cp.get_default_memory_pool().free_bytes()
        return int(total), int(free) + int(cached)

    def _cuda_errors(self) -> tuple[type[BaseException], ...]:
        if self.api.emulated:
            return (EmulatedCudaError,)
        cp = self.api.xp
        return (cp.cuda.runtime.CUDARuntimeError, cp.cuda.driver.CUDADriverError)

    def _alloc(self, nbytes: int, release: Release) -> CudaBuffer:
        # Zeroed bytes from cupy's pool; its OutOfMemoryError is a MemoryError, which the
        # CappedAllocator turns into DeviceOutOfMemory.
        if self.api.emulated:
            data = np.zeros(nbytes, np.uint8)
        else:
            with self.on_stream():
                data = self.api.xp.zeros(nbytes, np.uint8)
        return CudaBuffer(self, data, nbytes, release)

    # -- transfers (SupportsDirectCopy) --------------------------------------------------------

    def copy_from(
        self, src: Buffer, src_offset: int, dst: Buffer, dst_offset: int, nbytes: int
    ) -> bool:
        """Copy between two buffers of this plugin's GPUs without host bytes (a peer copy)."""
        if not isinstance(src, CudaBuffer) or not isinstance(dst, CudaBuffer):
            return False
        if src.api.emulated != dst.api.emulated:
            return False
        src.check(src_offset, nbytes)
        dst.check(dst_offset, nbytes)
        if nbytes:
            if self.api.emulated:
                dst.data[dst_offset : dst_offset + nbytes] = src.data[
                    src_offset : src_offset + nbytes
                ]
            else:
                runtime = self.api.xp.cuda.runtime
                runtime.memcpyPeerAsync(
                    dst.data.data.ptr + dst_offset,
                    dst.device_index,
                    src.data.data.ptr + src_offset,
                    src.device_index,
                    nbytes,
                    self._stream.ptr,
                )
        self.direct_copies += 1
        return True

    # -- attention (SupportsCacheConfig) --------------------------------------------------------

    def cache_config(self, flash_attention: bool) -> CacheConfig:
        """Return the cache layout: with flash attention, F16 K/V read directly by the kernel.

        Flash: standard V ``[Dv, Hkv, L]``, an F16 mask, padding 256 (the kernel's split).
        Without: the engine's default for the un-fused graph (permuted V, F32 mask).
        """
        return _FLASH if flash_attention else _NO_FLASH

    # -- execution ------------------------------------------------------------------------------

    def unsupported(self, node: Node) -> str | None:
        """Return why this device cannot run ``node`` (a dtype it cannot decode), or ``None``."""
        if node.op not in KERNELS:
            return f"[{self.name}] unknown op {node.op!r}"
        if node.op in _BYTE_OPS:
            return None
        srcs = [s for s in node.srcs if s is not None]
        if node.op == "copy" and srcs and srcs[0].dtype == node.out.dtype:
            return None
        for ref in srcs:
            if ref.dtype not in DECODED:
                return f"[{self.name}] {node.op}: cannot decode {ref.dtype.name} on the GPU"
        if node.out.dtype not in ENCODED:
            return f"[{self.name}] {node.op}: cannot write {node.out.dtype.name} on the GPU"
        return None

    def _run(self, nodes: Sequence[Node]) -> None:
        for node in nodes:
            kernel = KERNELS.get(node.op)
            if kernel is None:
                raise NotImplementedError(self.unsupported(node) or node.op)
            try:
                kernel(node)
            except MemoryError as err:  # cupy's OutOfMemoryError is one (a kernel's scratch)
                raise DeviceOutOfMemory(self.name, 0, self.free_memory()) from err
            except self._cuda_errors() as err:
                raise CudaKernelError(f"[{self.name}] {node.op}: CUDA error: {err}") from err

    def execute(self, nodes: Sequence[Node]) -> None:
        """Run the nodes' kernels in order on the device's stream (replayed when repeated)."""
        run = self.replay.execute if self.replay is not None else self._run
        with self.api.errstate(), self.on_stream():
            run(nodes)

    def synchronize(self) -> None:
        """Wait until everything submitted has finished.

        Raises:
            CudaKernelError: A kernel failed asynchronously.
        """
        if self._stream is None:
            return
        try:
            self._stream.synchronize()
        except self._cuda_errors() as err:
            raise CudaKernelError(f"[{self.name}] CUDA error while synchronising: {err}") from err

    def close(self) -> None:
        """Free every buffer still allocated and drop any captured graph."""
        if self.replay is not None:
            self.replay.reset()
        self.close_buffers()


def _format_uuid(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _env_size(variable: str) -> int | None:
    text = os.environ.get(variable, "").strip()
    if not text:
        return None
    try:
        return parse_size(text)
    except ValueError as err:
        raise ValueError(f"{variable}={text!r}: {err}") from err


def load(params: BackendParams) -> list[Device]:
    """Return the host CPU device (``mlplug-cpu``), then one device per GPU.

    Raises:
        RuntimeError: No GPU is visible to cupy (the probe normally says so first).
    """
    cap = _env_size(ENV_MEMORY_LIMIT)
    graphs = os.environ.get(ENV_GRAPHS, "").strip() == "1"
    emulated = emulated_gpus()
    if emulated is not None:
        api, count = emulation(), emulated
    else:
        api = gpu()
        count = api.xp.cuda.runtime.getDeviceCount()
        if count == 0:
            raise RuntimeError("[cuda] cupy sees no CUDA device")
    cpu = load_cpu(params)[0]
    gpus = [CudaDevice(api, i, memory_limit=cap, graphs=graphs) for i in range(count)]
    return [cpu, *gpus]
