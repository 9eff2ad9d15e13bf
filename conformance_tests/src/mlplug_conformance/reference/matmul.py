"""Matrix products: ``mulmat``, ``mulmat_full_prec`` and ``mulmat_id`` (SEMANTICS §5.4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlplug.ops import Meta

from ._common import Kernel, values

__all__ = ["KERNELS", "block_repeat"]


def block_repeat(a: np.ndarray, batch: Sequence[int]) -> np.ndarray:
    """Return ``rep(A)``: ``a`` repeated block-wise (integer division) to the batch dims ``batch``.

    ``rep(A) = np.repeat(np.repeat(A, r3, axis=0), r2, axis=1)`` with ``r = b.ne / a.ne`` —
    grouped-query attention: query head ``h`` uses KV head ``h // r2`` (§5.4).
    """
    r3 = batch[0] // a.shape[0] if a.shape[0] else 0
    r2 = batch[1] // a.shape[1] if a.shape[1] else 0
    return np.repeat(np.repeat(a, r3, axis=0), r2, axis=1)


def _mulmat(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    a, b = srcs
    assert a is not None and b is not None
    av, bv = values(a), values(b)
    # out[m, n, i2, i3] = Σ_k a[k, m, i2 // r2, i3 // r3] · b[k, n, i2, i3]  ==  B @ rep(A)ᵀ
    return bv @ block_repeat(av, bv.shape[:2]).swapaxes(-1, -2)


def _mulmat_id(srcs: Sequence[np.ndarray | None], params: Mapping[str, Any], out: Meta) -> Any:
    as_, b, ids = srcs
    assert as_ is not None and b is not None and ids is not None
    experts = values(as_)[0]  # (n_expert, rows, K)
    tokens = values(b)[0]  # (T, n_b, K)
    chosen = np.asarray(ids, dtype=np.int64)[0, 0]  # (T, n_used)
    n_expert, n_b = experts.shape[0], tokens.shape[1]
    if chosen.size and (chosen.min() < 0 or chosen.max() >= n_expert):
        raise IndexError(f"mulmat_id: expert index out of range 0..{n_expert - 1}")
    t_count, n_used = chosen.shape
    result = np.zeros((t_count, n_used, experts.shape[1]))
    for t in range(t_count):
        for e in range(n_used):
            # out[:, e, t] = as_[:, :, ids[e, t]]ᵀ · b[:, e % n_b, t]
            result[t, e] = experts[chosen[t, e]] @ tokens[t, e % n_b]
    return result[None]


KERNELS: dict[str, Kernel] = {
    "mulmat": _mulmat,
    "mulmat_full_prec": _mulmat,
    "mulmat_id": _mulmat_id,
}
