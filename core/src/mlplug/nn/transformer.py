"""Decoder-only transformers: the structure every ``mlplug.models`` architecture shares.

A model is ``token_embd`` (optionally scaled), ``n_layer`` :class:`Block`\\s, a final RMSNorm and
the ``output`` projection (tied to ``token_embd`` when the file has no ``output.weight``). A
block is

    a = Wo·attn(rope(norm_q(Wq·n)), rope(norm_k(Wk·n)), Wv·n)      n = attn_norm(x)
    x = x + post_attn_norm(a)
    x = x + post_ffn_norm(Wdown·(act(Wgate·n) ⊙ Wup·n))             n = ffn_norm(x)

where the q/k norms, the post norms and the biases are present or not per architecture, and the
activation is SiLU or GELU. An architecture is a :class:`Decoder` subclass that reads its
hyperparameters (:class:`TransformerConfig`), lists the weights it needs (:class:`WeightSpec`,
checked by name and shape before anything is computed — and, through
:func:`mlplug.models.check_file`, before anything is allocated) and says what differs per layer:
the RoPE of each layer and its attention window. Layers with a sliding window use a KV cache with
that window (:class:`mlplug.nn.LayerCaches` when windows differ between layers).
"""

from __future__ import annotations

import math
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mlplug.context import is_closed, release_results
from mlplug.dtype import DType
from mlplug.errors import ModelFileError, ShapeError
from mlplug.nn._attention import attention
from mlplug.nn.layer_caches import LayerCaches
from mlplug.nn.layers import Embedding, Linear, RMSNorm, model_source, require
from mlplug.nn.rope import RoPE, RopeConfig, RopeTables

if TYPE_CHECKING:
    import numpy as np

    from mlplug.backend import Backend
    from mlplug.config import Config
    from mlplug.context import Context
    from mlplug.params import CacheConfig
    from mlplug.tensor import Tensor

__all__ = [
    "Batch",
    "Block",
    "Decoder",
    "FeedForward",
    "SelfAttention",
    "TransformerConfig",
    "WeightSpec",
    "check_weights",
    "model_source",
]


# -- hyperparameters ----------------------------------------------------------------------------


def _per_layer(config: Config, key: str, n_layer: int, default: int, arch: str) -> int:
    """Read a u32 hyperparameter that some files store as one value per layer."""
    value = config.uint(key, 0)
    if value:
        return value
    values = config.uints(key) or tuple(config.ints(key))
    if values:
        if len(set(values)) != 1 or len(values) != n_layer:
            raise ModelFileError(f"[{arch}] {key} varies per layer ({values}); not supported")
        return int(values[0])
    return default


@dataclass(frozen=True, slots=True)
class TransformerConfig:
    """The hyperparameters of a decoder-only transformer (GGUF keys ``<arch>.*``).

    Attributes:
        architecture: ``general.architecture``.
        n_layer: ``block_count``.
        n_embd: ``embedding_length``.
        n_ff: ``feed_forward_length``.
        n_head: ``attention.head_count``.
        n_head_kv: ``attention.head_count_kv`` (defaults to ``n_head``).
        head_dim_k: ``attention.key_length`` (defaults to ``n_embd / n_head``).
        head_dim_v: ``attention.value_length`` (defaults to ``head_dim_k``).
        eps: ``attention.layer_norm_rms_epsilon``.
        n_ctx_train: ``context_length``.
        n_vocab: ``vocab_size``, else the length of ``tokenizer.ggml.tokens``.
        rope: Rotation angles and style (``rope.*``).
        sliding_window: ``attention.sliding_window`` (0: none).
    """

    architecture: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    eps: float
    n_ctx_train: int
    n_vocab: int
    rope: RopeConfig
    sliding_window: int = 0

    @classmethod
    def from_config(
        cls, config: Config, *, neox: bool, where: str = "the model"
    ) -> TransformerConfig:
        """Read the hyperparameters from a model's metadata (``backend.config()``).

        Args:
            config: The metadata.
            neox: The architecture's rotation style.
            where: The model file, for messages.

        Raises:
            ModelFileError: A required key is missing or the values are inconsistent; the
                message names ``where`` and the key.
        """
        arch = config.architecture()
        n_layer = config.uint("block_count")
        n_embd = config.uint("embedding_length")
        n_head = _per_layer(config, "attention.head_count", n_layer, 0, arch)
        n_ff = _per_layer(config, "feed_forward_length", n_layer, 0, arch)
        missing = [
            k
            for k, v in (
                ("block_count", n_layer),
                ("embedding_length", n_embd),
                ("feed_forward_length", n_ff),
                ("attention.head_count", n_head),
            )
            if not v
        ]
        if missing:
            keys = ", ".join(f"{arch}.{k}" for k in missing)
            raise ModelFileError(f"[{arch}] {where}: missing metadata key(s) {keys}")
        if config.uint("expert_count", 0) > 0:
            raise ModelFileError(f"[{arch}] {where}: mixture-of-experts models are not supported")
        n_head_kv = _per_layer(config, "attention.head_count_kv", n_layer, n_head, arch)
        if not n_head_kv or n_head % n_head_kv:
            raise ModelFileError(
                f"[{arch}] {where}: {arch}.attention.head_count {n_head} is not a multiple of "
                f"{arch}.attention.head_count_kv {n_head_kv}"
            )
        head_dim_k = config.uint("attention.key_length", n_embd // n_head)
        head_dim_v = config.uint("attention.value_length", head_dim_k)
        n_vocab = config.uint("vocab_size", 0) or len(config.strings("tokenizer.ggml.tokens"))
        eps = config.float("attention.layer_norm_rms_epsilon", 1e-5)
        if not (math.isfinite(eps) and eps >= 0):  # a lying file, not a model to run
            raise ModelFileError(
                f"[{arch}] {where}: {arch}.attention.layer_norm_rms_epsilon = {eps}, expected a "
                "finite number >= 0"
            )
        try:
            rope = RopeConfig.from_config(config, head_dim_k, neox=neox)
        except (ValueError, ShapeError) as err:
            raise ModelFileError(f"[{arch}] {where}: {err}") from err
        return cls(
            architecture=arch,
            n_layer=n_layer,
            n_embd=n_embd,
            n_ff=n_ff,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim_k=head_dim_k,
            head_dim_v=head_dim_v,
            eps=eps,
            n_ctx_train=config.uint("context_length", 0),
            n_vocab=n_vocab,
            rope=rope,
            sliding_window=config.uint("attention.sliding_window", 0),
        )


# -- weights and their checks -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WeightSpec:
    """A weight a model reads: its GGUF name and ggml shape (trailing 1s dropped).

    Attributes:
        name: Tensor name.
        shape: Expected extents, ``ne0`` first; ``None`` entries accept any extent.
        required: Whether the model fails without it.
    """

    name: str
    shape: tuple[int | None, ...]
    required: bool = True


def _trim(shape: Sequence[int]) -> tuple[int, ...]:
    out = list(shape)
    while len(out) > 1 and out[-1] == 1:
        out.pop()
    return tuple(out)


def check_weights(
    arch: str,
    specs: Iterable[WeightSpec],
    shape_of: Callable[[str], Sequence[int] | None],
    where: str,
) -> None:
    """Check that every required weight exists and every present one has its shape.

    Args:
        arch: The architecture, for messages.
        specs: What the model reads.
        shape_of: Name → ggml extents, or ``None`` when the file has no such tensor.
        where: The model file, for messages.

    Raises:
        ModelFileError: The first missing or misshapen tensor, named with ``where``.
    """
    for spec in specs:
        shape = shape_of(spec.name)
        if shape is None:
            if spec.required:
                raise ModelFileError(
                    f"[{arch}] {where}: no tensor {spec.name!r} (expected shape "
                    f"{_show(spec.shape)})"
                )
            continue
        got = _trim(shape)
        want = spec.shape
        if len(got) > len(want) or any(
            w is not None and w != (got[i] if i < len(got) else 1) for i, w in enumerate(want)
        ):
            raise ModelFileError(
                f"[{arch}] {where}: tensor {spec.name!r} has shape {list(got)}, expected "
                f"{_show(want)}"
            )


def _show(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("*" if n is None else str(n) for n in shape) + "]"


# -- batches and blocks -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    """Tokens to process together, possibly from several sequences.

    Attributes:
        tokens: Token ids.
        positions: The position of each token in its sequence.
        sequences: The sequence id of each token.
        outputs: Indexes into ``tokens`` whose logits are wanted, in the order returned.
    """

    tokens: Sequence[int]
    positions: Sequence[int]
    sequences: Sequence[int]
    outputs: Sequence[int] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if n == 0:
            raise ShapeError("[Batch] a batch needs at least one token")
        if len(self.positions) != n or len(self.sequences) != n:
            raise ShapeError(
                f"[Batch] {n} tokens, {len(self.positions)} positions, "
                f"{len(self.sequences)} sequences"
            )
        if any(not 0 <= i < n for i in self.outputs):
            raise ShapeError(f"[Batch] output indexes must be in 0..{n - 1}")

    @classmethod
    def single(
        cls, tokens: Sequence[int], start: int = 0, seq: int = 0, *, last_only: bool = True
    ) -> Batch:
        """Return a batch of consecutive tokens of one sequence from position ``start``."""
        n = len(tokens)
        outputs = (n - 1,) if last_only else tuple(range(n))
        return cls(tuple(tokens), tuple(range(start, start + n)), (seq,) * n, outputs)


@dataclass(frozen=True, slots=True)
class SelfAttention:
    """Multi-head (grouped-query) self-attention with optional per-head q/k RMSNorm.

    Attributes:
        wq: ``[n_embd, n_head·Dk]``.
        wk: ``[n_embd, n_head_kv·Dk]``.
        wv: ``[n_embd, n_head_kv·Dv]``.
        wo: ``[n_head·Dv, n_embd]``.
        n_head: Query heads.
        n_head_kv: Key/value heads.
        head_dim_k: ``Dk``.
        head_dim_v: ``Dv``.
        scale: Multiplier of the scores.
        q_norm: RMSNorm of each query head (``[Dk]`` weight) before RoPE, or ``None``.
        k_norm: RMSNorm of each key head before RoPE, or ``None``.
    """

    wq: Linear
    wk: Linear
    wv: Linear
    wo: Linear
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    scale: float
    q_norm: RMSNorm | None = None
    k_norm: RMSNorm | None = None

    def __call__(
        self, ctx: Context, h: Tensor, rope: RoPE, table: RopeTables, cache: Any, layer: int
    ) -> Tensor:
        """Return ``Wo·attention`` of the normalised input ``h`` ``[n_embd, T]``."""
        n = h.dim(1)
        q = self.wq(ctx, h).reshape(ctx, self.head_dim_k, self.n_head, n)
        k = self.wk(ctx, h).reshape(ctx, self.head_dim_k, self.n_head_kv, n)
        v = self.wv(ctx, h).reshape(ctx, self.head_dim_v, self.n_head_kv, n)
        if self.q_norm is not None:
            q = self.q_norm(ctx, q)
        if self.k_norm is not None:
            k = self.k_norm(ctx, k)
        q = rope(ctx, q, table)
        k = rope(ctx, k, table)
        cache.set_layer(layer)
        a = attention(ctx, q, k, v, self.scale, cache)  # [Dv, H, T]
        return self.wo(ctx, a.reshape(ctx, self.head_dim_v * self.n_head, n))


@dataclass(frozen=True, slots=True)
class FeedForward:
    """Gated feed-forward: ``Wdown·(act(Wgate·x) ⊙ Wup·x)``, ``act`` SiLU or tanh-GELU.

    Attributes:
        gate: ``[n_embd, n_ff]``.
        up: ``[n_embd, n_ff]``.
        down: ``[n_ff, n_embd]``.
        activation: ``"silu"`` or ``"gelu"``.
        fused: Record the optional fused ``swiglu``/``geglu`` op (one node); ``False`` records
            the activation and ``mul`` (ops of SEMANTICS §5 only).
    """

    gate: Linear
    up: Linear
    down: Linear
    activation: str = "silu"
    fused: bool = True

    def __post_init__(self) -> None:
        if self.activation not in ("silu", "gelu"):
            raise ValueError(f"[FeedForward] activation {self.activation!r} is not silu or gelu")

    def __call__(self, ctx: Context, x: Tensor) -> Tensor:
        """Return the feed-forward output ``[n_embd, T]``."""
        g, u = self.gate(ctx, x), self.up(ctx, x)
        if self.fused:  # the optional fused swiglu/geglu op: one node instead of two
            h = g.swiglu(ctx, u) if self.activation == "silu" else g.geglu(ctx, u)
        else:
            h = (g.silu(ctx) if self.activation == "silu" else g.gelu(ctx)).mul(ctx, u)
        return self.down(ctx, h)


@dataclass(frozen=True, slots=True)
class Block:
    """One transformer layer: pre-norm attention and feed-forward, optional post norms."""

    attn_norm: RMSNorm
    attn: SelfAttention
    ffn_norm: RMSNorm
    ffn: FeedForward
    post_attn_norm: RMSNorm | None = None
    post_ffn_norm: RMSNorm | None = None

    def __call__(
        self,
        ctx: Context,
        x: Tensor,
        rope: RoPE,
        table: RopeTables,
        cache: Any,
        layer: int,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Return the layer's output; with ``rows``, only those tokens (after attention)."""
        a = self.attn(ctx, self.attn_norm(ctx, x), rope, table, cache, layer)
        if rows is not None:
            a = a.rows(ctx, rows)
            x = x.rows(ctx, rows)
        # A post norm and the residual add are one node (rms_norm_add) unless the norm is unfused.
        if self.post_attn_norm is not None:
            x = self.post_attn_norm(ctx, a, residual=x)
        else:
            x = x.add(ctx, a)
        f = self.ffn(ctx, self.ffn_norm(ctx, x))
        if self.post_ffn_norm is not None:
            return self.post_ffn_norm(ctx, f, residual=x)
        return x.add(ctx, f)


# -- the model ----------------------------------------------------------------------------------


class Decoder:
    """A decoder-only transformer on a backend; subclasses define an architecture.

    Build it after ``backend.load()`` (or at least before the first :meth:`build`, which may read
    weights such as RoPE frequency factors). One model serves any number of caches and batches.

    Subclasses set :attr:`architectures` and override :meth:`read_config`, :meth:`weight_specs`,
    :meth:`make_block`, and where they differ :meth:`layer_rope`, :meth:`layer_window` and
    :attr:`embed_scale`.

    Args:
        backend: A backend constructed from the model's GGUF file.
        config: The hyperparameters; read from ``backend.config()`` when ``None``.

    Raises:
        ModelFileError: Another architecture, a missing or inconsistent key, a missing tensor or
            one of the wrong shape (named with the file).
    """

    architectures: ClassVar[tuple[str, ...]] = ()
    """The ``general.architecture`` values this class runs."""

    __slots__ = (
        "_kept",
        "_kept_lock",
        "_ropes",
        "backend",
        "blocks",
        "config",
        "embedding",
        "output",
        "output_norm",
    )

    def __init__(self, backend: Backend, config: TransformerConfig | None = None) -> None:
        where = model_source(backend)
        self.backend = backend
        self.config = cfg = config or self.read_config(backend.config(), where)
        if cfg.architecture not in self.architectures:
            from mlplug.errors import UnsupportedModelError

            raise UnsupportedModelError(
                f"[{type(self).__name__}] {where}: unsupported architecture "
                f"{cfg.architecture!r} (supported: {', '.join(self.architectures)})"
            )

        def shape_of(name: str) -> tuple[int, ...] | None:
            t = backend.get(name)
            return None if t is None else t.shape()

        check_weights(cfg.architecture, self.weight_specs(cfg), shape_of, where)
        self.embedding = Embedding(require(backend, "token_embd.weight"))
        self.blocks: tuple[Block, ...] = tuple(
            self.make_block(backend, cfg, il) for il in range(cfg.n_layer)
        )
        self.output_norm = RMSNorm(require(backend, "output_norm.weight"), cfg.eps)
        self.output = Linear.from_backend(backend, "output")
        self._ropes: list[RoPE] | None = None
        self._kept: dict[int, _KeptGraphs] = {}  # by id(cache); see forward
        self._kept_lock = threading.Lock()

    # -- what an architecture defines -----------------------------------------------------------

    @classmethod
    def read_config(cls, config: Config, where: str = "the model") -> TransformerConfig:
        """Read the hyperparameters (default: normal-style RoPE)."""
        return TransformerConfig.from_config(config, neox=False, where=where)

    @classmethod
    def weight_specs(cls, cfg: TransformerConfig) -> list[WeightSpec]:
        """Return every weight the model reads, with its shape (default: the llama set)."""
        e, f = cfg.n_embd, cfg.n_ff
        q, kv, o = cfg.n_head * cfg.head_dim_k, cfg.n_head_kv * cfg.head_dim_k, cfg.n_head
        specs = [WeightSpec("token_embd.weight", (e, cfg.n_vocab or None))]
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            specs += [
                WeightSpec(p + "attn_norm.weight", (e,)),
                WeightSpec(p + "attn_q.weight", (e, q)),
                WeightSpec(p + "attn_k.weight", (e, kv)),
                WeightSpec(p + "attn_v.weight", (e, cfg.n_head_kv * cfg.head_dim_v)),
                WeightSpec(p + "attn_output.weight", (o * cfg.head_dim_v, e)),
                WeightSpec(p + "ffn_norm.weight", (e,)),
                WeightSpec(p + "ffn_gate.weight", (e, f)),
                WeightSpec(p + "ffn_up.weight", (e, f)),
                WeightSpec(p + "ffn_down.weight", (f, e)),
            ]
        specs += [
            WeightSpec("output_norm.weight", (e,)),
            WeightSpec("output.weight", (e, cfg.n_vocab or None), required=False),
        ]
        return specs

    def make_block(self, backend: Backend, cfg: TransformerConfig, il: int) -> Block:
        """Return layer ``il`` (default: llama: no biases, no q/k or post norms, SiLU)."""
        return self.standard_block(backend, cfg, il)

    @staticmethod
    def standard_block(
        backend: Backend,
        cfg: TransformerConfig,
        il: int,
        *,
        qkv_bias: bool | None = False,
        qk_norm: bool = False,
        post_norms: bool = False,
        activation: str = "silu",
        scale: float | None = None,
    ) -> Block:
        """Return layer ``il`` made of the standard GGUF tensor names ``blk.<il>.*``.

        Args:
            backend: The model's backend.
            cfg: Its hyperparameters.
            il: The layer index.
            qkv_bias: ``True``: q/k/v biases required; ``False``: none; ``None``: if present.
            qk_norm: Per-head RMSNorm of q and k (``attn_q_norm``, ``attn_k_norm``).
            post_norms: ``post_attention_norm`` and ``post_ffw_norm`` after each sub-layer.
            activation: ``"silu"`` or ``"gelu"``.
            scale: Attention score multiplier (default ``1/sqrt(head_dim_k)``).
        """
        p = f"blk.{il}."

        def norm(name: str) -> RMSNorm:
            return RMSNorm(require(backend, p + name + ".weight"), cfg.eps)

        attn = SelfAttention(
            wq=Linear.from_backend(backend, p + "attn_q", qkv_bias),
            wk=Linear.from_backend(backend, p + "attn_k", qkv_bias),
            wv=Linear.from_backend(backend, p + "attn_v", qkv_bias),
            wo=Linear.from_backend(backend, p + "attn_output"),
            n_head=cfg.n_head,
            n_head_kv=cfg.n_head_kv,
            head_dim_k=cfg.head_dim_k,
            head_dim_v=cfg.head_dim_v,
            scale=1.0 / math.sqrt(cfg.head_dim_k) if scale is None else scale,
            q_norm=norm("attn_q_norm") if qk_norm else None,
            k_norm=norm("attn_k_norm") if qk_norm else None,
        )
        ffn = FeedForward(
            Linear.from_backend(backend, p + "ffn_gate"),
            Linear.from_backend(backend, p + "ffn_up"),
            Linear.from_backend(backend, p + "ffn_down"),
            activation,
        )
        return Block(
            attn_norm=norm("attn_norm"),
            attn=attn,
            ffn_norm=norm("ffn_norm"),
            ffn=ffn,
            post_attn_norm=norm("post_attention_norm") if post_norms else None,
            post_ffn_norm=norm("post_ffw_norm") if post_norms else None,
        )

    def layer_ropes(self) -> list[RoPE]:
        """Return the RoPE of every layer (equal ones shared, so their tables are built once).

        Default: ``config.rope`` with the per-layer ``rope_freqs`` factors when the file has them
        (per-layer copies of one tensor, SEMANTICS §6.5 rule 4: read once, after load).
        """
        shared: dict[tuple[float, ...] | None, RoPE] = {}
        ropes = []
        for il in range(self.config.n_layer):
            t = self.backend.get(f"blk.{il}.rope_freqs.weight")
            factors = None if t is None else tuple(float(v) for v in t.floats())
            if factors not in shared:
                shared[factors] = RoPE(self.config.rope, factors)
            ropes.append(shared[factors])
        return ropes

    def layer_window(self, il: int) -> int | None:
        """Return layer ``il``'s sliding attention window ``w`` (a token at ``p`` sees
        ``p − w … p``), or ``None`` for full causal attention. Default: ``None``."""
        return None

    @property
    def embed_scale(self) -> float | None:
        """A multiplier of the token embeddings, or ``None`` (default)."""
        return None

    # -- the common interface -------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        """The number of logits per token."""
        return self.output.out_features

    def new_cache(
        self,
        *,
        capacity: int,
        max_sequences: int = 1,
        max_batch: int = 512,
        dtype: DType = DType.F16,
        config: CacheConfig | None = None,
    ) -> Any:
        """Return an initialised KV cache for this model.

        A :class:`mlplug.kvcache.Causal` when every layer attends the same way; a
        :class:`mlplug.nn.LayerCaches` (one ``Causal`` per distinct window) otherwise.

        Args:
            capacity: Positions per sequence.
            max_sequences: Sequences held at once.
            max_batch: The largest batch that will be processed.
            dtype: The K/V element type (a CACHE dtype).
            config: A layout to force (e.g. ``CacheConfig()`` for the un-fused attention path);
                ``None`` uses the backend's ``cache_config()``.
        """
        windows = [self.layer_window(il) for il in range(self.config.n_layer)]
        if len(set(windows)) <= 1:
            from mlplug.kvcache import Causal

            window = windows[0] if windows else None
            cache = Causal(window_size=window)
            if config is not None:
                cache.set_config(config)
            cache.init(self.backend, dtype, max_sequences, capacity, max_batch)
            return cache
        return LayerCaches.create(
            self.backend,
            windows,
            dtype=dtype,
            max_sequences=max_sequences,
            capacity=capacity,
            max_batch=max_batch,
            config=config,
        )

    def build(self, ctx: Context, cache: Any, batch: Batch, *, reserve: bool = False) -> Tensor:
        """Build the graph of one batch; return the logits ``[n_vocab, len(batch.outputs)]``.

        Calls ``cache.start_forward`` (which reserves the batch's cells and builds the mask),
        then adds every layer's nodes to ``ctx``. The caller forwards and computes the result.
        With ``reserve=True`` the cache is only sized (nothing is stored) — for ``ctx.reserve()``.
        """
        cache.start_forward(ctx, batch, reserve=reserve)
        return self._graph(ctx, cache, batch)[0]

    def _graph(self, ctx: Context, cache: Any, batch: Batch) -> tuple[Tensor, _Inputs]:
        """Add the nodes of ``batch`` to ``ctx`` over a cache whose batch is attached; return
        the logits and the inputs made for it (what a kept graph refills)."""
        cfg = self.config
        n = len(batch.tokens)
        inp = ctx.input()
        tokens = inp.from_int_slice(list(batch.tokens), n)
        x = self.embedding(ctx, tokens)  # [n_embd, T]
        if self.embed_scale is not None:
            x = x.scale(ctx, self.embed_scale)
        outputs = list(batch.outputs) or [n - 1]
        out_ids = None if outputs == list(range(n)) else inp.from_int_slice(outputs, len(outputs))
        if out_ids is not None and cfg.n_layer == 0:
            x = x.rows(ctx, out_ids)
        if self._ropes is None:
            self._ropes = self.layer_ropes()
        tables: dict[int, tuple[RoPE, RopeTables]] = {}
        for il, block in enumerate(self.blocks):
            rope = self._ropes[il]
            if id(rope) not in tables:
                tables[id(rope)] = (rope, rope.tables(ctx, batch.positions))
            # Only the output tokens matter past the last attention.
            rows = out_ids if il == cfg.n_layer - 1 else None
            x = block(ctx, x, rope, tables[id(rope)][1], cache, il, rows)
        logits = self.output(ctx, self.output_norm(ctx, x))
        return logits, _Inputs(tokens, out_ids, tuple(tables.values()))

    def reserve(self, cache: Any, n_tokens: int) -> None:
        """Allocate the KV cache and the compute buffers of a worst-case batch of ``n_tokens``.

        After this, ``backend.backend_memory()`` shows the cache and graph sizes, and an
        ``ErrNoMem`` here means the model does not fit with these settings.
        """
        ctx = self.backend.new_context()
        try:
            batch = Batch(
                (0,) * n_tokens, tuple(range(n_tokens)), (0,) * n_tokens, tuple(range(n_tokens))
            )
            logits = self.build(ctx, cache, batch, reserve=True)
            ctx.forward(logits)
            ctx.reserve()
        finally:
            ctx.close()

    def forward(self, cache: Any, batch: Batch) -> np.ndarray:
        """Run one batch through the model; return the logits, numpy ``(len(outputs), n_vocab)``.

        The batch's keys and values are stored in ``cache``, so the next call continues the
        sequences. The graph of a small batch (up to :data:`KEEP_TOKENS` tokens: decode steps,
        server batches) is kept for the cache and computed again, its inputs refilled, for the
        next batch of the same structure (see :meth:`structure`), when the cache can refill its
        own inputs (``place``/``layout``/``attach``/``refill``: :class:`mlplug.kvcache.Causal`,
        :class:`LayerCaches`). Larger batches, and caches without those methods, get a graph
        built for the call. The logits are the same either way, bit for bit.
        """
        if len(batch.tokens) > KEEP_TOKENS or not _refillable(cache):
            ctx = self.backend.new_context()
            try:
                logits = self.build(ctx, cache, batch)
                ctx.forward(logits).compute(logits)
                values = logits.numpy()
            finally:
                ctx.close()
            return values.reshape(-1, self.n_vocab)
        cache.place(batch)
        key = self.structure(cache, batch)
        kept = self._kept_for(cache)
        graph = kept.get(key)
        if graph is None:
            ctx = self.backend.new_context()
            try:
                attached = cache.attach(ctx)
                logits, inputs = self._graph(ctx, cache, batch)
                ctx.forward(logits)
            except BaseException:
                ctx.close()
                raise
            graph = _Kept(ctx, logits, inputs, attached)
            kept.add(key, graph)
        else:
            graph.inputs.refill(batch)
            cache.refill(graph.cache_inputs)
        try:
            graph.ctx.compute(graph.logits)
            values = graph.logits.numpy()
        except BaseException:
            kept.drop(key)
            raise
        finally:
            release_results(graph.ctx)
        return values.reshape(-1, self.n_vocab)

    def structure(self, cache: Any, batch: Batch) -> Hashable:
        """Return what the structure of :meth:`forward`'s graph for ``batch`` depends on.

        The batch's size and outputs (all tokens, or how many), and the cache's ``layout()``
        for the batch it has placed (sizes, the history's padded length, the config: flash
        attention or not). Graphs of equal structures differ only in their inputs' values.
        """
        n = len(batch.tokens)
        outputs = list(batch.outputs) or [n - 1]
        out = None if outputs == list(range(n)) else len(outputs)
        return (n, out, cache.layout())

    def _kept_for(self, cache: Any) -> _KeptGraphs:
        """Return the graphs kept for ``cache`` (closed when the cache is collected)."""
        with self._kept_lock:
            kept = self._kept.get(id(cache))
            if kept is None or kept.cache() is not cache:
                table, lock = self._kept, self._kept_lock

                def gone(_: object, key: int = id(cache)) -> None:
                    with lock:
                        dead = table.pop(key, None)
                    # At interpreter exit the plugins' modules may be gone: nothing to free.
                    if dead is not None and not sys.is_finalizing():
                        dead.close()

                kept = self._kept[id(cache)] = _KeptGraphs(weakref.ref(cache, gone))
            return kept

    def close_graphs(self) -> None:
        """Close every graph kept by :meth:`forward` (they are rebuilt when needed)."""
        with self._kept_lock:
            kept, self._kept = list(self._kept.values()), {}
        for graphs in kept:
            graphs.close()


KEEP_TOKENS = 64
"""The largest batch whose graph :meth:`Decoder.forward` keeps for reuse."""

KEEP_GRAPHS = 4
"""Graphs kept per cache (the least recently used is closed first)."""


def _refillable(cache: Any) -> bool:
    return all(callable(getattr(cache, m, None)) for m in ("place", "layout", "attach", "refill"))


@dataclass(frozen=True, slots=True)
class _Inputs:
    """The model's own inputs of a graph: token ids, output rows and RoPE tables."""

    tokens: Tensor
    out_ids: Tensor | None
    tables: tuple[tuple[RoPE, RopeTables], ...]

    def refill(self, batch: Batch) -> None:
        """Overwrite them with ``batch``'s values (a batch of the graph's structure)."""
        from mlplug.context import overwrite

        overwrite(self.tokens, batch.tokens)
        if self.out_ids is not None:
            overwrite(self.out_ids, list(batch.outputs) or [len(batch.tokens) - 1])
        for rope, tables in self.tables:
            rope.refill(tables, batch.positions)


@dataclass(frozen=True, slots=True)
class _Kept:
    """A graph kept between calls: its context, logits, and the inputs refilled each time."""

    ctx: Context
    logits: Tensor
    inputs: _Inputs
    cache_inputs: Any


class _KeptGraphs:
    """The graphs kept for one cache, by structure, least recently used first."""

    __slots__ = ("cache", "graphs")

    def __init__(self, cache: weakref.ref[Any]) -> None:
        self.cache = cache
        self.graphs: OrderedDict[Hashable, _Kept] = OrderedDict()

    def get(self, key: Hashable) -> _Kept | None:
        graph = self.graphs.get(key)
        if graph is None:
            return None
        if is_closed(graph.ctx):  # closed under it (the backend closed): build again
            del self.graphs[key]
            return None
        self.graphs.move_to_end(key)
        return graph

    def add(self, key: Hashable, graph: _Kept) -> None:
        self.graphs[key] = graph
        while len(self.graphs) > KEEP_GRAPHS:
            _, old = self.graphs.popitem(last=False)
            old.ctx.close()

    def drop(self, key: Hashable) -> None:
        graph = self.graphs.pop(key, None)
        if graph is not None:
            graph.ctx.close()

    def close(self) -> None:
        graphs, self.graphs = list(self.graphs.values()), OrderedDict()
        for graph in graphs:
            graph.ctx.close()
