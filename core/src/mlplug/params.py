"""Value types a caller passes in: ``BackendParams`` (§6.2) and ``CacheConfig`` (§8.1)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from mlplug.dtype import DType

__all__ = ["BackendCacheConfig", "BackendParams", "CacheConfig"]


@dataclass(frozen=True, slots=True)
class BackendParams:
    """How a backend is built: threads, GPU offload and attention flavour.

    Attributes:
        num_threads: CPU threads; 0 means the plugin's default. Negative raises ``ValueError``.
        num_gpu_layers: Layers to offload, last repeating blocks first (§6.4); ≤ 0 means none.
        main_gpu: Index of the GPU that holds the output layer and gathered results.
        tensor_split: Relative share of offloaded layers per GPU; empty means by free memory.
        flash_attention: Use fused flash attention (changes ``cache_config()``).
        cpu_fallback: Run a node that a GPU device declines on the CPU device (the default);
            when false such a node raises ``UnsupportedOpError`` naming the device and its
            reason (the conformance suite uses this to see what the device under test runs).
    """

    num_threads: int = 0
    num_gpu_layers: int = 0
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = field(default=())
    flash_attention: bool = False
    cpu_fallback: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.num_threads, bool) or int(self.num_threads) != self.num_threads:
            raise ValueError(f"BackendParams: num_threads must be an int, got {self.num_threads!r}")
        if self.num_threads < 0:
            raise ValueError(f"BackendParams: num_threads must be >= 0, got {self.num_threads}")
        object.__setattr__(self, "tensor_split", tuple(float(x) for x in self.tensor_split))
        for x in self.tensor_split:
            if not math.isfinite(x) or x < 0:
                raise ValueError(
                    f"BackendParams: tensor_split entries must be finite and >= 0, got {x}"
                )


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """How the KV cache lays out its storage and mask for a backend's attention.

    Attributes:
        cache_padding: Multiple for history length and cell count; 0 means 1.
        permuted_v: Store V as ``[cells, Dv, Hkv]``.
        mask_dtype: Mask element type; ``OTHER`` means F32.
        mask_batch_padding: Multiple for the mask's batch extent; 0 means 1.
    """

    cache_padding: int = 0
    permuted_v: bool = False
    mask_dtype: DType = DType.OTHER
    mask_batch_padding: int = 0


@runtime_checkable
class BackendCacheConfig(Protocol):
    """A backend that says how the KV cache should be laid out for its attention."""

    def cache_config(self) -> CacheConfig:
        """Return the cache layout this backend's attention expects."""
        ...
