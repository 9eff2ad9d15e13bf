"""Quantised matrix-vector products for decode (``kernels/cuda/mmvq.cu``) and their numpy twins.

ggml-cuda's mmvq scheme: the activation columns are quantised to 8-bit blocks of 32
(:func:`quantize_q8_1`), then each weight row's integer codes are multiplied with them in
integer arithmetic (dp4a), 16 elements at a time, and scaled by the weight's sub-block scale,
the activation's block scale and, for types with a min, the activation sums. On a GPU the CUDA C
kernels run; under emulation (:mod:`mlplug_cuda.xp`) the twins below compute the same integer
sums with numpy, so CI checks the scheme's arithmetic through the conformance suite.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlplug.device import DType, TensorRef
from mlplug_cuda import compiler
from mlplug_cuda.kernels.quant import CODES, codes, raw
from mlplug_cuda.xp import ArrayApi

__all__ = ["MAX_COLS", "TYPES", "mmvq", "mmvq_twin", "quantize_q8_1_twin", "usable"]

MAX_COLS = 8
"""Activation columns one pass over the weights serves (``MAX_COLS`` in mmvq.cu)."""

TYPES: dict[DType, str] = {
    DType.Q4_0: "mmvq_q4_0",
    DType.Q4_1: "mmvq_q4_1",
    DType.Q5_0: "mmvq_q5_0",
    DType.Q5_1: "mmvq_q5_1",
    DType.Q8_0: "mmvq_q8_0",
    DType.Q2_K: "mmvq_q2_k",
    DType.Q3_K: "mmvq_q3_k",
    DType.Q4_K: "mmvq_q4_k",
    DType.Q5_K: "mmvq_q5_k",
    DType.Q6_K: "mmvq_q6_k",
}
"""Weight types with an mmvq kernel, and the kernel's name."""

_ROWS_PER_BLOCK = 4  # warps per thread block, one row each


def usable(a: TensorRef, b: TensorRef) -> bool:
    """Whether ``a.mulmat(b)`` can run as mmvq: one packed 2-D quantised weight, few columns."""
    return (
        a.dtype in TYPES
        and a.ne[2] == a.ne[3] == 1
        and a.nb[0] == a.dtype.type_size
        and b.ne[1] * b.ne[2] * b.ne[3] <= MAX_COLS
    )


def _roundf(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.sign(x) * np.floor(np.abs(x) + np.float32(0.5)))


def quantize_q8_1_twin(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(qy, dy, sy16)`` of ``y (N, K)`` F32 as ``quantize_q8_1`` computes them.

    ``qy`` int8 ``(N, K)``; ``dy`` F32 ``(N, K/32)`` (``max|y| / 127`` per 32); ``sy16`` int32
    ``(N, K/16)``, the sum of ``qy`` per 16 elements.
    """
    n, k = y.shape
    blocks = y.reshape(n, k // 32, 32)
    amax = np.abs(blocks).max(axis=-1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(amax[..., None] == 0, 0, _roundf(blocks / d[..., None])).astype(np.int8)
    sy16 = q.reshape(n, k // 16, 16).astype(np.int32).sum(axis=-1, dtype=np.int32)
    return q.reshape(n, k), d, sy16


def mmvq_twin(
    api: ArrayApi,
    blocks: np.ndarray,
    dtype: DType,
    qy: np.ndarray,
    dy: np.ndarray,
    sy16: np.ndarray,
) -> np.ndarray:
    """Return ``out (N, M)`` as the ``mmvq_<type>`` kernel computes it.

    Args:
        api: The numpy API.
        blocks: The weight's packed blocks ``(M, K / B, S)``.
        dtype: The weight type.
        qy, dy, sy16: The activation as :func:`quantize_q8_1_twin` returns it.
    """
    rows = blocks.shape[0]
    q, d, m = codes(api, blocks.reshape(-1, dtype.type_size), dtype)
    k = q.size // rows
    groups = k // 16
    q16 = q.reshape(rows, groups, 16).astype(np.int32)
    y16 = qy.reshape(-1, groups, 16).astype(np.int32)
    isum = np.einsum("rgk,ngk->nrg", q16, y16)  # exact integer dot per 16 elements
    per_sub = CODES[dtype].sub // 16  # 16-element groups per sub-block
    d16 = np.repeat(d.reshape(rows, -1), per_sub, axis=1)  # (M, K/16)
    m16 = np.repeat(m.reshape(rows, -1), per_sub, axis=1)
    dy16 = np.repeat(dy, 2, axis=1)  # (N, K/16)
    terms = dy16[:, None, :] * (
        d16[None] * isum.astype(np.float32) - m16[None] * sy16[:, None, :].astype(np.float32)
    )
    return np.asarray(terms.sum(axis=-1, dtype=np.float32))


def mmvq(api: ArrayApi, device: int, a: TensorRef, y: Any) -> Any:
    """Return ``y @ dequant(a).T`` as ``(N, M)`` F32 for ``y (N, K)`` F32 (contiguous).

    ``a`` must satisfy :func:`usable`.
    """
    xp = api.xp
    n, k = y.shape
    rows = a.ne[1]
    blocks = raw(a)[0, 0]  # (M, K / B, S)
    if api.emulated:
        qy, dy, sy16 = quantize_q8_1_twin(y)
        return mmvq_twin(api, blocks, a.dtype, qy, dy, sy16)
    qy = xp.empty((n, k), np.int8)
    dy = xp.empty((n, k // 32), np.float32)
    sy16 = xp.empty((n, k // 16), np.int32)
    quantize = compiler.function("mmvq.cu", "quantize_q8_1", device)
    quantize((k // 32, n), (32,), (y, np.int32(k), np.int32(n), qy, dy, sy16))
    out = xp.empty((n, rows), np.float32)
    kernel = compiler.function("mmvq.cu", TYPES[a.dtype], device)
    grid = ((rows + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK,)
    kernel(
        grid,
        (32 * _ROWS_PER_BLOCK,),
        (
            blocks,
            np.int64(a.nb[1]),
            np.int32(rows),
            np.int32(k),
            qy,
            dy,
            sy16,
            out,
            np.int32(n),
            np.int64(rows),
        ),
    )
    return out
