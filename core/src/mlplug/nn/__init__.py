"""Building blocks for models written against the public ``Tensor``/``Context`` API.

Every block is a thin, stateless wrapper around ops of the contract (SEMANTICS §5): it holds
weights (tensors from ``backend.get``) and builds graph nodes when called; nothing is computed
until ``ctx.compute``. Blocks work on any backend and any device placement, because the engine
runs each node where its weights live.

* :class:`Linear`, :class:`Embedding`, :class:`RMSNorm`, :class:`LayerNorm` — ``layers``.
* :class:`RoPE` and :class:`RopeConfig` — rotary position embeddings built from the contract's ops
  (``rope`` is not an op of the table), with cos/sin tables computed on the host.
* :class:`Decoder` and its parts (:class:`Block`, :class:`SelfAttention`, :class:`FeedForward`,
  :class:`TransformerConfig`, :class:`Batch`, :class:`WeightSpec`) — ``transformer``: the
  structure every decoder-only model of ``mlplug.models`` shares; :class:`LayerCaches` — one KV
  cache per attention window for models whose layers differ.
* :func:`attention` — SEMANTICS §8.7: fused ``scaled_dot_product_attention`` when the backend
  provides it for the cache's layout, the reference un-fused graph
  (:func:`unfused_attention`) otherwise.
"""

from __future__ import annotations

from mlplug.nn._attention import attention, unfused_attention
from mlplug.nn.layer_caches import LayerCaches
from mlplug.nn.layers import Embedding, LayerNorm, Linear, RMSNorm
from mlplug.nn.rope import RoPE, RopeConfig, RopeTables
from mlplug.nn.transformer import (
    Batch,
    Block,
    Decoder,
    FeedForward,
    SelfAttention,
    TransformerConfig,
    WeightSpec,
)

__all__ = [
    "Batch",
    "Block",
    "Decoder",
    "Embedding",
    "FeedForward",
    "LayerCaches",
    "LayerNorm",
    "Linear",
    "RMSNorm",
    "RoPE",
    "RopeConfig",
    "RopeTables",
    "SelfAttention",
    "TransformerConfig",
    "WeightSpec",
    "attention",
    "unfused_attention",
]
