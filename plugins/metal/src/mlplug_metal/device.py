"""The ``Metal`` device on MLX, and the backend's device list (host CPU first).

The device computes with MLX on the Apple GPU (unified memory), or with MLX's CPU device when
``MLPLUG_METAL_DEVICE=cpu`` (how Linux CI runs it). Its buffers are :class:`MlxBuffer` objects,
its kernels build one lazy MLX graph per ``execute`` that is evaluated asynchronously and
waited for in ``synchronize`` (:mod:`mlplug_metal.kernels`).

Memory: ``total_memory`` is the GPU's recommended working set (unified memory; the machine's RAM
on MLX's CPU device), ``free_memory`` what remains of it after this device's allocations. A cap
(``MLPLUG_METAL_MEMORY_LIMIT=SIZE`` or :meth:`MlxDevice.set_memory_limit`) bounds the bytes
allocated and not yet freed: past it ``alloc`` raises :class:`~mlplug.device.DeviceOutOfMemory`,
which the engine turns into ``ErrNoMem`` (SEMANTICS §7.3). The cap is also given to MLX
(``mx.set_memory_limit``, process-wide; the previous limit is restored by ``close``).

Weights (:class:`~mlplug.device.SupportsWeightUpload`): GGUF Q4_0 and Q8_0 are repacked into
MLX affine quantisation (exactly) and multiplied with ``mx.quantized_matmul``; other quantised
GGUF types are dequantised to F16 at upload for products, their GGUF bytes kept for everything
else (exact ``rows``, copies and reads); F32/F16/BF16/integer weights are stored as they are.
:meth:`MlxDevice.weight_nbytes` reports the bytes really held.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx

from mlplug.device import (
    BackendParams,
    CacheConfig,
    CappedAllocator,
    Device,
    DeviceOutOfMemory,
    DType,
    Node,
    Release,
    TensorRef,
    env_size,
    host_memory,
)
from mlplug_cpu.device import load as load_cpu
from mlplug_metal.buffer import MlxBuffer
from mlplug_metal.kernels import KERNELS
from mlplug_metal.kernels.quant import AffineWeight, DenseWeight, buffer_of
from mlplug_metal.plugin import wanted_device

__all__ = ["ALIGNMENT", "ENV_MEMORY_LIMIT", "MlxDevice", "load"]

ENV_MEMORY_LIMIT = "MLPLUG_METAL_MEMORY_LIMIT"
ALIGNMENT = 32

_FLASH = CacheConfig(cache_padding=32, permuted_v=False, mask_dtype=DType.F16, mask_batch_padding=0)
_NO_FLASH = CacheConfig(
    cache_padding=32, permuted_v=True, mask_dtype=DType.OTHER, mask_batch_padding=0
)


class MlxDevice(CappedAllocator[MlxBuffer]):
    """The MLX device: kind ``"gpu"``, name ``Metal`` (also when running on MLX's CPU).

    Memory accounting and the cap come from :class:`~mlplug.device.CappedAllocator`; MLX takes
    memory lazily, so allocations are also refused past the device's free memory
    (``hardware_bound``).

    Args:
        mx_device: The MLX device computing (``mx.gpu`` or ``mx.cpu``).
        memory_limit: Cap in bytes on memory allocated and not yet freed; ``None`` = none.
    """

    __slots__ = ("_mlx_limit", "_pending", "alignment", "id", "kind", "mx_device", "name")

    hardware_bound = True

    def __init__(
        self, mx_device: mx.Device | mx.DeviceType, *, memory_limit: int | None = None
    ) -> None:
        self.name = "Metal"
        self.id = ""
        self.kind = "gpu"
        self.alignment = ALIGNMENT
        self.mx_device = mx_device
        self._pending: list[mx.array] = []
        self._mlx_limit: int | None = None  # MLX's limit before ours, to restore
        super().__init__()
        self.set_memory_limit(memory_limit)

    def __repr__(self) -> str:
        return f"MlxDevice({self.mx_device}, limit={self._memory_limit})"

    # -- memory (accounting and cap: CappedAllocator) --------------------------------------

    def set_memory_limit(self, limit: int | None) -> int | None:
        """Set the cap (``None`` removes it) and return the previous one.

        The cap also becomes MLX's memory limit (restored to MLX's own when removed). Memory
        already allocated stays allocated even past the new cap.
        """
        previous = super().set_memory_limit(limit)
        if limit is not None:
            old = mx.set_memory_limit(max(limit, 1))
            if self._mlx_limit is None:
                self._mlx_limit = old
        elif self._mlx_limit is not None:
            mx.set_memory_limit(self._mlx_limit)
            self._mlx_limit = None
        return previous

    def _device_memory(self) -> int:
        if self.mx_device == mx.gpu:
            info = (mx.device_info if hasattr(mx, "device_info") else mx.metal.device_info)()
            size = info.get("max_recommended_working_set_size") or info.get("memory_size")
            if isinstance(size, int) and size > 0:
                return size
        return host_memory()[0]

    def _hardware_memory(self) -> tuple[int, int]:
        total = self._device_memory()
        left = max(0, total - self.allocated)
        if self.mx_device == mx.cpu:
            left = min(left, host_memory()[1])
        return total, left

    def _alloc(self, nbytes: int, release: Release) -> MlxBuffer:
        # Zeroed bytes: MLX memory is taken as data is written.
        return MlxBuffer(self.name, nbytes, release, self._pending.append)

    # -- weights (SupportsWeightUpload) -----------------------------------------------------

    def weight_nbytes(self, dtype: DType, ne: tuple[int, int, int, int]) -> int:
        """Return the bytes held: affine Q4_0/Q8_0; GGUF bytes plus F16 for other block types."""
        n = ne[0] * ne[1] * ne[2] * ne[3]
        if dtype in (DType.Q4_0, DType.Q8_0):
            held = AffineWeight.nbytes(dtype, n)
        elif dtype.is_block:
            held = DenseWeight.nbytes(dtype, n)
        else:
            held = dtype.nbytes(n)
        # The engine addresses the weight with its GGUF layout: hold at least that many bytes.
        return max(held, dtype.nbytes(n))

    def upload_weight(self, ref: TensorRef, data: memoryview) -> None:
        """Store a weight's GGUF bytes in the device's form (see the module docstring)."""
        buffer = buffer_of(ref)
        dtype = ref.dtype
        stop = ref.offset + dtype.nbytes(ref.n)
        with mx.stream(self.mx_device):
            weight: AffineWeight | DenseWeight | None = None
            if dtype in (DType.Q4_0, DType.Q8_0):
                weight = AffineWeight.repack(dtype, ref.ne, data)
                if weight is not None:
                    mx.eval(weight.wq, weight.scales, weight.biases)
            elif dtype.is_block:
                weight = DenseWeight.dequantize(dtype, ref.ne, data)
                mx.eval(weight.gguf, weight.data)
            if weight is None:
                # Plain types, and Q4_0/Q8_0 whose bias would overflow F16: the GGUF bytes.
                buffer.write(ref.offset, data)
                self.synchronize()
            else:
                buffer.put_held(ref.offset, stop, weight)

    # -- attention (SupportsCacheConfig) ----------------------------------------------------

    def cache_config(self, flash_attention: bool) -> CacheConfig:
        """Return the cache layout for ``mx.fast.scaled_dot_product_attention``.

        With flash attention: V as ``[Dv, Hkv, L]`` rows (the fused kernel's layout), an F16 mask
        (half the bytes; it promotes exactly) and padding 32 (MLX needs no 256-cell blocks).
        Without: the engine's default for the un-fused graph (permuted V, F32 mask).
        """
        return _FLASH if flash_attention else _NO_FLASH

    # -- execution --------------------------------------------------------------------------

    def unsupported(self, node: Node) -> str | None:
        """Return ``None`` for every op of the ops table (MLX runs them all)."""
        if node.op in KERNELS:
            return None
        return f"[{self.name}] unknown op {node.op!r}"

    def execute(self, nodes: Sequence[Node]) -> None:
        """Build every node's MLX graph in order and start evaluating the results."""
        with mx.stream(self.mx_device):
            for node in nodes:
                kernel = KERNELS.get(node.op)
                if kernel is None:
                    raise NotImplementedError(self.unsupported(node) or node.op)
                kernel(node)
            if self._pending:
                mx.async_eval(*self._pending)  # type: ignore[no-untyped-call]

    def synchronize(self) -> None:
        """Wait until every result written so far is computed.

        Raises:
            DeviceOutOfMemory: MLX could not allocate what the graph needed.
        """
        pending, self._pending[:] = list(self._pending), []
        if not pending:
            return
        try:
            with mx.stream(self.mx_device):
                mx.eval(*pending)
        except RuntimeError as err:
            text = str(err).lower()
            if "memory" in text or "allocat" in text:
                raise DeviceOutOfMemory(self.name, 0, self.free_memory()) from err
            raise

    def close(self) -> None:
        """Free every buffer still allocated and give MLX its memory limit back."""
        self.close_buffers()
        self._pending.clear()
        self.set_memory_limit(None)


def load(params: BackendParams) -> list[Device]:
    """Return the host CPU device (``mlplug-cpu``), then the MLX device ``Metal``.

    Raises:
        RuntimeError: ``MLPLUG_METAL_DEVICE`` asks for the GPU and MLX has no Metal device.
    """
    where = wanted_device()
    if where == "gpu" and not mx.metal.is_available():
        raise RuntimeError(
            "[Metal] MLX reports no Metal GPU (set MLPLUG_METAL_DEVICE=cpu to "
            "run on MLX's CPU device)"
        )
    cpu = load_cpu(params)[0]
    metal = MlxDevice(mx.gpu if where == "gpu" else mx.cpu, memory_limit=env_size(ENV_MEMORY_LIMIT))
    return [cpu, metal]
