"""``dump``: a tensor's logical values as text, for debugging models (SEMANTICS §9).

The layout is numpy's ``repr`` without column alignment: nested ``[…]`` in numpy order, fixed-point
floats with exactly ``precision`` decimals, and ``...`` summaries for large tensors. The text
formatting (:func:`format_array`) is pure so it can be tested without a backend; :func:`dump`
only reads the tensor through the public ``Tensor``/``Context`` API.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlplug.dtype import INT
from mlplug.dtype import round_f32 as _f32
from mlplug.errors import NotComputedError

if TYPE_CHECKING:
    from mlplug.context import Context
    from mlplug.tensor import Tensor

__all__ = ["DumpOptions", "dump", "format_array"]

UNSUPPORTED = "<unsupported>"
"""What :func:`dump` returns for a dtype the backend cannot convert to F32."""


@dataclass(frozen=True, slots=True)
class DumpOptions:
    """Options of :func:`dump`; pass them as ``dump(ctx, t, **dataclasses.asdict(opts))``.

    Attributes:
        precision: Decimals printed for every float.
        threshold: Tensors with more elements than this are summarised.
        edge_items: Items kept at each end of a summarised dimension.
    """

    precision: int = 4
    threshold: int = 1000
    edge_items: int = 3

    def __post_init__(self) -> None:
        _check_options(self.precision, self.threshold, self.edge_items)


def dump(
    ctx: Context,
    t: Tensor,
    *,
    precision: int = 4,
    threshold: int = 1000,
    edge_items: int = 3,
) -> str:
    """Return the logical values of ``t`` as nested-bracket text in numpy order.

    If ``t`` is not readable, this runs ``ctx.forward(t).compute(t)`` first, which executes the
    whole graph accumulated in ``ctx``'s family.

    Args:
        ctx: A context of ``t``'s backend, used to compute ``t`` when it is not readable.
        t: The tensor to print, in any layout and of any dtype.
        precision: Decimals printed for every float.
        threshold: Tensors with more elements than this are summarised with ``...``.
        edge_items: Items kept at each end of a summarised dimension.

    Returns:
        The text, or ``"<unsupported>"`` when the backend cannot convert ``t``'s dtype to F32.

    Raises:
        ValueError: An option is negative.
    """
    _check_options(precision, threshold, edge_items)
    integer = t.dtype() in INT
    try:
        values = _read(t, integer)
    except NotComputedError:
        ctx.forward(t).compute(t)
        try:
            values = _read(t, integer)
        except NotImplementedError:  # includes UnsupportedOpError
            return UNSUPPORTED
    except NotImplementedError:
        return UNSUPPORTED
    return format_array(
        values,
        tuple(reversed(t.shape())),
        integer=integer,
        precision=precision,
        threshold=threshold,
        edge_items=edge_items,
    )


def _read(t: Tensor, integer: bool) -> Sequence[float] | Sequence[int]:
    # numpy() keeps integer dtypes exact (I64 values do not survive a trip through F32); its
    # C-order ravel is the logical ggml order (dim 0 fastest).
    if integer:
        ids: list[int] = t.numpy().reshape(-1).tolist()
        return ids
    floats: list[float] = t.floats().tolist()
    return floats


def _check_options(precision: int, threshold: int, edge_items: int) -> None:
    for name, value in (
        ("precision", precision),
        ("threshold", threshold),
        ("edge_items", edge_items),
    ):
        if value < 0:
            raise ValueError(f"dump: {name} must be >= 0, got {value}")


def format_array(
    values: Sequence[float] | Sequence[int],
    shape: tuple[int, ...],
    *,
    integer: bool,
    precision: int = 4,
    threshold: int = 1000,
    edge_items: int = 3,
) -> str:
    """Format flat values as nested ``[…]`` text (the format of SEMANTICS §9).

    Args:
        values: The elements in C order of ``shape`` (for a tensor: ggml order, dim 0 fastest).
        shape: The array shape in numpy order (outermost first).
        integer: Print the values as base-10 integers instead of fixed-point floats.
        precision: Decimals printed for every float (of its F32 value).
        threshold: Arrays with more elements than this are summarised with ``...``.
        edge_items: Items kept at each end of a summarised dimension.

    Returns:
        The text; ``"[]"`` for an array without elements.

    Raises:
        ValueError: An option is negative, or ``values`` has the wrong length.
    """
    _check_options(precision, threshold, edge_items)
    n = math.prod(shape)
    if len(values) != n:
        raise ValueError(f"dump: {len(values)} values for shape {shape}")
    if n == 0:
        return "[]"
    if not shape:
        return _scalar(values[0], integer, precision)
    summarise = n > threshold
    rank = len(shape)
    # C-order strides in elements, to find the first element of each sub-array.
    strides = [1] * rank
    for i in range(rank - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]

    def level(axis: int, start: int) -> str:
        size = shape[axis]
        if summarise and size > 2 * edge_items:
            head: Sequence[int] = range(edge_items)
            tail: Sequence[int] = range(size - edge_items, size)
            elided = True
        else:
            head, tail, elided = range(size), range(0), False
        if axis == rank - 1:
            items = [_scalar(values[start + i], integer, precision) for i in (*head, *tail)]
            sep = after_ellipsis = ", "
        else:
            d = rank - axis  # dims of this level
            gap = "\n" * (d - 1) + " " * (rank - d + 1)
            items = [level(axis + 1, start + i * strides[axis]) for i in (*head, *tail)]
            sep, after_ellipsis = "," + gap, ", " + gap
        if not elided:
            return "[" + sep.join(items) + "]"
        parts = [sep.join(items[: len(head)]), sep.join(items[len(head) :])]
        text = "..." if not parts[0] else parts[0] + sep + "..."
        if parts[1]:
            text += after_ellipsis + parts[1]
        return "[" + text + "]"

    return level(0, 0)


def _scalar(v: float | int, integer: bool, precision: int) -> str:
    if integer:
        text = str(int(v))
    else:
        f = _f32(float(v))
        if math.isnan(f):
            text = "NaN"
        elif math.isinf(f):
            text = "+Inf" if f > 0 else "-Inf"
        else:
            text = format(f, f".{precision}f")
    return text if text.startswith("-") else " " + text
