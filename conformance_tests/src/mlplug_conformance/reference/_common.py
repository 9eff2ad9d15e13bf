"""Shared helpers of the reference kernels."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mlplug.ops import Meta

__all__ = ["Kernel", "numpy_shape", "tile", "values"]

Kernel = Callable[[Sequence["np.ndarray | None"], Mapping[str, Any], Meta], np.ndarray]
"""``kernel(srcs, params, out_meta) -> logical result``."""


def numpy_shape(ne: Sequence[int]) -> tuple[int, int, int, int]:
    """Return the numpy-order shape ``(ne3, ne2, ne1, ne0)`` of four ggml extents."""
    return (ne[3], ne[2], ne[1], ne[0])


def values(a: np.ndarray) -> np.ndarray:
    """Return ``a`` as float64 (integer operands of float ops convert numerically)."""
    return np.asarray(a, dtype=np.float64)


def tile(b: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Return ``np.tile(B, A.shape // B.shape)``: b repeated whole over ``shape`` (§5.2)."""
    reps = [0 if s == 0 else s // d for s, d in zip(shape, b.shape, strict=True)]
    return np.tile(b, reps)
