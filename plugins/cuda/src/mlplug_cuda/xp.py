"""The array-module seam: cupy on a GPU, numpy standing in for it under emulation.

Every kernel of this plugin computes with ``api.xp`` — the ``cupy`` module on a real GPU, the
``numpy`` module when ``MLPLUG_CUDA_EMULATE=N`` (:mod:`mlplug_cuda.plugin`) presents ``N``
emulated GPUs (how CI, which has no GPU, runs the plugin's logic). The few things numpy and cupy
spell differently live here and nowhere else:

* a strided view over a buffer's bytes (``np.ndarray(buffer=…)`` vs ``cupy.ndarray(memptr=…)``);
* moving bytes to and from the host;
* a half-precision GEMM with F32 accumulation (cuBLAS through ``cupy.matmul``; its numpy twin
  accumulates in F32 and rounds the result to F16 as cuBLAS does);
* the CUDA C kernels (:mod:`mlplug_cuda.kernels.mmvq`, :mod:`mlplug_cuda.kernels.attention`):
  on a GPU they are compiled with NVRTC (``cupy.RawModule``) and launched; under emulation their
  numpy twins run instead.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ArrayApi", "emulation", "gpu"]


@dataclass(frozen=True, slots=True)
class ArrayApi:
    """What kernels compute with: an array module and the operations it spells its own way.

    Attributes:
        xp: The ``numpy`` or ``cupy`` module.
        emulated: Whether numpy stands in for cupy (the CUDA C kernels' numpy twins run).
    """

    xp: Any
    emulated: bool

    def view(
        self,
        data: Any,
        offset: int,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        strides: tuple[int, ...],
    ) -> Any:
        """Return a writable strided view of the flat ``uint8`` array ``data``.

        Raises:
            ValueError: The window reaches outside ``data`` (checked here because cupy does not).
        """
        lo, hi = offset, offset + dtype.itemsize
        for n, s in zip(shape, strides, strict=True):
            if n == 0:
                return self.xp.zeros(shape, dtype)
            if s < 0:
                lo += (n - 1) * s
            else:
                hi += (n - 1) * s
        if lo < 0 or hi > data.size:
            raise ValueError(
                f"[cuda] window [{lo}, {hi}) outside a {data.size}-byte buffer (shape {shape})"
            )
        if self.emulated:
            return np.ndarray(shape, dtype, buffer=data, offset=offset, strides=strides)
        return self.xp.ndarray(shape, dtype, memptr=data.data + offset, strides=strides)

    def asnumpy(self, array: Any) -> np.ndarray:
        """Return ``array`` as a host numpy array (synchronising a GPU)."""
        return np.asarray(array if self.emulated else self.xp.asnumpy(array))

    def asarray(self, host: np.ndarray) -> Any:
        """Return a host array on the device."""
        return host if self.emulated else self.xp.asarray(host)

    def errstate(self) -> AbstractContextManager[Any]:
        """Silence IEEE warnings (numpy only: GPUs do not warn)."""
        return np.errstate(all="ignore") if self.emulated else nullcontext()

    def argsort(self, x: Any) -> Any:
        """Return the indices sorting ``x`` along its last axis, stably (ties keep their order).

        cupy's argsort is stable and takes no ``kind`` argument; numpy's needs ``kind="stable"``.
        """
        if self.emulated:
            return np.argsort(x, axis=-1, kind="stable")
        return self.xp.argsort(x, axis=-1)

    def matmul_f16(self, x: Any, w: Any) -> Any:
        """Return ``x @ w`` for F16 operands: F32 accumulation, F16 result (cuBLAS's GEMM)."""
        if self.emulated:
            return np.matmul(x.astype(np.float32), w.astype(np.float32)).astype(np.float16)
        return self.xp.matmul(x, w)


def emulation() -> ArrayApi:
    """Return the numpy stand-in."""
    return ArrayApi(np, emulated=True)


def gpu() -> ArrayApi:
    """Return the cupy API (imports cupy).

    Raises:
        RuntimeError: cupy is installed but cannot be imported (e.g. a missing CUDA library).
    """
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError(f"[cuda] cupy is installed but cannot be imported: {err}") from err
    return ArrayApi(cupy, emulated=False)
