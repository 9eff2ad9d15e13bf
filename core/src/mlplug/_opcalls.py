"""Op recording methods, generated from the ops table (:mod:`mlplug.ops`): do not edit.

Regenerate with ``python -m mlplug._opgen`` after changing the table; a test fails while this
file differs from what the table gives. ``Tensor`` inherits :class:`TensorOps` and ``Context``
:class:`ContextOps` (ops without a tensor operand).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from mlplug.context import Context
    from mlplug.dtype import DType
    from mlplug.tensor import Tensor

__all__ = ["ContextOps", "TensorOps"]


class TensorOps:
    """The ops recorded on a tensor receiver."""

    __slots__ = ()

    def _op_call(
        self,
        ctx: Context,
        op: str,
        srcs: tuple[Tensor | None, ...],
        params: dict[str, Any],
    ) -> Tensor:
        """Record ``op`` on ``ctx`` with this tensor as the receiver."""
        return ctx._record(op, (cast("Tensor", self), *srcs), params)

    def neg(self, ctx: Context) -> Tensor:
        """Return ``-x`` element-wise."""
        return self._op_call(ctx, "neg", (), {})

    def sin(self, ctx: Context) -> Tensor:
        """Return ``sin(x)`` element-wise."""
        return self._op_call(ctx, "sin", (), {})

    def cos(self, ctx: Context) -> Tensor:
        """Return ``cos(x)`` element-wise."""
        return self._op_call(ctx, "cos", (), {})

    def tanh(self, ctx: Context) -> Tensor:
        """Return ``tanh(x)`` element-wise."""
        return self._op_call(ctx, "tanh", (), {})

    def gelu(self, ctx: Context) -> Tensor:
        """Return the tanh-approximated GELU element-wise."""
        return self._op_call(ctx, "gelu", (), {})

    def silu(self, ctx: Context) -> Tensor:
        """Return ``x / (1 + exp(-x))`` element-wise."""
        return self._op_call(ctx, "silu", (), {})

    def relu(self, ctx: Context) -> Tensor:
        """Return ``max(x, 0)`` element-wise."""
        return self._op_call(ctx, "relu", (), {})

    def sigmoid(self, ctx: Context) -> Tensor:
        """Return ``1 / (1 + exp(-x))`` element-wise."""
        return self._op_call(ctx, "sigmoid", (), {})

    def sqr(self, ctx: Context) -> Tensor:
        """Return ``x * x`` element-wise."""
        return self._op_call(ctx, "sqr", (), {})

    def sqrt(self, ctx: Context) -> Tensor:
        """Return ``sqrt(x)`` element-wise (NaN below 0)."""
        return self._op_call(ctx, "sqrt", (), {})

    def exp(self, ctx: Context) -> Tensor:
        """Return ``e^x`` element-wise."""
        return self._op_call(ctx, "exp", (), {})

    def scale(self, ctx: Context, s: float) -> Tensor:
        """Return ``x * f32(s)``."""
        return self._op_call(ctx, "scale", (), {"s": s})

    def clamp(self, ctx: Context, lo: float, hi: float) -> Tensor:
        """Return ``max(min(x, hi), lo)``."""
        return self._op_call(ctx, "clamp", (), {"lo": lo, "hi": hi})

    def add(self, ctx: Context, b: Tensor) -> Tensor:
        """Return ``a + b`` with ``b`` tiled over ``a``."""
        return self._op_call(ctx, "add", (b,), {})

    def sub(self, ctx: Context, b: Tensor) -> Tensor:
        """Return ``a - b`` with ``b`` tiled over ``a``."""
        return self._op_call(ctx, "sub", (b,), {})

    def mul(self, ctx: Context, b: Tensor) -> Tensor:
        """Return ``a * b`` with ``b`` tiled over ``a``."""
        return self._op_call(ctx, "mul", (b,), {})

    def div(self, ctx: Context, b: Tensor) -> Tensor:
        """Return ``a / b`` with ``b`` tiled over ``a``."""
        return self._op_call(ctx, "div", (b,), {})

    def mulmat(self, ctx: Context, b: Tensor) -> Tensor:
        """Return ``b · aᵀ`` per batch, ``a`` block-repeated over b's dims 2 and 3."""
        return self._op_call(ctx, "mulmat", (b,), {})

    def mulmat_full_prec(self, ctx: Context, b: Tensor) -> Tensor:
        """Return ``mulmat`` with F32 accumulation on every device."""
        return self._op_call(ctx, "mulmat_full_prec", (b,), {})

    def mulmat_id(self, ctx: Context, b: Tensor, ids: Tensor) -> Tensor:
        """Return the mixture-of-experts product: expert ``ids[e, t]`` applied to token ``t``."""
        return self._op_call(ctx, "mulmat_id", (b, ids), {})

    def softmax(self, ctx: Context) -> Tensor:
        """Return the softmax of each row (dim 0)."""
        return self._op_call(ctx, "softmax", (), {})

    def layer_norm(self, ctx: Context, w: Tensor | None, b: Tensor | None, eps: float) -> Tensor:
        """Return ``(x − mean) / sqrt(var + eps)`` per row, then ``· w`` and ``+ b`` if given."""
        return self._op_call(ctx, "layer_norm", (w, b), {"eps": eps})

    def rms_norm(self, ctx: Context, w: Tensor | None, eps: float) -> Tensor:
        """Return ``x / sqrt(mean(x²) + eps)`` per row, then ``· w`` if given."""
        return self._op_call(ctx, "rms_norm", (w,), {"eps": eps})

    def sum_rows(self, ctx: Context) -> Tensor:
        """Return the sum of each row, ``[1, ne1, ne2, ne3]``."""
        return self._op_call(ctx, "sum_rows", (), {})

    def mean(self, ctx: Context) -> Tensor:
        """Return the mean of each row (F32)."""
        return self._op_call(ctx, "mean", (), {})

    def variance(self, ctx: Context) -> Tensor:
        """Return the population variance of each row."""
        return self._op_call(ctx, "variance", (), {})

    def stddev(self, ctx: Context) -> Tensor:
        """Return the population standard deviation of each row."""
        return self._op_call(ctx, "stddev", (), {})

    def reshape(self, ctx: Context, *shape: int) -> Tensor:
        """Return a view with new extents (the receiver must be contiguous)."""
        return self._op_call(ctx, "reshape", (), {"shape": shape})

    def view(self, ctx: Context, offset: int, *args: int) -> Tensor:
        """Return a view at byte ``offset`` with extents and byte strides alternating."""
        return self._op_call(ctx, "view", (), {"offset": offset, "args": args})

    def permute(self, ctx: Context, *axes: int) -> Tensor:
        """Return a view where source axis ``i`` moves to position ``axes[i]``."""
        return self._op_call(ctx, "permute", (), {"axes": axes})

    def contiguous(self, ctx: Context) -> Tensor:
        """Return a packed copy."""
        return self._op_call(ctx, "contiguous", (), {})

    def duplicate(self, ctx: Context) -> Tensor:
        """Return a packed copy."""
        return self._op_call(ctx, "duplicate", (), {})

    def copy(self, ctx: Context, dst: Tensor) -> Tensor:
        """Write this tensor's values into ``dst`` (converting dtype); return a view of ``dst``."""
        return self._op_call(ctx, "copy", (dst,), {})

    def set(self, ctx: Context, b: Tensor, offset: int, *strides: int) -> Tensor:
        """Return a packed copy with ``b`` written at byte ``offset`` (optional row stride)."""
        return self._op_call(ctx, "set", (b,), {"offset": offset, "strides": strides})

    def pad(self, ctx: Context, *pads: int) -> Tensor:
        """Return the tensor with ``p_i`` zeros appended at the end of each dim ``i``."""
        return self._op_call(ctx, "pad", (), {"pads": pads})

    def concat(self, ctx: Context, b: Tensor, dim: int) -> Tensor:
        """Return this tensor then ``b`` along ``dim``."""
        return self._op_call(ctx, "concat", (b,), {"dim": dim})

    def stack(self, ctx: Context, dim: int, *others: Tensor) -> Tensor:
        """Return the concatenation of this tensor and ``others`` along existing ``dim``."""
        return self._op_call(ctx, "stack", (*others,), {"dim": dim})

    def repeat(self, ctx: Context, dim: int, n: int) -> Tensor:
        """Return the whole tensor tiled ``n`` times along ``dim``."""
        return self._op_call(ctx, "repeat", (), {"dim": dim, "n": n})

    def rows(self, ctx: Context, ids: Tensor) -> Tensor:
        """Return the rows selected by I32 ``ids`` (a gather)."""
        return self._op_call(ctx, "rows", (ids,), {})

    def set_rows(self, ctx: Context, dst: Tensor, ids: Tensor) -> Tensor:
        """Write this tensor's rows into rows ``ids`` of ``dst``; return a view of ``dst``.

        ``dst[:, ids[r], j, k] = a[:, r, j, k]``, converting dtype (a scatter, as ggml's
        ``set_rows``). A KV cache written this way makes a graph that does not depend on
        the cells written: they are an input.
        """
        return self._op_call(ctx, "set_rows", (dst, ids), {})

    def argsort(self, ctx: Context) -> Tensor:
        """Return the indices sorting each row ascending (I32)."""
        return self._op_call(ctx, "argsort", (), {})

    def topk(self, ctx: Context, k: int) -> Tensor:
        """Return the indices of the ``k`` largest values of each row, descending (I32)."""
        return self._op_call(ctx, "topk", (), {"k": k})

    def conv_2d(
        self, ctx: Context, input: Tensor, s0: int, s1: int, p0: int, p1: int, d0: int, d1: int
    ) -> Tensor:
        """Return the 2-D cross-correlation of ``input`` with this kernel."""
        return self._op_call(
            ctx, "conv_2d", (input,), {"s0": s0, "s1": s1, "p0": p0, "p1": p1, "d0": d0, "d1": d1}
        )

    def im2col(
        self, ctx: Context, input: Tensor, s0: int, s1: int, p0: int, p1: int, d0: int, d1: int
    ) -> Tensor:
        """Return ``input``'s patches as columns, for this kernel's shape."""
        return self._op_call(
            ctx, "im2col", (input,), {"s0": s0, "s1": s1, "p0": p0, "p1": p1, "d0": d0, "d1": d1}
        )

    def avg_pool_2d(self, ctx: Context, k: int, s: int, p: int) -> Tensor:
        """Return square average pooling (padding counts in the divisor)."""
        return self._op_call(ctx, "avg_pool_2d", (), {"k": k, "s": s, "p": p})

    def scaled_dot_product_attention(
        self, ctx: Context, key: Tensor, value: Tensor, mask: Tensor | None, scale: float
    ) -> Tensor:
        """Return fused attention of this query over ``key``/``value`` (GQA), ``[Dv, H, T]``."""
        return self._op_call(
            ctx,
            "scaled_dot_product_attention",
            (key, value, mask),
            {"scale": scale, "permuted_v": ctx._backend_permuted_v()},
        )

    def rope(self, ctx: Context, cos: Tensor, sin: Tensor, mode: int) -> Tensor:
        """Return ``[D, H, T]`` with the first ``n_rot = 2·cos.ne0`` values of each row rotated.

        Pair ``i`` of token ``t`` is rotated by ``cos[i, t]``/``sin[i, t]``: with ``mode`` 0
        (normal) the pair is ``(x[2i], x[2i+1])``, with ``mode`` 2 (neox)
        ``(x[i], x[i + n_rot/2])``; ``(a, b)`` becomes ``(a·cos − b·sin, a·sin + b·cos)``.
        Values past ``n_rot`` are copied.
        """
        return self._op_call(ctx, "rope", (cos, sin), {"mode": mode})

    def swiglu(self, ctx: Context, b: Tensor) -> Tensor:
        """Return ``silu(a) · b`` (``b`` tiled over ``a`` as in ``mul``) in one node.

        The gated activation of SwiGLU feed-forward layers: ``a.silu(ctx).mul(ctx, b)``.
        """
        return self._op_call(ctx, "swiglu", (b,), {})

    def geglu(self, ctx: Context, b: Tensor) -> Tensor:
        """Return ``gelu(a) · b`` (tanh GELU; ``b`` tiled as in ``mul``) in one node.

        The gated activation of GeGLU feed-forward layers: ``a.gelu(ctx).mul(ctx, b)``.
        """
        return self._op_call(ctx, "geglu", (b,), {})

    def rms_norm_add(self, ctx: Context, w: Tensor | None, r: Tensor, eps: float) -> Tensor:
        """Return ``rms_norm(a, w, eps) + r`` (``w``, ``r`` tiled over ``a``) in one node.

        A post-norm and its residual (Gemma's sandwich norms):
        ``a.rms_norm(ctx, w, eps).add(ctx, r)``.
        """
        return self._op_call(ctx, "rms_norm_add", (w, r), {"eps": eps})


class ContextOps:
    """The ops recorded on a context (no tensor operand)."""

    __slots__ = ()

    def _record(self, op: str, srcs: tuple[Tensor | None, ...], params: dict[str, Any]) -> Tensor:
        """Record ``op`` in this context's graph (``Context`` implements it)."""
        raise NotImplementedError

    def arange(self, start: float, stop: float, step: float, dtype: DType) -> Tensor:
        """Record ``[start, stop)`` by ``step`` as F32 or I32 (a graph op)."""
        return self._record(
            "arange", (), {"start": start, "stop": stop, "step": step, "dtype": dtype}
        )
