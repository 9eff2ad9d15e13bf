"""Matrix products: ``mulmat``, ``mulmat_full_prec``, ``mulmat_id`` (SEMANTICS §5.4).

A weight held in MLX affine form (GGUF Q4_0/Q8_0 repacked at upload) multiplies with
``mx.quantized_matmul`` / ``mx.gather_qmm`` and is never dequantised; another quantised weight
multiplies with its F16 copy made at upload. Every other ``a`` is read as F32 values and
multiplied with ``mx.matmul`` / ``mx.gather_mm`` (F32 accumulation, which also satisfies
``mulmat_full_prec``). The batch broadcast of ``a`` is a block repeat (grouped-query attention):
``b``'s batch dims are reshaped to ``(a.ne3, r3, a.ne2, r2·N)`` so that broadcasting reuses each
``a`` matrix without copying it.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx

from mlplug.device import Node, TensorRef
from mlplug_metal.kernels.movement import clipped_ids
from mlplug_metal.kernels.quant import AffineWeight, DenseWeight, held, load, raw, store

__all__ = ["KERNELS", "product"]


def _affine(ref: TensorRef) -> AffineWeight | None:
    found = held(ref)
    if found is not None and found[1] and isinstance(found[0], AffineWeight):
        return found[0]
    return None


def _values(ref: TensorRef) -> mx.array:
    """F32 values of a weight operand; a whole DenseWeight gives its F16 copy (no dequantising)."""
    found = held(ref)
    if found is not None and found[1] and isinstance(found[0], DenseWeight):
        return found[0].data.astype(mx.float32)
    return load(ref)


def product(a_ref: TensorRef, b: mx.array) -> mx.array:
    """Return ``b @ rep(a)ᵀ`` in numpy order, ``(b3, b2, N, M)`` F32.

    Args:
        a_ref: The ``(a3, a2, M, K)`` operand (any WEIGHT dtype, possibly a held weight).
        b: ``(b3, b2, N, K)`` F32 with ``a3 | b3`` and ``a2 | b2``.
    """
    a3, a2, m = a_ref.ne[3], a_ref.ne[2], a_ref.ne[1]
    b3, b2, n, k = b.shape
    r3, r2 = b3 // a3, b2 // a2
    lhs = b.reshape(a3, r3, a2, r2 * n, k)
    weight = _affine(a_ref)
    if weight is not None:
        out = mx.quantized_matmul(
            lhs,
            weight.wq.reshape(a3, 1, a2, m, -1),
            weight.scales.reshape(a3, 1, a2, m, -1),
            weight.biases.reshape(a3, 1, a2, m, -1),
            transpose=True,
            group_size=weight.group_size,
            bits=weight.bits,
        )
    else:
        a = _values(a_ref).reshape(a3, 1, a2, m, k)
        out = mx.matmul(lhs, mx.swapaxes(a, -1, -2))
    return out.reshape(b3, b2, n, m)


def mulmat(node: Node) -> None:
    """``out[m, n, i2, i3] = Σ_k a[k, m, i2 // r2, i3 // r3] · b[k, n, i2, i3]``."""
    if node.out.n == 0:
        return
    store(node.out, product(node.operand(0), load(node.operand(1))))


def mulmat_id(node: Node) -> None:
    """``out[:, e, t] = as_[:, :, ids[e, t]]ᵀ · b[:, e % n_b, t]`` (expert ``ids[e, t]``)."""
    if node.out.n == 0:
        return
    experts, b_ref, ids_ref = node.operand(0), node.operand(1), node.operand(2)
    ids = clipped_ids(raw(ids_ref)[0, 0], experts.ne[2])  # (T, n_used)
    tokens, n_used = ids.shape
    b = load(b_ref)[0]  # (T, n_b, K)
    slots = mx.arange(n_used) % b.shape[1]
    x = b[:, slots][:, :, None, :]  # (T, n_used, 1, K): the b column of each slot
    weight = _affine(experts)
    if weight is not None:
        rows = experts.ne[1]
        out = mx.gather_qmm(
            x,
            weight.wq.reshape(-1, rows, weight.wq.shape[-1]),
            weight.scales.reshape(-1, rows, weight.scales.shape[-1]),
            weight.biases.reshape(-1, rows, weight.biases.shape[-1]),
            rhs_indices=ids,
            transpose=True,
            group_size=weight.group_size,
            bits=weight.bits,
        )
    else:
        w = _values(experts)[0]  # (n_expert, rows, K)
        out = mx.gather_mm(x, mx.swapaxes(w, -1, -2), rhs_indices=ids)
    store(node.out, out.reshape(1, tokens, n_used, -1))


KERNELS: dict[str, Callable[[Node], None]] = {
    "mulmat": mulmat,
    "mulmat_full_prec": mulmat,
    "mulmat_id": mulmat_id,
}
