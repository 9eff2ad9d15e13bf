"""Matrix products: ``mulmat``, ``mulmat_full_prec``, ``mulmat_id`` (SEMANTICS §5.4).

* Decode-sized products with a quantised 2-D weight (at most 8 activation columns) run the mmvq
  kernels (:mod:`mlplug_cuda.kernels.mmvq`): integer dot products with 8-bit activations.
* Other products with F16 or quantised weights dequantise the weight to F16 into scratch and run
  one half-precision GEMM with F32 accumulation (cuBLAS through ``cupy.matmul``).
* F32 weights, BF16 weights and ``mulmat_full_prec`` run in F32.

The batch broadcast of ``a`` is a block repeat (grouped-query attention): ``b``'s batch dims are
reshaped to ``(a.ne3, r3, a.ne2, r2)`` so broadcasting reuses each ``a`` matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mlplug.device import DType, Node, TensorRef
from mlplug_cuda.kernels import mmvq
from mlplug_cuda.kernels.movement import checked_ids
from mlplug_cuda.kernels.quant import api_of, decode, load, raw, reshaped_view
from mlplug_cuda.xp import ArrayApi

__all__ = ["KERNELS", "product"]


def _matmul(api: ArrayApi, lhs: Any, rhs: Any, half: bool) -> Any:
    if half:
        return api.matmul_f16(lhs.astype(np.float16), rhs).astype(np.float32)
    return api.xp.matmul(lhs, rhs)


def _into(api: ArrayApi, result: Any, out: Any) -> None:
    target = reshaped_view(api, out, result.shape)
    if target is not None:
        api.xp.copyto(target, result)
    else:
        api.xp.copyto(out, result.reshape(out.shape))


def product(api: ArrayApi, a: Any, b: Any, out: Any) -> None:
    """Write ``b @ rep(a)ᵀ`` into ``out`` (numpy order; ``a`` block-repeated over b's batch).

    Args:
        api: The array API.
        a: ``(a3, a2, M, K)`` F32 or F16 (F16: the half-precision GEMM).
        b: ``(b3, b2, N, K)`` F32.
        out: ``(b3, b2, N, M)`` F32.
    """
    half = a.dtype == np.float16
    a3, a2, m, k = a.shape
    b3, b2, n, _ = b.shape
    if a3 == a2 == 1:
        _into(api, _matmul(api, b.reshape(b3 * b2 * n, k), a[0, 0].T, half), out)
        return
    r3, r2 = b3 // a3, b2 // a2
    lhs = b.reshape(a3, r3, a2, r2 * n, k)
    rhs = a.reshape(a3, 1, a2, m, k).swapaxes(-1, -2)
    _into(api, _matmul(api, lhs, rhs, half), out)


def _weight(api: ArrayApi, a: TensorRef, full_precision: bool) -> Any:
    """Return ``a`` as values for the GEMM: F16 (as stored, or dequantised into scratch) or F32."""
    if full_precision or not (a.dtype == DType.F16 or a.dtype.is_block):
        return load(a)
    if a.dtype == DType.F16:
        return raw(a)
    return decode(api, raw(a), a.dtype, np.float16)


def mulmat(node: Node) -> None:
    """``out[m, n, i2, i3] = Σ_k a[k, m, i2 // r2, i3 // r3] · b[k, n, i2, i3]``."""
    if node.out.n == 0:
        return
    api = api_of(node.out)
    a, b = node.operand(0), node.operand(1)
    if node.op == "mulmat" and mmvq.usable(a, b):
        k = b.ne[0]
        y = api.xp.ascontiguousarray(load(b).reshape(-1, k))
        device = getattr(node.out.buffer, "device_index", 0)
        _into(api, mmvq.mmvq(api, device, a, y), raw(node.out))
        return
    product(api, _weight(api, a, node.op == "mulmat_full_prec"), load(b), raw(node.out))


def mulmat_id(node: Node) -> None:
    """``out[:, e, t] = as_[:, :, ids[e, t]]ᵀ · b[:, e % n_b, t]``; only used experts decode.

    The ids are read back to the host to group the tokens of each expert.
    """
    if node.out.n == 0:
        return
    api = api_of(node.out)
    xp = api.xp
    experts_ref, b_ref, ids_ref = node.operand(0), node.operand(1), node.operand(2)
    ids = api.asnumpy(checked_ids(api, raw(ids_ref)[0, 0], experts_ref.ne[2], "mulmat_id"))
    b = load(b_ref)[0]  # (T, n_b, K)
    n_used = ids.shape[1]
    rhs = b[:, xp.asarray(np.arange(n_used) % b.shape[1])]  # (T, n_used, K)
    stored = raw(experts_ref)[0]
    out = raw(node.out)[0]  # (T, n_used, rows)
    for expert in np.unique(ids):
        tokens, slots = np.nonzero(ids == expert)
        t_idx, s_idx = xp.asarray(tokens), xp.asarray(slots)
        weight = decode(api, stored[int(expert)], experts_ref.dtype)  # (rows, K)
        out[t_idx, s_idx] = rhs[t_idx, s_idx] @ weight.T


KERNELS: dict[str, Callable[[Node], None]] = {
    "mulmat": mulmat,
    "mulmat_full_prec": mulmat,
    "mulmat_id": mulmat_id,
}
"""Product kernels by op name."""
