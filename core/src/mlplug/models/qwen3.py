"""Qwen 3 (``qwen3``): the llama structure with per-head q/k RMSNorm and neox RoPE.

Each query and key head is RMS-normalised over its ``Dk`` values (``attn_q_norm``,
``attn_k_norm``, weights ``[Dk]``) before the rotation; there are no biases, and the head size
(``attention.key_length``) need not be ``n_embd / n_head``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mlplug.nn.transformer import Block, Decoder, TransformerConfig, WeightSpec

if TYPE_CHECKING:
    from mlplug.backend import Backend
    from mlplug.config import Config

__all__ = ["Qwen3"]


class Qwen3(Decoder):
    """A ``qwen3`` model on a backend (see :class:`mlplug.nn.Decoder`)."""

    architectures: ClassVar[tuple[str, ...]] = ("qwen3",)
    __slots__ = ()

    @classmethod
    def read_config(cls, config: Config, where: str = "the model") -> TransformerConfig:
        """Read the hyperparameters, neox-style RoPE."""
        return TransformerConfig.from_config(config, neox=True, where=where)

    @classmethod
    def weight_specs(cls, cfg: TransformerConfig) -> list[WeightSpec]:
        """The llama weights plus the per-head q/k norms."""
        specs = super().weight_specs(cfg)
        for i in range(cfg.n_layer):
            specs += [
                WeightSpec(f"blk.{i}.attn_q_norm.weight", (cfg.head_dim_k,)),
                WeightSpec(f"blk.{i}.attn_k_norm.weight", (cfg.head_dim_k,)),
            ]
        return specs

    def make_block(self, backend: Backend, cfg: TransformerConfig, il: int) -> Block:
        """A pre-norm SiLU block with q/k norms."""
        return self.standard_block(backend, cfg, il, qk_norm=True)
