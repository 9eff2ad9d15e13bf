"""Matrix products: ``mulmat``, ``mulmat_full_prec``, ``mulmat_id`` (SEMANTICS §5.4).

F16/BF16/quantised weights with packed rows go to the native kernels of
:mod:`mlplug_cpu.kernels.native` (F32 accumulation) when the C extension is built and enabled.
Otherwise the weight (any WEIGHT dtype) is dequantised to F32 once per execution and the product
runs in BLAS SGEMM (F32 accumulation, which also satisfies ``mulmat_full_prec``). The batch
broadcast of
``a`` is a block repeat (grouped-query attention): ``b``'s batch dims are reshaped to
``(a.ne3, r3, a.ne2, r2)`` so that numpy broadcasting reuses each ``a`` matrix without copying it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlplug.device import Node
from mlplug_cpu.kernels import native
from mlplug_cpu.kernels.movement import checked_ids
from mlplug_cpu.kernels.quant import decode, load, raw, reshaped_view

__all__ = ["KERNELS", "product"]


def _matmul_into(lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray) -> None:
    target = reshaped_view(
        out, (*np.broadcast_shapes(lhs.shape[:-2], rhs.shape[:-2]), lhs.shape[-2], rhs.shape[-1])
    )
    if target is not None:
        np.matmul(lhs, rhs, out=target)
    else:
        np.copyto(out, np.matmul(lhs, rhs).reshape(out.shape))


def product(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """Write ``b @ rep(a)ᵀ`` into ``out`` (numpy order; ``a`` block-repeated over b's batch).

    Args:
        a: ``(a3, a2, M, K)`` F32.
        b: ``(b3, b2, N, K)`` F32 with ``a3 | b3`` and ``a2 | b2``.
        out: ``(b3, b2, N, M)`` F32.
    """
    _, _, m, k = a.shape
    b3, b2, n, _ = b.shape
    with native.blas_threads(2 * b3 * b2 * n * m * k):
        _product(a, b, out)


def _product(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    a3, a2, m, k = a.shape
    b3, b2, n, _ = b.shape
    if a3 == a2 == 1:
        # One weight matrix for the whole batch: a single GEMM over every row of b.
        _matmul_into(b.reshape(b3 * b2 * n, k), a[0, 0].T, out)
        return
    r3, r2 = b3 // a3, b2 // a2
    lhs = b.reshape(a3, r3, a2, r2 * n, k)
    rhs = a.reshape(a3, 1, a2, m, k).swapaxes(-1, -2)
    _matmul_into(lhs, rhs, out)


def mulmat(node: Node) -> None:
    """``out[m, n, i2, i3] = Σ_k a[k, m, i2 // r2, i3 // r3] · b[k, n, i2, i3]``."""
    if node.out.n == 0:
        return
    a, b = node.operand(0), node.operand(1)
    if native.weight_product(a, b, node.out):
        return
    product(load(a), load(b), raw(node.out))


def mulmat_id(node: Node) -> None:
    """``out[:, e, t] = as_[:, :, ids[e, t]]ᵀ · b[:, e % n_b, t]``; only used experts decode."""
    if node.out.n == 0:
        return
    experts_ref, b_ref, ids_ref = node.operand(0), node.operand(1), node.operand(2)
    ids = checked_ids(raw(ids_ref)[0, 0], experts_ref.ne[2], "mulmat_id")  # (T, n_used)
    b = load(b_ref)[0]  # (T, n_b, K)
    n_used = ids.shape[1]
    rhs = b[:, np.arange(n_used) % b.shape[1]]  # (T, n_used, K): the b column of each slot
    stored = raw(experts_ref)[0]  # (n_expert, rows, K) elements or (…, blocks, S) bytes
    out = raw(node.out)[0]  # (T, n_used, rows)
    for expert in np.unique(ids):
        tokens, slots = np.nonzero(ids == expert)
        result = native.expert_product(experts_ref, int(expert), rhs[tokens, slots])
        if result is None:
            weight = decode(stored[expert], experts_ref.dtype)  # (rows, K)
            result = rhs[tokens, slots] @ weight.T
        out[tokens, slots] = result


KERNELS: dict[str, Callable[[Node], None]] = {
    "mulmat": mulmat,
    "mulmat_full_prec": mulmat,
    "mulmat_id": mulmat_id,
}
