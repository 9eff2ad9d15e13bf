"""Linear, embedding and normalisation layers over weight tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlplug.errors import ModelFileError, ShapeError

if TYPE_CHECKING:
    from mlplug.backend import Backend
    from mlplug.context import Context
    from mlplug.tensor import Tensor

__all__ = ["Embedding", "LayerNorm", "Linear", "RMSNorm", "model_source", "require"]


def model_source(backend: Backend) -> str:
    """Return the model file of ``backend`` for messages (``"the model"`` when unknown)."""
    path = getattr(backend, "model_path", None)
    return str(path) if path else "the model"


def require(backend: Backend, name: str) -> Tensor:
    """Return the weight ``name`` of ``backend``.

    Raises:
        ModelFileError: The file has no such tensor (the message names the file and tensor).
    """
    t = backend.get(name)
    if t is None:
        raise ModelFileError(f"[model] {model_source(backend)}: no tensor {name!r}")
    return t


@dataclass(frozen=True, slots=True)
class Linear:
    """``y = W x + b``: weight ggml ``[in, out]`` (one row of ``in`` values per output).

    Attributes:
        weight: The ``[in, out]`` weight (any weight dtype).
        bias: An optional ``[out]`` bias.
    """

    weight: Tensor
    bias: Tensor | None = None

    @classmethod
    def from_backend(cls, backend: Backend, prefix: str, bias: bool | None = False) -> Linear:
        """Load ``prefix.weight`` and, as ``bias`` says, ``prefix.bias``.

        Args:
            backend: The model's backend.
            prefix: Tensor name without ``.weight``/``.bias``.
            bias: ``True``: the bias is required; ``False``: none is used; ``None``: used when the
                file has it.
        """
        weight = require(backend, prefix + ".weight")
        b = None
        if bias is None:
            b = backend.get(prefix + ".bias")
        elif bias:
            b = require(backend, prefix + ".bias")
        return cls(weight, b)

    @property
    def in_features(self) -> int:
        """The input width (``weight.dim(0)``)."""
        return self.weight.dim(0)

    @property
    def out_features(self) -> int:
        """The output width (``weight.dim(1)``)."""
        return self.weight.dim(1)

    def __call__(self, ctx: Context, x: Tensor) -> Tensor:
        """Return ``W x (+ b)`` for ``x`` ``[in, T, …]`` → ``[out, T, …]`` (F32)."""
        y = self.weight.mulmat(ctx, x)
        return y if self.bias is None else y.add(ctx, self.bias)


@dataclass(frozen=True, slots=True)
class Embedding:
    """Token embedding: a table ggml ``[dim, vocab]`` gathered by I32 ids."""

    weight: Tensor

    def __call__(self, ctx: Context, ids: Tensor) -> Tensor:
        """Return the rows of ``ids`` ``[T]`` as ``[dim, T]`` F32."""
        return self.weight.rows(ctx, ids)


@dataclass(frozen=True, slots=True)
class RMSNorm:
    """``x / sqrt(mean(x²) + eps) · w`` along dim 0, optionally plus a residual.

    Attributes:
        weight: ``[n]`` or ``None``.
        eps: Added to the mean square.
        fused: With a residual, record the optional fused ``rms_norm_add`` op (one node);
            ``False`` records ``rms_norm`` then ``add`` (ops of SEMANTICS §5 only).
    """

    weight: Tensor | None
    eps: float
    fused: bool = True

    def __call__(self, ctx: Context, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """Return the normalised ``x`` (same shape), plus ``residual`` when given."""
        if self.weight is not None and self.weight.dim(0) != x.dim(0):
            raise ShapeError(
                f"[RMSNorm] weight has {self.weight.dim(0)} values, input rows {x.dim(0)}"
            )
        if residual is None:
            return x.rms_norm(ctx, self.weight, self.eps)
        if self.fused:
            return x.rms_norm_add(ctx, self.weight, residual, self.eps)
        return x.rms_norm(ctx, self.weight, self.eps).add(ctx, residual)


@dataclass(frozen=True, slots=True)
class LayerNorm:
    """``(x − μ) / sqrt(σ² + eps) · w + b`` along dim 0."""

    weight: Tensor | None
    bias: Tensor | None
    eps: float

    def __call__(self, ctx: Context, x: Tensor) -> Tensor:
        """Return the normalised ``x`` (same shape)."""
        return x.layer_norm(ctx, self.weight, self.bias, self.eps)
