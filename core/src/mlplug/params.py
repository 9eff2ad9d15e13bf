"""Value types a caller passes in: ``BackendParams`` (§6.2) and ``CacheConfig`` (§8.1)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Protocol, runtime_checkable

from mlplug.dtype import DType

__all__ = ["MAX_THREADS", "BackendCacheConfig", "BackendParams", "CacheConfig"]

MAX_THREADS = 4096
"""Largest ``num_threads`` accepted: more is a typo or an overflow (2^32 + 1 wraps to 1 in C)."""
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True, slots=True)
class BackendParams:
    """How a backend is built: threads, GPU offload and attention flavour.

    Every field is checked at construction: a wrong type raises ``TypeError`` and a value out
    of range ``ValueError``, each naming the field (SEMANTICS §6.2).

    Attributes:
        num_threads: CPU threads, ``0 … MAX_THREADS``; 0 means the plugin's default.
        num_gpu_layers: Layers to offload, last repeating blocks first (§6.4); ≤ 0 means none.
            A 32-bit int.
        main_gpu: Index (≥ 0) of the GPU that holds the output layer and gathered results.
        tensor_split: Relative share of offloaded layers per GPU, numbers ≥ 0 (any iterable,
            stored as a tuple of floats); empty or all zeros means by free memory.
        flash_attention: Use fused flash attention (changes ``cache_config()``); a bool.
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
        for name, low, high in _INT_FIELDS:
            object.__setattr__(self, name, _check_int(name, getattr(self, name), low, high))
        for flag in ("flash_attention", "cpu_fallback"):
            value = getattr(self, flag)
            if not isinstance(value, bool):
                raise TypeError(
                    f"BackendParams: {flag} must be a bool, got {type(value).__name__} {value!r}"
                )
        split = self.tensor_split
        if isinstance(split, (str, bytes)) or not isinstance(split, Iterable):
            raise TypeError(
                "BackendParams: tensor_split must be a sequence of numbers (e.g. (3, 1)), got "
                f"{type(split).__name__} {split!r}"
            )
        values: list[float] = []
        for x in split:
            if isinstance(x, bool) or not isinstance(x, Real):
                raise TypeError(
                    "BackendParams: tensor_split entries must be numbers, got "
                    f"{type(x).__name__} {x!r}"
                )
            value = float(x)
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"BackendParams: tensor_split entries must be finite and >= 0, got {x}"
                )
            values.append(value)
        object.__setattr__(self, "tensor_split", tuple(values))


_INT_FIELDS = (
    ("num_threads", 0, MAX_THREADS),
    ("num_gpu_layers", _INT32_MIN, _INT32_MAX),
    ("main_gpu", 0, _INT32_MAX),
)


def _check_int(name: str, value: object, low: int, high: int) -> int:
    """Return ``value`` as an int; ``TypeError`` if it is not one (or a bool), ``ValueError``
    outside ``low … high``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(
            f"BackendParams: {name} must be an int, got {type(value).__name__} {value!r}"
        )
    if not low <= int(value) <= high:
        raise ValueError(f"BackendParams: {name} must be in {low}..{high}, got {value}")
    return int(value)


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
