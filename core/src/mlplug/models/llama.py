"""The llama family: ``llama`` and ``qwen2``.

* ``llama`` (Llama 1/2/3, Mistral, TinyLlama, SmolLM…): grouped-query attention, normal-style
  RoPE, tied or untied output, optional per-layer ``rope_freqs`` (Llama 3.1).
* ``qwen2``: the same with biases on the q/k/v projections and neox-style RoPE.

The structure (embedding, pre-norm blocks with a SiLU-gated feed-forward, final norm, output) is
:class:`mlplug.nn.Decoder`'s default; this file only says what the two architectures differ in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mlplug.nn.transformer import Batch, Block, Decoder, TransformerConfig, WeightSpec

if TYPE_CHECKING:
    from mlplug.backend import Backend
    from mlplug.config import Config

__all__ = ["ARCHITECTURES", "Batch", "Llama", "LlamaConfig"]

ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2")
"""The architectures :class:`Llama` runs."""

LlamaConfig = TransformerConfig
"""The hyperparameters of a llama-family model (the shared :class:`TransformerConfig`)."""

_NEOX = frozenset({"qwen2"})
_QKV_BIAS = frozenset({"qwen2"})


class Llama(Decoder):
    """A ``llama`` or ``qwen2`` model on a backend (see :class:`mlplug.nn.Decoder`)."""

    architectures: ClassVar[tuple[str, ...]] = ARCHITECTURES
    __slots__ = ()

    @classmethod
    def read_config(cls, config: Config, where: str = "the model") -> TransformerConfig:
        """Read the hyperparameters; qwen2 rotates neox-style."""
        neox = config.architecture() in _NEOX
        return TransformerConfig.from_config(config, neox=neox, where=where)

    @classmethod
    def weight_specs(cls, cfg: TransformerConfig) -> list[WeightSpec]:
        """The llama weights, plus the q/k/v biases of qwen2."""
        specs = super().weight_specs(cfg)
        if cfg.architecture in _QKV_BIAS:
            kv = cfg.n_head_kv * cfg.head_dim_k
            for i in range(cfg.n_layer):
                specs += [
                    WeightSpec(f"blk.{i}.attn_q.bias", (cfg.n_head * cfg.head_dim_k,)),
                    WeightSpec(f"blk.{i}.attn_k.bias", (kv,)),
                    WeightSpec(f"blk.{i}.attn_v.bias", (cfg.n_head_kv * cfg.head_dim_v,)),
                ]
        return specs

    def make_block(self, backend: Backend, cfg: TransformerConfig, il: int) -> Block:
        """A pre-norm SiLU block; qwen2 with q/k/v biases."""
        bias = cfg.architecture in _QKV_BIAS
        return self.standard_block(backend, cfg, il, qkv_bias=bias)
