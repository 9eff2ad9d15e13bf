"""The ``ScaledDotProductAttention`` protocol (SEMANTICS §8.7)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mlplug.context import Context
    from mlplug.tensor import Tensor

__all__ = ["ScaledDotProductAttention"]


@runtime_checkable
class ScaledDotProductAttention(Protocol):
    """A query tensor that can run fused attention over a key/value history."""

    def scaled_dot_product_attention(
        self, ctx: Context, key: Tensor, value: Tensor, mask: Tensor | None, scale: float
    ) -> Tensor:
        """Return ``softmax(scale · Kᵀ Q + mask) V`` per head (GQA), ``[Dv, H, T]`` F32."""
        ...
