"""The llama family of decoder-only transformers, from a GGUF file's weights and metadata.

Supported ``general.architecture`` values:

* ``llama`` (Llama 1/2/3, Mistral, TinyLlama, SmolLM…): grouped-query attention, normal-style
  RoPE, tied or untied output, optional per-layer ``rope_freqs`` (Llama 3.1).
* ``qwen2``: the same with biases on the q/k/v projections and neox-style RoPE.

A block is ``x += Wo·attn(rope(Wq·n), rope(Wk·n), Wv·n)`` with ``n = rms_norm(x)``, then
``x += Wdown·(silu(Wgate·n) ⊙ Wup·n)`` with ``n = rms_norm(x)``. Weights come from ``backend.get``
under their GGUF names and stay on the devices the backend placed them on; hyperparameters from
``backend.config()``. Several sequences can share one batch: tokens carry their position and
sequence id, and the KV cache (:class:`mlplug.kvcache.Causal`) masks each token to the history
of its own sequence. Only the tokens listed in ``Batch.outputs`` produce logits (their hidden
states are picked with ``rows`` before the last feed-forward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlplug.dtype import DType
from mlplug.errors import ShapeError
from mlplug.nn import Embedding, Linear, RMSNorm, RoPE, RopeConfig, RopeTables, attention
from mlplug.nn.layers import require

if TYPE_CHECKING:
    import numpy as np

    from mlplug.backend import Backend
    from mlplug.config import Config
    from mlplug.context import Context
    from mlplug.params import CacheConfig
    from mlplug.tensor import Tensor

__all__ = ["ARCHITECTURES", "Batch", "Llama", "LlamaConfig"]


@dataclass(frozen=True, slots=True)
class _Arch:
    neox: bool
    qkv_bias: bool


ARCHITECTURES: dict[str, _Arch] = {
    "llama": _Arch(neox=False, qkv_bias=False),
    "qwen2": _Arch(neox=True, qkv_bias=True),
}
"""The architectures this module runs: rotation style and q/k/v biases of each."""


def _per_layer(config: Config, key: str, n_layer: int, default: int) -> int:
    """Read a u32 hyperparameter that some files store as one value per layer."""
    value = config.uint(key, 0)
    if value:
        return value
    values = config.uints(key) or tuple(config.ints(key))
    if values:
        if len(set(values)) != 1 or len(values) != n_layer:
            raise ValueError(f"[llama] {key} varies per layer ({values}); not supported")
        return int(values[0])
    return default


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    """The hyperparameters of a llama-family model.

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
        rope: Rotation angles and style.
        qkv_bias: Whether the q/k/v projections have biases.
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
    qkv_bias: bool

    @classmethod
    def from_config(cls, config: Config) -> LlamaConfig:
        """Read the hyperparameters from ``backend.config()``.

        Raises:
            ValueError: The architecture is not in :data:`ARCHITECTURES`, or a required key is
                missing or inconsistent.
        """
        arch_name = config.architecture()
        arch = ARCHITECTURES.get(arch_name)
        if arch is None:
            raise ValueError(
                f"[llama] unsupported architecture {arch_name!r} (supported: "
                f"{', '.join(sorted(ARCHITECTURES))})"
            )
        if config.uint("expert_count", 0) > 0:
            raise ValueError("[llama] mixture-of-experts models are not supported")
        n_layer = config.uint("block_count")
        n_embd = config.uint("embedding_length")
        n_head = _per_layer(config, "attention.head_count", n_layer, 0)
        missing = [
            k
            for k, v in (
                ("block_count", n_layer),
                ("embedding_length", n_embd),
                ("attention.head_count", n_head),
            )
            if not v
        ]
        if missing:
            raise ValueError(
                f"[llama] missing metadata: {', '.join(arch_name + '.' + k for k in missing)}"
            )
        n_head_kv = _per_layer(config, "attention.head_count_kv", n_layer, n_head)
        if n_head % n_head_kv:
            raise ValueError(f"[llama] head_count {n_head} is not a multiple of {n_head_kv}")
        head_dim_k = config.uint("attention.key_length", n_embd // n_head)
        head_dim_v = config.uint("attention.value_length", head_dim_k)
        n_vocab = config.uint("vocab_size", 0) or len(config.strings("tokenizer.ggml.tokens"))
        return cls(
            architecture=arch_name,
            n_layer=n_layer,
            n_embd=n_embd,
            n_ff=_per_layer(config, "feed_forward_length", n_layer, 0),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim_k=head_dim_k,
            head_dim_v=head_dim_v,
            eps=config.float("attention.layer_norm_rms_epsilon", 1e-5),
            n_ctx_train=config.uint("context_length", 0),
            n_vocab=n_vocab,
            rope=RopeConfig.from_config(config, head_dim_k, neox=arch.neox),
            qkv_bias=arch.qkv_bias,
        )


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
class _Block:
    attn_norm: RMSNorm
    wq: Linear
    wk: Linear
    wv: Linear
    wo: Linear
    ffn_norm: RMSNorm
    w_gate: Linear
    w_up: Linear
    w_down: Linear
    rope_freqs: Tensor | None


class Llama:
    """A llama-family model on a backend.

    Build it after ``backend.load()`` (or at least before the first :meth:`build`, which reads the
    per-layer RoPE frequency factors). One model serves any number of caches and batches.

    Args:
        backend: A backend constructed from the model's GGUF file.
        config: The hyperparameters; read from ``backend.config()`` when ``None``.

    Raises:
        ValueError: Unsupported architecture or inconsistent metadata.
        KeyError: A required tensor is missing from the file.
    """

    __slots__ = ("_ropes", "backend", "blocks", "config", "embedding", "output", "output_norm")

    def __init__(self, backend: Backend, config: LlamaConfig | None = None) -> None:
        self.backend = backend
        self.config = cfg = config or LlamaConfig.from_config(backend.config())
        self.embedding = Embedding(require(backend, "token_embd.weight"))
        n_vocab = self.embedding.weight.dim(1)
        if cfg.n_vocab not in (0, n_vocab) or self.embedding.weight.dim(0) != cfg.n_embd:
            raise ValueError(
                f"[llama] token_embd.weight is {list(self.embedding.weight.shape())}, expected "
                f"[{cfg.n_embd}, {cfg.n_vocab or n_vocab}]"
            )
        bias = True if cfg.qkv_bias else None
        blocks = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            blocks.append(
                _Block(
                    attn_norm=RMSNorm(require(backend, p + "attn_norm.weight"), cfg.eps),
                    wq=Linear.from_backend(backend, p + "attn_q", bias),
                    wk=Linear.from_backend(backend, p + "attn_k", bias),
                    wv=Linear.from_backend(backend, p + "attn_v", bias),
                    wo=Linear.from_backend(backend, p + "attn_output", None),
                    ffn_norm=RMSNorm(require(backend, p + "ffn_norm.weight"), cfg.eps),
                    w_gate=Linear.from_backend(backend, p + "ffn_gate"),
                    w_up=Linear.from_backend(backend, p + "ffn_up"),
                    w_down=Linear.from_backend(backend, p + "ffn_down"),
                    rope_freqs=backend.get(p + "rope_freqs.weight"),
                )
            )
        self.blocks: tuple[_Block, ...] = tuple(blocks)
        self.output_norm = RMSNorm(require(backend, "output_norm.weight"), cfg.eps)
        self.output = Linear.from_backend(backend, "output")
        self._ropes: list[RoPE] | None = None

    @property
    def n_vocab(self) -> int:
        """The number of logits per token."""
        return self.output.out_features

    # -- cache ----------------------------------------------------------------------------------

    def new_cache(
        self,
        *,
        capacity: int,
        max_sequences: int = 1,
        max_batch: int = 512,
        dtype: DType = DType.F16,
        config: CacheConfig | None = None,
    ) -> Any:
        """Return an initialised :class:`mlplug.kvcache.Causal` for this model.

        Args:
            capacity: Positions per sequence.
            max_sequences: Sequences held at once.
            max_batch: The largest batch that will be processed.
            dtype: The K/V element type (a CACHE dtype).
            config: A layout to force (e.g. ``CacheConfig()`` for the un-fused attention path);
                ``None`` uses the backend's ``cache_config()``.
        """
        from mlplug.kvcache import Causal

        cache = Causal()
        if config is not None:
            cache.set_config(config)
        cache.init(self.backend, dtype, max_sequences, capacity, max_batch)
        return cache

    # -- graph ----------------------------------------------------------------------------------

    def _layer_ropes(self) -> list[RoPE]:
        # rope_freqs are per-layer copies of one tensor (SEMANTICS §6.5 rule 4): read the values
        # once (weights are readable after load) and share equal factors between layers.
        if self._ropes is None:
            shared: dict[tuple[float, ...] | None, RoPE] = {}
            ropes = []
            for block in self.blocks:
                factors = None
                if block.rope_freqs is not None:
                    factors = tuple(float(v) for v in block.rope_freqs.floats())
                if factors not in shared:
                    shared[factors] = RoPE(self.config.rope, factors)
                ropes.append(shared[factors])
            self._ropes = ropes
        return self._ropes

    def build(self, ctx: Context, cache: Any, batch: Batch, *, reserve: bool = False) -> Tensor:
        """Build the graph of one batch; return the logits ``[n_vocab, len(batch.outputs)]``.

        Calls ``cache.start_forward`` (which reserves the batch's cells and builds the mask),
        then adds every layer's nodes to ``ctx``. The caller forwards and computes the result.
        With ``reserve=True`` the cache is only sized (nothing is stored) — for ``ctx.reserve()``.
        """
        cfg = self.config
        n = len(batch.tokens)
        cache.start_forward(ctx, batch, reserve=reserve)
        inp = ctx.input()
        ids = inp.from_int_slice(list(batch.tokens), n)
        x = self.embedding(ctx, ids)  # [n_embd, T]

        tables: dict[int, RopeTables] = {}
        ropes = self._layer_ropes()
        outputs = list(batch.outputs) or [n - 1]
        out_ids = None if outputs == list(range(n)) else inp.from_int_slice(outputs, len(outputs))
        if out_ids is not None and cfg.n_layer == 0:
            x = x.rows(ctx, out_ids)
        scale = 1.0 / math.sqrt(cfg.head_dim_k)

        for il, block in enumerate(self.blocks):
            rope = ropes[il]
            if id(rope) not in tables:
                tables[id(rope)] = rope.tables(ctx, batch.positions)
            table = tables[id(rope)]
            h = block.attn_norm(ctx, x)
            q = block.wq(ctx, h).reshape(ctx, cfg.head_dim_k, cfg.n_head, n)
            k = block.wk(ctx, h).reshape(ctx, cfg.head_dim_k, cfg.n_head_kv, n)
            v = block.wv(ctx, h).reshape(ctx, cfg.head_dim_v, cfg.n_head_kv, n)
            q = rope(ctx, q, table)
            k = rope(ctx, k, table)
            cache.set_layer(il)
            a = attention(ctx, q, k, v, scale, cache)  # [Dv, H, T]
            a = block.wo(ctx, a.reshape(ctx, cfg.head_dim_v * cfg.n_head, n))
            if il == cfg.n_layer - 1 and out_ids is not None:
                # Only the output tokens matter past the last attention.
                a = a.rows(ctx, out_ids)
                x = x.rows(ctx, out_ids)
            x = x.add(ctx, a)
            h = block.ffn_norm(ctx, x)
            g = block.w_gate(ctx, h).silu(ctx).mul(ctx, block.w_up(ctx, h))
            x = x.add(ctx, block.w_down(ctx, g))

        return self.output(ctx, self.output_norm(ctx, x))

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
        sequences.
        """
        ctx = self.backend.new_context()
        try:
            logits = self.build(ctx, cache, batch)
            ctx.forward(logits).compute(logits)
            values = logits.numpy()
        finally:
            ctx.close()
        return values.reshape(-1, self.n_vocab)
