"""Rotary position embeddings (RoPE): the fused ``rope`` op, or the contract's ops.

The rotation angles depend only on the token positions, which are known on the host when a batch
is built: :meth:`RoPE.tables` computes ``cos``/``sin`` of every (position, frequency) pair in
float64 with numpy and uploads them as two ``ctx.input()`` F32 tensors, shared by every layer that
uses the same frequency factors. :meth:`RoPE.__call__` then rotates the pairs of a ``[D, H, T]``
tensor. By default (``fused=True``) it records one ``rope`` node, the optional fused op the ops
table declares (tables ``[n/2, T]``; mode 0 normal, 2 neox) and every first-party plugin
implements. With ``fused=False`` it builds the same rotation from ops of SEMANTICS §5 only
(strided ``view``\\s, ``mul``, ``sub``, ``add`` and ``concat``, about ten nodes per call), for a
backend that lacks ``rope``:

* **normal** style (GGML's ``NORM``, llama): pairs ``(x[2i], x[2i+1])``. The even and odd elements
  are the views ``[1, n/2, H, T]`` with element stride ``2·S``; the rotated halves are concatenated
  on the new dim 0 (``[2, n/2, H, T]``, which interleaves them back) and reshaped to ``[n, H, T]``.
* **neox** style (GPT-NeoX, qwen2): pairs ``(x[i], x[i + n/2])``, the two contiguous halves.

With ``n = rope.dimension_count`` smaller than the head size, the remaining ``D − n`` values pass
through unchanged (concatenated after the rotated ones). The rotation of a pair by angle ``θ`` is
``(a cos θ − b sin θ, a sin θ + b cos θ)``, with, for frequency ``i`` of position ``p``,
``θ_ext = p · base^(−2i/n) / factor_i`` (``factor_i`` from the per-layer ``rope_freqs`` tensor,
else 1) and:

* no scaling: ``θ = θ_ext``;
* linear scaling: ``θ = freq_scale · θ_ext``;
* YaRN: ``θ = θ_int·(1 − r_i) + θ_ext·r_i`` with ``θ_int = freq_scale · θ_ext`` and the ramp
  ``r_i = ext_factor·(1 − clip((i − lo)/max(0.001, hi − lo), 0, 1))`` between the correction dims
  ``lo``, ``hi`` of ``beta_fast``/``beta_slow``; cos and sin are multiplied by
  ``attn_factor·(1 + 0.1·ln(1/freq_scale))``.

These are the formulas of ggml's ``rope_ext`` (llama.cpp), so GGUF models rotate as they were
trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlplug.errors import ShapeError

if TYPE_CHECKING:
    import numpy as np

    from mlplug.config import Config
    from mlplug.context import Context
    from mlplug.tensor import Tensor

__all__ = ["RoPE", "RopeConfig", "RopeTables"]


@dataclass(frozen=True, slots=True)
class RopeConfig:
    """How positions become rotation angles.

    Attributes:
        n_dims: Rotated values per head (``rope.dimension_count``); even.
        neox: Rotate the halves ``(x[i], x[i + n/2])`` (neox) instead of adjacent pairs.
        freq_base: ``rope.freq_base``.
        freq_scale: ``1 / rope.scaling.factor`` for linear and YaRN scaling, else 1.
        ext_factor: YaRN extrapolation mix (0 disables YaRN).
        attn_factor: Multiplier of cos and sin (YaRN magnitude correction).
        beta_fast: YaRN correction dimension parameter (fast).
        beta_slow: YaRN correction dimension parameter (slow).
        n_ctx_orig: The training context of the unscaled model (YaRN).
    """

    n_dims: int
    neox: bool = False
    freq_base: float = 10000.0
    freq_scale: float = 1.0
    ext_factor: float = 0.0
    attn_factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    n_ctx_orig: int = 0

    def __post_init__(self) -> None:
        if self.n_dims <= 0 or self.n_dims % 2:
            raise ShapeError(f"[RoPE] n_dims must be even and > 0, got {self.n_dims}")

    @classmethod
    def from_config(cls, config: Config, n_dims: int, *, neox: bool) -> RopeConfig:
        """Read ``rope.freq_base`` and ``rope.scaling.*`` from a model's metadata.

        Args:
            config: ``backend.config()``.
            n_dims: Rotated values per head when ``rope.dimension_count`` is absent.
            neox: The architecture's rotation style.

        Raises:
            ValueError: ``rope.scaling.type`` names a scaling this module does not implement, or
                ``rope.dimension_count`` is odd or larger than ``n_dims``.
        """
        n = config.uint("rope.dimension_count", n_dims)
        if n > n_dims or n % 2:  # a lying file would size the rotation tables by it
            raise ValueError(
                f"[RoPE] {config.key('rope.dimension_count')} = {n}, expected an even number "
                f"<= the head size {n_dims}"
            )
        base = config.float("rope.freq_base", 10000.0)
        kind = config.string("rope.scaling.type", "")
        factor = config.float("rope.scaling.factor", 0.0)
        if factor == 0.0:
            factor = config.float("rope.scale_linear", 0.0)  # older files
        if not kind:
            kind = "linear" if factor not in (0.0, 1.0) else "none"
        freq_scale = 1.0 / factor if factor > 0.0 else 1.0
        n_ctx_orig = config.uint("rope.scaling.original_context_length", 0) or config.uint(
            "context_length", 0
        )
        if kind == "none":
            return cls(n, neox, base, n_ctx_orig=n_ctx_orig)
        if kind == "linear":
            return cls(n, neox, base, freq_scale, n_ctx_orig=n_ctx_orig)
        if kind == "yarn":
            return cls(
                n,
                neox,
                base,
                freq_scale,
                ext_factor=config.float("rope.scaling.yarn_ext_factor", 1.0),
                attn_factor=config.float("rope.scaling.attn_factor", 1.0),
                beta_fast=config.float("rope.scaling.yarn_beta_fast", 32.0),
                beta_slow=config.float("rope.scaling.yarn_beta_slow", 1.0),
                n_ctx_orig=n_ctx_orig,
            )
        raise ValueError(f"[RoPE] unsupported rope.scaling.type {kind!r} (none, linear, yarn)")

    def _corr_dim(self, n_rot: float) -> float:
        # The frequency index whose wavelength fits n_rot times into the original context.
        return (
            self.n_dims
            * math.log(self.n_ctx_orig / (n_rot * 2 * math.pi))
            / (2 * math.log(self.freq_base))
        )

    def angles(
        self, positions: Sequence[int] | np.ndarray, factors: Sequence[float] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(cos, sin)`` in float64, numpy shape ``(T, n_dims/2)``.

        Args:
            positions: One position per token.
            factors: Per-frequency divisors (``rope_freqs``), ``n_dims/2`` of them, or ``None``.
        """
        import numpy as np

        half = self.n_dims // 2
        i = np.arange(half, dtype=np.float64)
        inv_freq = self.freq_base ** (-2.0 * i / self.n_dims)
        if factors is not None:
            f = np.asarray(factors, dtype=np.float64).ravel()
            if f.size != half:
                raise ShapeError(f"[RoPE] {f.size} frequency factors for {half} frequencies")
            inv_freq = inv_freq / f
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 1)
        theta_ext = pos * inv_freq
        theta = self.freq_scale * theta_ext
        mscale = self.attn_factor
        if self.ext_factor != 0.0 and self.n_ctx_orig > 0:
            lo = max(0.0, math.floor(self._corr_dim(self.beta_fast)))
            hi = min(self.n_dims - 1.0, math.ceil(self._corr_dim(self.beta_slow)))
            ramp = (1.0 - np.clip((i - lo) / max(0.001, hi - lo), 0.0, 1.0)) * self.ext_factor
            theta = theta * (1.0 - ramp) + theta_ext * ramp
            mscale *= 1.0 + 0.1 * math.log(1.0 / self.freq_scale)
        return np.cos(theta) * mscale, np.sin(theta) * mscale


@dataclass(frozen=True, slots=True)
class RopeTables:
    """The cos/sin input tensors of one batch, shaped for one rotation path.

    ``[n/2, T]`` for the fused op; for the composite path ``[1, n/2, 1, T]`` (normal style) or
    ``[n/2, 1, T]`` (neox); F32 on the input device.
    """

    cos: Tensor
    sin: Tensor
    n_tokens: int


@dataclass(frozen=True, slots=True)
class RoPE:
    """Rotary position embedding of one layer (or of all layers sharing its factors).

    Attributes:
        config: Angles and style.
        factors: Per-frequency divisors from a ``rope_freqs`` tensor, or ``None``.
        fused: Record the fused ``rope`` op (one node per call); ``False`` builds the rotation
            from ops of SEMANTICS §5 only, for backends that do not implement ``rope``.
    """

    config: RopeConfig
    factors: tuple[float, ...] | None = field(default=None)
    fused: bool = True

    def tables(self, ctx: Context, positions: Sequence[int] | np.ndarray) -> RopeTables:
        """Upload the cos/sin of ``positions`` as ``ctx.input()`` tensors for this batch."""
        cos, sin = self.config.angles(positions, self.factors)
        half, n = self.config.n_dims // 2, cos.shape[0]
        if self.fused:
            shape: tuple[int, ...] = (half, n)
        else:
            shape = (half, 1, n) if self.config.neox else (1, half, 1, n)
        inp = ctx.input()
        return RopeTables(inp.from_float_slice(cos, *shape), inp.from_float_slice(sin, *shape), n)

    def refill(self, tables: RopeTables, positions: Sequence[int] | np.ndarray) -> None:
        """Overwrite ``tables`` (made by :meth:`tables` for as many tokens) with ``positions``'.

        Raises:
            ShapeError: ``positions`` has another length than the tables were made for.
        """
        from mlplug.context import overwrite

        if len(positions) != tables.n_tokens:
            raise ShapeError(
                f"[RoPE] {len(positions)} positions for tables of {tables.n_tokens} tokens"
            )
        cos, sin = self.config.angles(positions, self.factors)
        overwrite(tables.cos, cos)
        overwrite(tables.sin, sin)

    def __call__(self, ctx: Context, x: Tensor, tables: RopeTables) -> Tensor:
        """Rotate ``x`` ``[D, H, T]`` (F32) by the positions of ``tables``; return ``[D, H, T]``."""
        d, heads, tokens = x.dim(0), x.dim(1), x.dim(2)
        n = self.config.n_dims
        if x.dim(3) != 1 or tokens != tables.n_tokens or n > d:
            raise ShapeError(
                f"[RoPE] input {list(x.shape())} must be [D >= {n}, H, T={tables.n_tokens}]"
            )
        if self.fused:
            return x.rope(ctx, tables.cos, tables.sin, 2 if self.config.neox else 0)
        s, nb1, nb2 = x.stride(0), x.stride(1), x.stride(2)
        half = n // 2
        if self.config.neox:
            a = x.view(ctx, 0, half, nb1, heads, nb2, tokens)
            b = x.view(ctx, half * s, half, nb1, heads, nb2, tokens)
        else:
            a = x.view(ctx, 0, 1, 2 * s, half, nb1, heads, nb2, tokens)
            b = x.view(ctx, s, 1, 2 * s, half, nb1, heads, nb2, tokens)
        cos, sin = tables.cos, tables.sin
        ra = a.mul(ctx, cos).sub(ctx, b.mul(ctx, sin))
        rb = a.mul(ctx, sin).add(ctx, b.mul(ctx, cos))
        out = ra.concat(ctx, rb, 0)
        if not self.config.neox:
            out = out.reshape(ctx, n, heads, tokens)
        if n < d:
            rest = x.view(ctx, n * s, d - n, nb1, heads, nb2, tokens)
            out = out.concat(ctx, rest, 0)
        return out
