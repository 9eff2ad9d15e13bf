"""``mlplug.nn.attention`` (SEMANTICS §8.7): attention through an optional KV cache."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from mlplug.errors import ShapeError

if TYPE_CHECKING:
    from mlplug.context import Context
    from mlplug.params import CacheConfig
    from mlplug.tensor import Tensor

__all__ = ["attention", "unfused_attention"]


def _cache_config(cache: Any) -> CacheConfig | None:
    config = getattr(cache, "config", None)
    return config() if callable(config) else config


@functools.lru_cache(maxsize=32)
def _normalized(config: CacheConfig | None) -> CacheConfig | None:
    # Causal.init turns 0 paddings into 1 and OTHER into F32 (§8.2): compare what they mean.
    if config is None:
        return None
    from dataclasses import replace

    from mlplug.dtype import DType

    return replace(
        config,
        cache_padding=config.cache_padding or 1,
        mask_dtype=DType.F32 if config.mask_dtype is DType.OTHER else config.mask_dtype,
        mask_batch_padding=config.mask_batch_padding or 1,
    )


def _backend_config(ctx: Context, cache: Any) -> CacheConfig | None:
    backend = getattr(cache, "backend", None)
    if backend is None:
        backend = ctx._family.executor
    # What isinstance(backend, BackendCacheConfig) checks, without the protocol machinery
    # (it ran for every layer of every graph built).
    cache_config = getattr(backend, "cache_config", None)
    return cache_config() if callable(cache_config) else None


def unfused_attention(
    ctx: Context,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    scale: float,
    *,
    permuted_v: bool = False,
) -> Tensor:
    """Build the reference attention graph of §8.7 from ``mulmat``/``softmax`` and views.

    Args:
        ctx: The context to build on.
        query: ``[Dk, H, T]`` F32.
        key: ``[Dk, Hkv, L]``.
        value: ``[Dv, Hkv, L]``, or ``[L, Dv, Hkv]`` when ``permuted_v``.
        mask: ``[L, Tm]`` with ``Tm ≥ T`` (only the first ``T`` rows are used), or ``None``.
        scale: Multiplier of the scores.
        permuted_v: The value layout.

    Returns:
        ``[Dv, H, T]`` F32, contiguous.
    """
    tokens = query.dim(2)
    q = query.permute(ctx, 0, 2, 1, 3)  # [Dk, T, H]
    k = key.permute(ctx, 0, 2, 1, 3)  # [Dk, L, Hkv]
    v = value if permuted_v else value.permute(ctx, 1, 2, 0, 3).contiguous(ctx)  # [L, Dv, Hkv]
    kq = k.mulmat_full_prec(ctx, q).scale(ctx, scale)  # [L, T, H]
    if mask is not None:
        if mask.dim(1) != tokens:
            mask = mask.view(ctx, 0, mask.dim(0), mask.stride(1), tokens)
        kq = kq.add(ctx, mask)
    kqv = v.mulmat(ctx, kq.softmax(ctx))  # [Dv, T, H]
    return kqv.permute(ctx, 0, 2, 1, 3).contiguous(ctx)


def attention(
    ctx: Context,
    query: Tensor,
    key: Tensor | None,
    value: Tensor | None,
    scale: float,
    cache: Any = None,
) -> Tensor:
    """Return scaled-dot-product attention of ``query`` over the history (SEMANTICS §8.7).

    With a cache (a :class:`mlplug.kvcache.Causal` whose ``start_forward`` and ``set_layer`` have
    been called), ``key``/``value`` of this batch are put into it and the attention runs over the
    cached history with the causal mask. The backend's fused
    ``query.scaled_dot_product_attention`` is used when the query implements it and the cache was
    laid out for this backend (its config equals ``backend.cache_config()``); otherwise the
    un-fused graph of :func:`unfused_attention`. Without a cache the attention is over ``key`` and
    ``value`` alone, unmasked, un-fused.

    Args:
        ctx: The context to build on.
        query: ``[Dk, H, T]`` F32.
        key: ``[Dk, Hkv, T]``; may be ``None`` with a cache (attend to the history only).
        value: ``[Dv, Hkv, T]``; ``None`` exactly when ``key`` is.
        scale: Multiplier of the scores (usually ``1/sqrt(Dk)``).
        cache: A KV cache, or ``None``.

    Returns:
        ``[Dv, H, T]`` F32.

    Raises:
        ShapeError: The extents of query, key and value disagree.
        ValueError: ``key``/``value`` are missing without a cache, or only one is given.
    """
    if (key is None) != (value is None):
        raise ValueError("[attention] key and value must both be given or both be None")
    if key is not None and value is not None:
        if query.dim(0) != key.dim(0):
            raise ShapeError(
                f"[attention] query.dim(0) ({query.dim(0)}) != key.dim(0) ({key.dim(0)})"
            )
        if key.dim(1) != value.dim(1) or key.dim(2) != value.dim(2):
            raise ShapeError(
                f"[attention] key {list(key.shape())} and value {list(value.shape())} "
                "disagree in heads or tokens"
            )
    if cache is None:
        if key is None or value is None:
            raise ValueError("[attention] key and value are required without a cache")
        return unfused_attention(ctx, query, key, value, None, scale)

    if key is not None and value is not None:
        cache.put(ctx, key, value)
    key, value, mask = cache.get(ctx)
    config = _cache_config(cache)
    fused = (
        callable(getattr(query, "scaled_dot_product_attention", None))  # the protocol's check
        and config is not None
        and _normalized(config) == _normalized(_backend_config(ctx, cache))
    )
    if fused:
        return query.scaled_dot_product_attention(ctx, key, value, mask, scale)
    permuted = bool(config.permuted_v) if config is not None else False
    return unfused_attention(ctx, query, key, value, mask, scale, permuted_v=permuted)
