"""Weight products through the optional C extension :mod:`mlplug_cpu._native`.

The extension reads GGUF weight rows once per product, with the threads of its own pool (idle
workers sleep; see ``_native_pool.c``). Which path a product takes:

* block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), any ``N``: ``b`` is
  quantised once to int8 blocks of 32 and multiplied with integer dot products (AVX512-VNNI,
  AVX2 or portable C, picked by CPUID at import), in tiles of 4 weight rows x 4 ``b`` rows
  (with AVX512-VNNI, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q6_K: 16 weight rows x up to 8 ``b``
  rows on 512-bit registers, the weight's GGUF blocks transposed in registers so that each
  lane holds one weight row).
  SEMANTICS §5 allows the vec-dot format; the error is that of rounding ``b`` to 8 bits per
  32-block. A ``b`` holding inf or NaN takes the exact numpy path instead.
* F16/BF16 where AVX-512 is present (``wide_float()``), ``N <= WIDE_MAX_ROWS``: for ``N > 4``
  tiles of 4 weight rows x 6
  ``b`` rows on 512-bit registers, 16 weights at a time widened to F32 in registers and FMA'd
  (exact F32 arithmetic; no F32 copy of the weight); smaller ``N`` the row kernel below.
* F16/BF16 otherwise, ``N <= NATIVE_MAX_ROWS``: the float row kernel (each block decoded to
  F32 in registers and FMA'd; memory-bound decode).
* F16/BF16 otherwise, and above ``WIDE_MAX_ROWS``: the native decoder writes F32 rows into a
  scratch chunk of at most ``CHUNK_ELEMENTS`` and BLAS multiplies it (compute-bound prompt
  batches).
* F32 weights: BLAS directly (its GEMV is as fast as the native one), i.e. not handled here.

When the extension did not build, or ``MLPLUG_CPU_NATIVE=0`` is set when the device loads, every
product returns ``False`` and the caller's numpy path (decode the weight to F32, then BLAS) runs.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from mlplug.device import DType, TensorRef

__all__ = [
    "BLAS_PARALLEL_FLOPS",
    "ENV_NATIVE",
    "NATIVE_MAX_ROWS",
    "WIDE_MAX_ROWS",
    "active",
    "blas_threads",
    "configure",
    "configure_from_env",
    "expert_product",
    "extension",
    "host_array",
    "thread_count",
    "threads",
    "weight_product",
]

ENV_NATIVE = "MLPLUG_CPU_NATIVE"
# BLAS runs on one thread while a device executes, except for products of at least this many
# FLOPs (prompt-sized), which get the device's threads: OpenBLAS's workers busy-wait between
# calls and a small product waits for every worker, so on a busy machine multithreaded small
# BLAS calls were slower than one thread (issue #12.1).
BLAS_PARALLEL_FLOPS = 1 << 27
NATIVE_MAX_ROWS = 16
# F16/BF16 products with AVX-512 stay native up to this many rows of ``b``; above it OpenBLAS's
# packed SGEMM on a decoded chunk was faster (1 thread, loaded machine: 37 against 45 GFLOP/s
# at N=512; 38 against 34 at N=128, benchmarks/RESULTS.md).
WIDE_MAX_ROWS = 128
CHUNK_ELEMENTS = 1 << 22

_native: ModuleType | None
try:
    _native = importlib.import_module("mlplug_cpu._native")  # a C extension: no stub to check
except ImportError:  # built without a compiler: numpy kernels only
    _native = None

_INTEGER = frozenset(
    {
        DType.Q4_0,
        DType.Q4_1,
        DType.Q5_0,
        DType.Q5_1,
        DType.Q8_0,
        DType.Q2_K,
        DType.Q3_K,
        DType.Q4_K,
        DType.Q5_K,
        DType.Q6_K,
    }
)
_HANDLED = _INTEGER | {DType.F16, DType.BF16}
_enabled = _native is not None
_local = threading.local()


def configure(enabled: bool) -> None:
    """Use the native kernels (when built) if ``enabled``, else the numpy path only."""
    global _enabled
    _enabled = enabled and _native is not None


def configure_from_env() -> None:
    """Apply ``MLPLUG_CPU_NATIVE`` (``0`` turns the native kernels off)."""
    configure(os.environ.get(ENV_NATIVE, "1").strip() != "0")


def active() -> str:
    """Return the product path in use: ``"native-<isa>"`` (``avx512vnni``, ``avx2``,
    ``generic``) or ``"numpy"``."""
    if not _enabled or _native is None:
        return "numpy"
    return f"native-{_native.isa()}"


@contextmanager
def thread_count(n: int) -> Iterator[None]:
    """Run native kernels on ``n`` threads in this thread while the block runs (0 = default)."""
    previous = getattr(_local, "threads", 0)
    _local.threads = n
    try:
        yield
    finally:
        _local.threads = previous


def extension() -> ModuleType | None:
    """Return the C extension when it is built and switched on, else ``None``."""
    return _native if _enabled else None


def threads() -> int:
    """Return the native thread count :func:`thread_count` set in this thread (0 = default)."""
    return int(getattr(_local, "threads", 0))


def host_array(ref: TensorRef) -> np.ndarray | None:
    """Return the C-contiguous numpy bytes behind ``ref``'s buffer, or ``None``."""
    return _buffer(ref)


@functools.cache
def _blas_libraries() -> tuple[Any, ...]:
    # threadpoolctl's per-library controllers: setting their thread count is a direct C call
    # (~1 us), where ThreadpoolController.limit costs ~70 us per use.
    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


@contextmanager
def blas_threads(flops: int) -> Iterator[None]:
    """Give BLAS this thread's native thread count while the block runs, if ``flops`` is large.

    Outside such blocks the device keeps BLAS on one thread (see ``BLAS_PARALLEL_FLOPS``).
    """
    threads = getattr(_local, "threads", 0)
    if threads <= 1 or flops < BLAS_PARALLEL_FLOPS:
        yield
        return
    libraries = _blas_libraries()
    previous = [lib.num_threads for lib in libraries]
    for lib in libraries:
        lib.set_num_threads(threads)
    try:
        yield
    finally:
        for lib, count in zip(libraries, previous, strict=True):
            lib.set_num_threads(count)


def _buffer(ref: TensorRef) -> np.ndarray | None:
    data = getattr(ref.buffer, "data", None)
    return data if isinstance(data, np.ndarray) and data.flags.c_contiguous else None


def _weight_ok(ref: TensorRef) -> bool:
    if not _enabled or ref.dtype not in _HANDLED:
        return False
    unit = ref.dtype.type_size if ref.dtype.is_block else ref.dtype.nbytes(1)
    return ref.nb[0] == unit and min(ref.nb) >= 0 and _buffer(ref) is not None


def _rows(ref: TensorRef) -> tuple[np.ndarray, int, int] | None:
    """Return (buffer, offset, row stride) of an F32 ref whose rows are packed, else None."""
    data = _buffer(ref)
    if data is None or ref.dtype != DType.F32 or ref.nb[0] != 4 or min(ref.nb) < 0:
        return None
    return data, ref.offset, ref.nb[1]


def _product(
    dtype: DType,
    weight: np.ndarray,
    w_off: int,
    w_rs: int,
    m: int,
    k: int,
    x: np.ndarray,
    x_off: int,
    x_rs: int,
    out: np.ndarray,
    o_off: int,
    o_rs: int,
    n: int,
) -> bool:
    assert _native is not None
    threads = getattr(_local, "threads", 0)
    if n <= NATIVE_MAX_ROWS or dtype in _INTEGER or (n <= WIDE_MAX_ROWS and _native.wide_float()):
        return bool(
            _native.matmul(
                dtype.ggml_type,
                weight,
                w_off,
                w_rs,
                x,
                x_off,
                x_rs,
                out,
                o_off,
                o_rs,
                m,
                k,
                n,
                threads,
            )
        )
    xs = np.ndarray((n, k), np.float32, buffer=x, offset=x_off, strides=(x_rs, 4))
    os_ = np.ndarray((n, m), np.float32, buffer=out, offset=o_off, strides=(o_rs, 4))
    step = max(1, CHUNK_ELEMENTS // max(k, 1))
    scratch = np.empty((min(step, m), k), np.float32)
    for m0 in range(0, m, step):
        rows = min(step, m - m0)
        chunk = scratch[:rows]
        _native.dequantize(
            dtype.ggml_type, weight, w_off + m0 * w_rs, w_rs, chunk, 0, rows, k, threads
        )
        with blas_threads(2 * n * rows * k):
            np.matmul(xs, chunk.T, out=os_[:, m0 : m0 + rows])
    return True


def weight_product(a: TensorRef, b: TensorRef, out: TensorRef) -> bool:
    """Compute ``mulmat(a, b)`` into ``out`` natively; return ``False`` (nothing written) if not.

    Handles any batch broadcast (block repeat in dims 2 and 3) by one native call per 2-D slice,
    or one call for all rows when ``a`` is a single matrix and ``b``/``out`` rows are uniform.
    """
    if _native is None or not _weight_ok(a) or not _native.supported(a.dtype.ggml_type, a.ne[0]):
        return False
    src, dst = _rows(b), _rows(out)
    if src is None or dst is None:
        return False
    weight = _buffer(a)
    assert weight is not None
    (x, x_off, x_rs), (o, o_off, o_rs) = src, dst
    if _overlap(out, a) or _overlap(out, b):
        return False
    k, m = a.ne[0], a.ne[1]
    n, b2, b3 = b.ne[1], b.ne[2], b.ne[3]
    if a.ne[2] == a.ne[3] == 1 and _uniform(b) and _uniform(out):
        return _product(
            a.dtype, weight, a.offset, a.nb[1], m, k, x, x_off, x_rs, o, o_off, o_rs, n * b2 * b3
        )
    r2, r3 = b2 // a.ne[2], b3 // a.ne[3]
    for i3 in range(b3):
        for i2 in range(b2):
            w_off = a.offset + (i3 // r3) * a.nb[3] + (i2 // r2) * a.nb[2]
            done = _product(
                a.dtype, weight, w_off, a.nb[1], m, k,
                x, x_off + i3 * b.nb[3] + i2 * b.nb[2], x_rs,
                o, o_off + i3 * out.nb[3] + i2 * out.nb[2], o_rs, n,
            )  # fmt: skip
            if not done:  # b holds inf/NaN: the numpy path recomputes every slice
                return False
    return True


def _overlap(x: TensorRef, y: TensorRef) -> bool:
    """Whether the byte spans of two refs on one buffer intersect (conservative)."""
    if x.buffer is not y.buffer or x.n == 0 or y.n == 0:
        return False

    def span(ref: TensorRef) -> tuple[int, int]:
        unit = ref.dtype.type_size if ref.dtype.is_block else ref.dtype.nbytes(1)
        count = (ref.ne[0] // ref.dtype.block_size - 1, ref.ne[1] - 1, ref.ne[2] - 1, ref.ne[3] - 1)
        return ref.offset, ref.offset + sum(
            c * s for c, s in zip(count, ref.nb, strict=True)
        ) + unit

    (x0, x1), (y0, y1) = span(x), span(y)
    return x0 < y1 and y0 < x1


def _uniform(ref: TensorRef) -> bool:
    """Whether every row of ``ref`` (over dims 1..3) sits at one constant stride."""
    return (ref.ne[2] == 1 or ref.nb[2] == ref.ne[1] * ref.nb[1]) and (
        ref.ne[3] == 1 or ref.nb[3] == ref.ne[2] * ref.nb[2]
    )


def expert_product(experts: TensorRef, expert: int, x: np.ndarray) -> np.ndarray | None:
    """Return ``x @ experts[:, :, expert]ᵀ`` (``x`` F32 ``(T, K)``) natively, or ``None``."""
    if (
        _native is None
        or not _weight_ok(experts)
        or not _native.supported(experts.dtype.ggml_type, experts.ne[0])
    ):
        return None
    weight = _buffer(experts)
    assert weight is not None
    k, m = experts.ne[0], experts.ne[1]
    xs = np.ascontiguousarray(x, np.float32)
    out = np.empty((xs.shape[0], m), np.float32)
    done = _product(
        experts.dtype,
        weight,
        experts.offset + expert * experts.nb[2],
        experts.nb[1],
        m,
        k,
        xs,
        0,
        4 * k,
        out,
        0,
        4 * m,
        xs.shape[0],
    )
    return out if done else None
