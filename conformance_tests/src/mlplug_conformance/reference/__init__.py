"""The float64 reference: the meaning of every op of ``mlplug.ops.OPS`` in plain numpy.

:func:`evaluate` works on **logical values** in numpy order: every operand is a 4-D array shaped
``(ne3, ne2, ne1, ne0)``, float64 for float and block dtypes, int64 for integer dtypes (see
:mod:`mlplug_conformance.convert`). It returns the exact result *before* rounding to the result
dtype, shaped like ``out_meta``; callers round with :func:`~mlplug_conformance.convert.round_to`.
``params`` are the normalised parameters the ops table records on a node (``OpDef.infer``).

The code follows SEMANTICS §5 literally and shares nothing with any plugin (plugins may not
import it either). The view ops are defined on bytes; here they act on the logical values of a
conceptually contiguous receiver, see :mod:`.movement`.

Modules mirror the plugins' ``kernels/`` files: :mod:`.elementwise`, :mod:`.reduce`,
:mod:`.movement`, :mod:`.matmul`, :mod:`.conv`, :mod:`.attention`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlplug.ops import Meta

from . import attention, conv, elementwise, matmul, movement, reduce
from ._common import Kernel, numpy_shape

__all__ = ["KERNELS", "evaluate", "numpy_shape"]

KERNELS: Mapping[str, Kernel] = {
    **elementwise.KERNELS,
    **reduce.KERNELS,
    **movement.KERNELS,
    **matmul.KERNELS,
    **conv.KERNELS,
    **attention.KERNELS,
}
"""The reference of every op, by op name (a test checks it covers ``OPS``)."""


def evaluate(
    op: str,
    srcs: Sequence[np.ndarray | None],
    params: Mapping[str, Any],
    out_meta: Meta,
) -> np.ndarray:
    """Return the exact logical result of ``op`` (float64, or int64 for integer results).

    Args:
        op: Name in ``mlplug.ops.OPS``.
        srcs: Operand values in the order of the op's ``operands`` (``None`` for an absent
            optional operand); each 4-D in numpy order.
        params: The normalised parameters (``OpDef.infer(...).params``).
        out_meta: The result's layout; the returned array has shape ``numpy_shape(out_meta.ne)``.

    Raises:
        KeyError: ``op`` has no reference.
        IndexError: Gather indices out of range (``rows``, ``mulmat_id``).
    """
    kernel = KERNELS[op]
    arrays = [None if s is None else np.asarray(s) for s in srcs]
    with np.errstate(all="ignore"):
        result = np.asarray(kernel(arrays, params, out_meta))
    shape = numpy_shape(out_meta.ne)
    # The kernels derive their result's shape from the semantics; it must agree with the ops
    # table's rule (zero-element results are stored as [0, 1, 1, 1] whatever their shape).
    if (result.size or int(np.prod(shape))) and result.shape != shape:
        raise ValueError(f"[reference] {op}: result shape {result.shape}, the rule says {shape}")
    return result.reshape(shape)
