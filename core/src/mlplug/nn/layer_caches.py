"""``LayerCaches``: one KV cache per attention window, for models whose layers differ.

Gemma 3 interleaves sliding-window layers (each token sees the last ``w`` positions) with global
ones (the whole history). A single :class:`mlplug.kvcache.Causal` has one window, so such a model
keeps one ``Causal`` per distinct window and sends each layer to its own: the windowed cache then
holds only ``max_sequences · (w + 1) + max_batch`` cells instead of the full capacity (as
llama.cpp's "iSWA" cache does). To the model and :func:`mlplug.nn.attention` this object is one
cache: ``set_layer`` picks the layer's cache, ``put``/``get`` go to it, and everything that
concerns the sequences (``start_forward`` and its parts ``place``/``attach``/``refill``,
``remove``, ``copy_prefix``, ``close``) goes to all.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlplug.backend import Backend
    from mlplug.context import Context
    from mlplug.dtype import DType
    from mlplug.kvcache import Causal, ForwardInputs
    from mlplug.params import CacheConfig
    from mlplug.tensor import Tensor

__all__ = ["LayerCaches"]


class LayerCaches:
    """Several :class:`~mlplug.kvcache.Causal` caches used as one, chosen per layer.

    Args:
        caches: One initialised cache per window (``None``: full causal attention).
        windows: The window of each layer (a key of ``caches``).

    Raises:
        ValueError: A layer's window has no cache.
    """

    __slots__ = ("__weakref__", "_caches", "_current", "_windows")

    def __init__(self, caches: dict[int | None, Causal], windows: Sequence[int | None]) -> None:
        missing = {w for w in windows if w not in caches}
        if missing:
            raise ValueError(f"[LayerCaches] no cache for window(s) {sorted(map(str, missing))}")
        self._caches = caches
        self._windows = tuple(windows)
        self._current: Causal = caches[self._windows[0]] if windows else next(iter(caches.values()))

    @classmethod
    def create(
        cls,
        backend: Backend,
        windows: Sequence[int | None],
        *,
        dtype: DType,
        max_sequences: int,
        capacity: int,
        max_batch: int,
        config: CacheConfig | None = None,
    ) -> LayerCaches:
        """Create and initialise one ``Causal`` per distinct window of ``windows``."""
        from mlplug.kvcache import Causal

        caches: dict[int | None, Causal] = {}
        try:
            for w in dict.fromkeys(windows):
                cache = Causal(window_size=w)
                if config is not None:
                    cache.set_config(config)
                cache.init(backend, dtype, max_sequences, capacity, max_batch)
                caches[w] = cache
        except BaseException:
            for cache in caches.values():
                cache.close()
            raise
        return cls(caches, windows)

    @property
    def caches(self) -> dict[int | None, Causal]:
        """The caches by window."""
        return dict(self._caches)

    # -- what a layer's attention uses ----------------------------------------------------------

    def set_layer(self, i: int) -> None:
        """Select layer ``i``: its window's cache, and that cache's layer ``i``."""
        if not 0 <= i < len(self._windows):
            raise IndexError(f"[LayerCaches] layer {i} outside 0..{len(self._windows) - 1}")
        self._current = self._caches[self._windows[i]]
        self._current.set_layer(i)

    def put(self, ctx: Context, key: Tensor, value: Tensor) -> None:
        """Store the batch's keys and values in the current layer's cache."""
        self._current.put(ctx, key, value)

    def get(self, ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
        """Return the current layer's keys, values and mask."""
        return self._current.get(ctx)

    @property
    def config(self) -> CacheConfig | None:
        """The resolved layout (the same for every cache)."""
        return self._current.config

    @property
    def backend(self) -> Backend | None:
        """The backend the caches live on."""
        return self._current.backend

    @property
    def dtype(self) -> DType:
        """The K/V storage dtype."""
        return self._current.dtype

    # -- what concerns the sequences: every cache -----------------------------------------------

    def start_forward(self, ctx: Context, batch: Any, reserve: bool = False) -> None:
        """Place the batch in every cache and build each one's mask."""
        for cache in self._caches.values():
            cache.start_forward(ctx, batch, reserve=reserve)

    def place(self, batch: Any, reserve: bool = False) -> None:
        """Place the batch in every cache (``Causal.place``), building nothing."""
        for cache in self._caches.values():
            cache.place(batch, reserve=reserve)

    def layout(self) -> Hashable:
        """Return the layouts of every cache (``Causal.layout``): equal layouts, equal graphs."""
        return tuple(cache.layout() for cache in self._caches.values())

    def attach(self, ctx: Context) -> tuple[ForwardInputs, ...]:
        """Create every cache's inputs for the placed batch on ``ctx`` (``Causal.attach``)."""
        return tuple(cache.attach(ctx) for cache in self._caches.values())

    def refill(self, inputs: tuple[ForwardInputs, ...]) -> None:
        """Rewrite inputs made by :meth:`attach` for the placed batch (``Causal.refill``)."""
        caches = list(self._caches.values())
        if len(inputs) != len(caches):
            raise ValueError(f"[LayerCaches] {len(inputs)} inputs for {len(caches)} caches")
        for cache, own in zip(caches, inputs, strict=True):
            cache.refill(own)

    def remove(self, seq: int, begin: int, end: int | None = None) -> None:
        """Remove positions ``begin … end−1`` of ``seq`` (``seq < 0``: every sequence)."""
        for cache in self._caches.values():
            cache.remove(seq, begin, end)

    def copy_prefix(self, src: int, dst: int, length: int) -> None:
        """Make ``dst`` share the first ``length`` positions of ``src``."""
        for cache in self._caches.values():
            cache.copy_prefix(src, dst, length)

    def can_resume(self, seq: int, pos: int) -> bool:
        """Return whether every cache can continue ``seq`` at ``pos``."""
        return all(cache.can_resume(seq, pos) for cache in self._caches.values())

    def close(self) -> None:
        """Close every cache. Idempotent."""
        for cache in self._caches.values():
            cache.close()
