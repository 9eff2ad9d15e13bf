"""Gemma 3 (``gemma3``, text): sandwich norms, q/k norms, GELU, interleaved local attention.

What differs from the llama structure (as llama.cpp's ``gemma3`` graph computes it):

* token embeddings are multiplied by ``sqrt(n_embd)``;
* each query and key head is RMS-normalised (``attn_q_norm``, ``attn_k_norm``) before RoPE;
* the attention and feed-forward outputs are RMS-normalised again before their residual adds
  (``post_attention_norm``, ``post_ffw_norm``);
* the feed-forward is GELU(tanh)-gated;
* layers come in groups of six: five local layers that see only the last
  ``attention.sliding_window`` positions (this one included), rotating with base 10000 and no
  scaling, then one global layer over the whole history with ``rope.freq_base`` and the file's
  rope scaling; RoPE is neox-style;
* the attention scale is ``1/sqrt(attention.key_length)`` (``1/sqrt(n_embd/n_head)`` for the
  62-layer 27B model, whose query pre-attention scalar differs);
* the output projection is tied to the embeddings.

The RMSNorm weights of Gemma GGUF files already include Gemma's ``+1`` (the converter adds it),
so they are used as stored.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

from mlplug.errors import ModelFileError
from mlplug.nn.rope import RoPE
from mlplug.nn.transformer import Block, Decoder, TransformerConfig, WeightSpec

if TYPE_CHECKING:
    from mlplug.backend import Backend
    from mlplug.config import Config

__all__ = ["Gemma3"]

PATTERN = 6
"""Layers per group: ``PATTERN − 1`` sliding-window layers, then one global layer."""

LOCAL_ROPE_BASE = 10000.0
"""RoPE base of the sliding-window layers (``rope.freq_base_swa`` overrides it)."""


class Gemma3(Decoder):
    """A ``gemma3`` model on a backend (see :class:`mlplug.nn.Decoder`)."""

    architectures: ClassVar[tuple[str, ...]] = ("gemma3",)
    __slots__ = ("_local_base",)

    def __init__(self, backend: Backend, config: TransformerConfig | None = None) -> None:
        self._local_base = backend.config().float("rope.freq_base_swa", LOCAL_ROPE_BASE)
        super().__init__(backend, config)

    @classmethod
    def read_config(cls, config: Config, where: str = "the model") -> TransformerConfig:
        """Read the hyperparameters; ``attention.sliding_window`` is required."""
        cfg = TransformerConfig.from_config(config, neox=True, where=where)
        if cfg.sliding_window <= 0:
            raise ModelFileError(
                f"[gemma3] {where}: missing metadata key gemma3.attention.sliding_window"
            )
        return cfg

    @classmethod
    def weight_specs(cls, cfg: TransformerConfig) -> list[WeightSpec]:
        """The llama weights plus q/k norms and the two post norms of every layer."""
        specs = super().weight_specs(cfg)
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            specs += [
                WeightSpec(p + "attn_q_norm.weight", (cfg.head_dim_k,)),
                WeightSpec(p + "attn_k_norm.weight", (cfg.head_dim_k,)),
                WeightSpec(p + "post_attention_norm.weight", (cfg.n_embd,)),
                WeightSpec(p + "post_ffw_norm.weight", (cfg.n_embd,)),
            ]
        return specs

    @staticmethod
    def is_local(il: int) -> bool:
        """Return whether layer ``il`` uses the sliding window."""
        return il % PATTERN < PATTERN - 1

    def make_block(self, backend: Backend, cfg: TransformerConfig, il: int) -> Block:
        """A sandwich-norm GELU block with q/k norms."""
        # Gemma 3 27B scales queries by 1/sqrt(n_embd / n_head) (query_pre_attn_scalar).
        head = cfg.n_embd // cfg.n_head if cfg.n_layer == 62 else cfg.head_dim_k
        return self.standard_block(
            backend,
            cfg,
            il,
            qk_norm=True,
            post_norms=True,
            activation="gelu",
            scale=1.0 / math.sqrt(head),
        )

    def layer_ropes(self) -> list[RoPE]:
        """Global layers: the file's RoPE; local layers: base 10000, no scaling."""
        rope = self.config.rope
        glob = RoPE(rope)
        local = RoPE(replace(rope, freq_base=self._local_base, freq_scale=1.0))
        return [local if self.is_local(il) else glob for il in range(self.config.n_layer)]

    def layer_window(self, il: int) -> int | None:
        """Local layers see ``sliding_window`` positions, the current one included."""
        return self.config.sliding_window - 1 if self.is_local(il) else None

    @property
    def embed_scale(self) -> float | None:
        """``sqrt(n_embd)``."""
        return math.sqrt(self.config.n_embd)
