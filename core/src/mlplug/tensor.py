"""``Tensor``: a lazy graph node or a buffer tensor (SEMANTICS §1, §2, §5).

Op methods only record nodes: each validates its operands at once through the ops table
(:mod:`mlplug.ops`) and returns a new ``Tensor`` belonging to the context passed. Nothing is
allocated or computed until ``Context.compute``. Reading (``bytes``/``floats``/``numpy``) follows
the readability rules of §2.4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mlplug import _convert
from mlplug.dtype import DType
from mlplug.ops import Meta

if TYPE_CHECKING:
    import numpy as np

    from mlplug.context import Context, Family
    from mlplug.device import Buffer

__all__ = ["Storage", "Tensor"]


class Storage:
    """Where a buffer tensor's bytes live: a device index and a window of one of its buffers."""

    __slots__ = ("buffer", "device", "nbytes", "offset")

    def __init__(self, device: int, buffer: Buffer | None, offset: int, nbytes: int) -> None:
        self.device = device
        self.buffer = buffer
        self.offset = offset
        self.nbytes = nbytes


class Tensor:
    """A tensor of up to four dimensions in ggml order (dim 0 fastest).

    Buffer tensors (created by a context, or model weights) own storage; every other tensor is
    a node of its context family's graph, readable after a ``compute`` that lists it.
    """

    __slots__ = (
        "__weakref__",
        "_family",
        "_meta",
        "_op",
        "_params",
        "_readable",
        "_result",
        "_root",
        "_srcs",
        "_storage",
        "name",
    )

    def __init__(
        self,
        family: Family,
        meta: Meta,
        *,
        op: str | None = None,
        srcs: tuple[Tensor | None, ...] = (),
        params: dict[str, Any] | None = None,
        storage: Storage | None = None,
        root: Tensor | None = None,
        name: str = "",
    ) -> None:
        self._family = family
        self._meta = meta
        self._op = op
        self._srcs = srcs
        self._params = params or {}
        self._storage = storage
        self._root = root
        self._result: bytes | None = None
        self._readable = False
        self.name = name

    # -- introspection (§1.2) ----------------------------------------------------------------

    def dim(self, n: int) -> int:
        """Return ``ne[n]`` for ``n`` in 0..3."""
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 4:
            raise IndexError(f"dim: n must be in 0..3, got {n!r}")
        return self._meta.ne[n]

    def stride(self, n: int) -> int:
        """Return ``nb[n]`` in bytes for ``n`` in 0..3."""
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 4:
            raise IndexError(f"stride: n must be in 0..3, got {n!r}")
        return self._meta.nb[n]

    def shape(self) -> tuple[int, ...]:
        """Return the extents with trailing 1s dropped (at least one)."""
        ne = self._meta.ne
        if ne[0] == 0:
            return (0,)
        k = max((i for i in range(4) if ne[i] > 1), default=0) + 1
        return tuple(ne[:k])

    def dtype(self) -> DType:
        """Return the element type."""
        return self._meta.dtype

    def n_elements(self) -> int:
        """Return the number of elements."""
        return self._meta.n

    def is_contiguous(self) -> bool:
        """Whether the strides are the packed strides of the extents."""
        from mlplug.ops import is_contiguous

        return is_contiguous(self._meta.ne, self._meta.nb, self._meta.dtype)

    def __repr__(self) -> str:
        kind = self._op or ("weight" if self.name else "buffer")
        label = f" {self.name!r}" if self.name else ""
        return f"<Tensor{label} {kind} {self._meta.dtype.name} {list(self._meta.ne)}>"

    # -- reading (§2.4) -----------------------------------------------------------------------

    def bytes(self) -> bytes:
        """Return the values' bytes in logical order (block types: raw blocks)."""
        return self._family.backend._read_bytes(self)

    def floats(self) -> np.ndarray:
        """Return the values as a 1-D float32 array in logical order."""
        raw = self.bytes()
        if self._meta.n == 0:
            import numpy as np

            return np.zeros(0, dtype=np.float32)
        return _convert.to_f32(raw, self._meta.dtype)

    def numpy(self) -> np.ndarray:
        """Return a copy of the values in numpy order (shape ``reversed(shape())``)."""
        raw = self.bytes()
        shape = tuple(reversed(self.shape()))
        if self._meta.n == 0:
            import numpy as np

            return np.zeros((0,), dtype=_convert.to_numpy(b"", self._meta.dtype, (0,)).dtype)
        return _convert.to_numpy(raw, self._meta.dtype, shape)

    # -- op recording ---------------------------------------------------------------------------

    def _op_call(
        self,
        ctx: Context,
        op: str,
        srcs: Sequence[Tensor | None],
        params: dict[str, Any] | None = None,
    ) -> Tensor:
        return ctx._record(op, (self, *srcs), params or {})

    # unary (§5.3)
    def neg(self, ctx: Context) -> Tensor:
        """Return ``-x`` element-wise."""
        return self._op_call(ctx, "neg", ())

    def sin(self, ctx: Context) -> Tensor:
        """Return ``sin(x)`` element-wise."""
        return self._op_call(ctx, "sin", ())

    def cos(self, ctx: Context) -> Tensor:
        """Return ``cos(x)`` element-wise."""
        return self._op_call(ctx, "cos", ())

    def tanh(self, ctx: Context) -> Tensor:
        """Return ``tanh(x)`` element-wise."""
        return self._op_call(ctx, "tanh", ())

    def gelu(self, ctx: Context) -> Tensor:
        """Return the tanh-approximated GELU element-wise."""
        return self._op_call(ctx, "gelu", ())

    def silu(self, ctx: Context) -> Tensor:
        """Return ``x / (1 + exp(-x))`` element-wise."""
        return self._op_call(ctx, "silu", ())

    def relu(self, ctx: Context) -> Tensor:
        """Return ``max(x, 0)`` element-wise."""
        return self._op_call(ctx, "relu", ())

    def sigmoid(self, ctx: Context) -> Tensor:
        """Return ``1 / (1 + exp(-x))`` element-wise."""
        return self._op_call(ctx, "sigmoid", ())

    def sqr(self, ctx: Context) -> Tensor:
        """Return ``x * x`` element-wise."""
        return self._op_call(ctx, "sqr", ())

    def sqrt(self, ctx: Context) -> Tensor:
        """Return ``sqrt(x)`` element-wise (NaN below 0)."""
        return self._op_call(ctx, "sqrt", ())

    def scale(self, ctx: Context, s: float) -> Tensor:
        """Return ``x * f32(s)``."""
        return self._op_call(ctx, "scale", (), {"s": s})

    def clamp(self, ctx: Context, lo: float, hi: float) -> Tensor:
        """Return ``max(min(x, hi), lo)``."""
        return self._op_call(ctx, "clamp", (), {"lo": lo, "hi": hi})

    # binary (§5.2)
    def add(self, ctx: Context, b: Tensor) -> Tensor:
        """Return ``a + b`` with ``b`` tiled over ``a``."""
        return self._op_call(ctx, "add", (b,))

    def sub(self, ctx: Context, b: Tensor) -> Tensor:
        """Return ``a - b`` with ``b`` tiled over ``a``."""
        return self._op_call(ctx, "sub", (b,))

    def mul(self, ctx: Context, b: Tensor) -> Tensor:
        """Return ``a * b`` with ``b`` tiled over ``a``."""
        return self._op_call(ctx, "mul", (b,))

    def div(self, ctx: Context, b: Tensor) -> Tensor:
        """Return ``a / b`` with ``b`` tiled over ``a``."""
        return self._op_call(ctx, "div", (b,))

    # products (§5.4)
    def mulmat(self, ctx: Context, b: Tensor) -> Tensor:
        """Return ``b · aᵀ`` per batch, ``a`` block-repeated over b's dims 2 and 3."""
        return self._op_call(ctx, "mulmat", (b,))

    def mulmat_full_prec(self, ctx: Context, b: Tensor) -> Tensor:
        """Return ``mulmat`` with F32 accumulation on every device."""
        return self._op_call(ctx, "mulmat_full_prec", (b,))

    def mulmat_id(self, ctx: Context, b: Tensor, ids: Tensor) -> Tensor:
        """Return the mixture-of-experts product: expert ``ids[e, t]`` applied to token ``t``."""
        return self._op_call(ctx, "mulmat_id", (b, ids))

    # rows ops (§5.5)
    def softmax(self, ctx: Context) -> Tensor:
        """Return the softmax of each row (dim 0)."""
        return self._op_call(ctx, "softmax", ())

    def layer_norm(self, ctx: Context, w: Tensor | None, b: Tensor | None, eps: float) -> Tensor:
        """Return ``(x − mean) / sqrt(var + eps)`` per row, then ``· w`` and ``+ b`` if given."""
        return self._op_call(ctx, "layer_norm", (w, b), {"eps": eps})

    def rms_norm(self, ctx: Context, w: Tensor | None, eps: float) -> Tensor:
        """Return ``x / sqrt(mean(x²) + eps)`` per row, then ``· w`` if given."""
        return self._op_call(ctx, "rms_norm", (w,), {"eps": eps})

    def sum_rows(self, ctx: Context) -> Tensor:
        """Return the sum of each row, ``[1, ne1, ne2, ne3]``."""
        return self._op_call(ctx, "sum_rows", ())

    def mean(self, ctx: Context) -> Tensor:
        """Return the mean of each row (F32)."""
        return self._op_call(ctx, "mean", ())

    def variance(self, ctx: Context) -> Tensor:
        """Return the population variance of each row."""
        return self._op_call(ctx, "variance", ())

    def stddev(self, ctx: Context) -> Tensor:
        """Return the population standard deviation of each row."""
        return self._op_call(ctx, "stddev", ())

    # views and copies (§5.6)
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
        return self._op_call(ctx, "contiguous", ())

    def duplicate(self, ctx: Context) -> Tensor:
        """Return a packed copy."""
        return self._op_call(ctx, "duplicate", ())

    def copy(self, ctx: Context, dst: Tensor) -> Tensor:
        """Write this tensor's values into ``dst`` (converting dtype); return a view of ``dst``."""
        return self._op_call(ctx, "copy", (dst,))

    # assembling (§5.7)
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
        return self._op_call(ctx, "stack", others, {"dim": dim})

    def repeat(self, ctx: Context, dim: int, n: int) -> Tensor:
        """Return the whole tensor tiled ``n`` times along ``dim``."""
        return self._op_call(ctx, "repeat", (), {"dim": dim, "n": n})

    def rows(self, ctx: Context, ids: Tensor) -> Tensor:
        """Return the rows selected by I32 ``ids`` (a gather)."""
        return self._op_call(ctx, "rows", (ids,))

    # sorting (§5.8)
    def argsort(self, ctx: Context) -> Tensor:
        """Return the indices sorting each row ascending (I32)."""
        return self._op_call(ctx, "argsort", ())

    def topk(self, ctx: Context, k: int) -> Tensor:
        """Return the indices of the ``k`` largest values of each row, descending (I32)."""
        return self._op_call(ctx, "topk", (), {"k": k})

    # convolution (§5.9)
    def conv_2d(
        self, ctx: Context, input: Tensor, s0: int, s1: int, p0: int, p1: int, d0: int, d1: int
    ) -> Tensor:
        """Return the 2-D cross-correlation of ``input`` with this kernel."""
        params = {"s0": s0, "s1": s1, "p0": p0, "p1": p1, "d0": d0, "d1": d1}
        return self._op_call(ctx, "conv_2d", (input,), params)

    def im2col(
        self, ctx: Context, input: Tensor, s0: int, s1: int, p0: int, p1: int, d0: int, d1: int
    ) -> Tensor:
        """Return ``input``'s patches as columns, for this kernel's shape."""
        params = {"s0": s0, "s1": s1, "p0": p0, "p1": p1, "d0": d0, "d1": d1}
        return self._op_call(ctx, "im2col", (input,), params)

    def avg_pool_2d(self, ctx: Context, k: int, s: int, p: int) -> Tensor:
        """Return square average pooling (padding counts in the divisor)."""
        return self._op_call(ctx, "avg_pool_2d", (), {"k": k, "s": s, "p": p})

    # fused rotary position embedding (optional op, see mlplug.nn.rope)
    def rope(self, ctx: Context, cos: Tensor, sin: Tensor, mode: int) -> Tensor:
        """Return ``[D, H, T]`` with the first ``n_rot = 2·cos.ne0`` values of each row rotated.

        Pair ``i`` of token ``t`` is rotated by ``cos[i, t]``/``sin[i, t]``: with ``mode`` 0
        (normal) the pair is ``(x[2i], x[2i+1])``, with ``mode`` 2 (neox)
        ``(x[i], x[i + n_rot/2])``;
        ``(a, b)`` becomes ``(a·cos − b·sin, a·sin + b·cos)``. Values past ``n_rot`` are copied.
        """
        return self._op_call(ctx, "rope", (cos, sin), {"mode": mode})

    # attention (§8.7)
    def scaled_dot_product_attention(
        self, ctx: Context, key: Tensor, value: Tensor, mask: Tensor | None, scale: float
    ) -> Tensor:
        """Return fused attention of this query over ``key``/``value`` (GQA), ``[Dv, H, T]``."""
        permuted = ctx._backend_permuted_v()
        return self._op_call(
            ctx,
            "scaled_dot_product_attention",
            (key, value, mask),
            {"scale": scale, "permuted_v": permuted},
        )
