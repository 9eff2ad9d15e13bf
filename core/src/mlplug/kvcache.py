"""The causal KV cache ``mlplug.kvcache.Causal`` (SEMANTICS §8.1–§8.6).

Pure core code on the public API: storage is buffer tensors created through ``layer(i)``
contexts, writes are graph ``copy`` nodes into ``view`` nodes, reads are views. ``import mlplug``
does not import this module (``from mlplug.kvcache import Causal``); numpy is imported only by
the methods that scan cells. The per-cell metadata (positions, sequence sets, ranges) lives in
:class:`mlplug._kvcells.Cells`, which documents its data structure.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlplug._kvcells import Cells, Move
from mlplug.dtype import CACHE, FLOAT, DType
from mlplug.errors import CacheFullError, ContextError, DTypeError, ShapeError
from mlplug.params import BackendCacheConfig, CacheConfig

if TYPE_CHECKING:
    import numpy as np

    from mlplug.backend import Backend
    from mlplug.context import Context
    from mlplug.tensor import Tensor

__all__ = ["Batch", "Causal", "ForwardInputs", "ShiftFn"]

ShiftFn = Callable[["Context", int, "Tensor", "Tensor"], "Tensor"]
"""``shift(ctx, layer, key_view, deltas) -> Tensor``: re-encode cached keys by I32 deltas."""

# Nodes one moved run of cells costs in a defragmentation graph: for K and for V a source view,
# a destination view and the copy.
_NODES_PER_MOVE = 6


@dataclass(frozen=True, slots=True)
class Batch:
    """The tokens of one forward pass: token ``i`` is at ``positions[i]`` of ``sequences[i]``.

    ``Causal.start_forward`` accepts any object with these two attributes.
    """

    positions: tuple[int, ...]
    sequences: tuple[int, ...]

    def __post_init__(self) -> None:
        positions = tuple(operator.index(p) for p in self.positions)
        sequences = tuple(operator.index(s) for s in self.sequences)
        if len(positions) != len(sequences):
            raise ValueError(f"Batch: {len(positions)} positions but {len(sequences)} sequences")
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "sequences", sequences)


class ForwardInputs:
    """The input tensors of one forward graph over a :class:`Causal` cache.

    Made by :meth:`Causal.attach` (and so by ``start_forward``); :meth:`Causal.refill` rewrites
    their values for a later batch of the same layout, so that a caller can keep its graph.

    Attributes:
        layout: The :meth:`Causal.layout` they were made for.
        mask: The mask ``get`` returns, ``[L, Bp]`` of the mask dtype.
        mask_values: The F32 input holding the mask's values (``mask`` itself when the mask is
            F32, else the source of its ``copy``); ``None`` for the unfilled mask of ``reserve``.
        cell_ids: The batch's cell indices, I32 ``[B]`` (``put`` writes through them).
        value_ids: Per ``Dv·Hkv``: the element indices of the batch's values in a transposed V
            (made by ``put`` with ``permuted_v``).
    """

    __slots__ = ("cell_ids", "layout", "mask", "mask_values", "value_ids")

    def __init__(
        self, layout: Hashable, mask: Tensor, mask_values: Tensor | None, cell_ids: Tensor
    ) -> None:
        self.layout = layout
        self.mask = mask
        self.mask_values = mask_values
        self.cell_ids = cell_ids
        self.value_ids: dict[int, Tensor] = {}


def _roundup(n: int, m: int) -> int:
    return -(-n // m) * m


def _count(what: str, name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what}: {name} must be an int, got bool")
    v = operator.index(value)  # type: ignore[arg-type]
    if v < minimum:
        raise ValueError(f"{what}: {name} must be >= {minimum}, got {v}")
    return v


def _rows_of(ctx: Context, t: Tensor, row: int, rows: int) -> Tensor:
    """Return ``t`` as ``[row, rows]`` (made contiguous first when it is a strided view)."""
    if not t.is_contiguous():
        t = t.contiguous(ctx)
    return t.reshape(ctx, row, rows)


class Causal:
    """A causal KV cache: full, sliding-window (``window_size``) or chunked (``chunk_size``).

    Args:
        shift: ``shift(ctx, layer, key_view, deltas)`` returns the keys of ``key_view``
            (``[Dk, Hkv, n]``) re-encoded by the per-cell I32 position ``deltas`` (``[n]``),
            e.g. with RoPE; ``remove`` with an ``end`` needs it.
        window_size: Sliding window ``w``: a token at ``p`` sees positions ``p - w … p``.
        chunk_size: Chunk ``c``: a token sees the positions of its chunk up to itself.

    Raises:
        ValueError: Both ``window_size`` and ``chunk_size`` given, or a negative window or a
            chunk below 1.
    """

    __slots__ = (
        "__weakref__",
        "_backend",
        "_batch",
        "_cells",
        "_chunk",
        "_closed",
        "_config",
        "_config_set",
        "_ctxs",
        "_dtype",
        "_except",
        "_inputs",
        "_keys",
        "_layer",
        "_loc",
        "_max_batch",
        "_max_seqs",
        "_range",
        "_reserve",
        "_shift",
        "_values",
        "_window",
    )

    def __init__(
        self,
        shift: ShiftFn | None = None,
        *,
        window_size: int | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if window_size is not None and chunk_size is not None:
            raise ValueError("Causal: give at most one of window_size and chunk_size")
        self._shift = shift
        self._window = (
            None if window_size is None else _count("Causal", "window_size", window_size, 0)
        )
        self._chunk = None if chunk_size is None else _count("Causal", "chunk_size", chunk_size)
        self._config_set: CacheConfig | None = None
        self._config: CacheConfig | None = None  # resolved by init
        self._backend: Backend | None = None
        self._dtype = DType.F32
        self._max_batch = 0
        self._max_seqs = 0
        self._cells = Cells(0)
        self._ctxs: dict[int, Context] = {}
        self._keys: dict[int, Tensor] = {}
        self._values: dict[int, Tensor] = {}
        self._layer = 0
        self._closed = False
        # The current batch, set by start_forward.
        self._batch: tuple[list[int], list[int]] = ([], [])
        self._loc = 0
        self._range = (0, -1)  # R, padded, inclusive
        self._reserve = False
        self._except: frozenset[int] = frozenset()
        # The input tensors of the current forward graph (mask, cell indices), or None.
        self._inputs: ForwardInputs | None = None

    # -- configuration (§8.2) -----------------------------------------------------------------

    def set_config(self, config: CacheConfig) -> None:
        """Set the cache layout explicitly: at most once, before ``init``.

        Raises:
            RuntimeError: A second call, or a call after ``init``.
        """
        if self._config is not None:
            raise RuntimeError("Causal.set_config: the cache is already initialised")
        if self._config_set is not None:
            raise RuntimeError("Causal.set_config: the config has already been set")
        if not isinstance(config, CacheConfig):
            raise TypeError(
                f"Causal.set_config: expected a CacheConfig, got {type(config).__name__}"
            )
        self._config_set = config

    def init(
        self,
        backend: Backend,
        dtype: DType,
        max_sequences: int,
        capacity: int,
        max_batch: int,
    ) -> None:
        """Resolve the config and size the cache; ``put`` creates each layer's storage.

        Args:
            backend: The backend whose ``layer(i)`` contexts hold the storage.
            dtype: Storage dtype, one of CACHE (F32, F16, BF16, Q8_0, Q4_0).
            max_sequences: Sequences cached at once.
            capacity: Positions cached per sequence.
            max_batch: Largest batch given to ``start_forward``.

        Raises:
            RuntimeError: ``init`` was already called.
            DTypeError: ``dtype`` not in CACHE, a block dtype with ``permuted_v``, or a mask
                dtype other than F32, F16, BF16.
            ValueError: Sizes below 1 or negative paddings.
        """
        if self._config is not None:
            raise RuntimeError("Causal.init: the cache is already initialised")
        max_sequences = _count("Causal.init", "max_sequences", max_sequences)
        capacity = _count("Causal.init", "capacity", capacity)
        max_batch = _count("Causal.init", "max_batch", max_batch)
        if self._config_set is not None:
            config = self._config_set
        elif isinstance(backend, BackendCacheConfig):
            config = backend.cache_config()
        else:
            config = CacheConfig()
        if config.cache_padding < 0 or config.mask_batch_padding < 0:
            raise ValueError(f"Causal.init: paddings must be >= 0, got {config}")
        mask_dtype = DType.F32 if config.mask_dtype is DType.OTHER else config.mask_dtype
        if mask_dtype not in FLOAT:
            raise DTypeError(f"Causal.init: mask dtype {mask_dtype.name} is not F32, F16, BF16")
        if not isinstance(dtype, DType) or dtype not in CACHE:
            name = dtype.name if isinstance(dtype, DType) else repr(dtype)
            raise DTypeError(f"Causal.init: cache dtype {name} is not F32, F16, BF16, Q8_0, Q4_0")
        if dtype.is_block and config.permuted_v:
            raise DTypeError(f"Causal.init: block dtype {dtype.name} cannot use permuted_v")
        config = CacheConfig(
            cache_padding=config.cache_padding or 1,
            permuted_v=bool(config.permuted_v),
            mask_dtype=mask_dtype,
            mask_batch_padding=config.mask_batch_padding or 1,
        )
        if self._window is not None and capacity >= self._window:
            n = max_sequences * self._window + max_batch
        else:
            n = max_sequences * capacity
        self._config = config
        self._backend = backend
        self._dtype = dtype
        self._max_batch = max_batch
        self._max_seqs = max_sequences
        self._cells = Cells(_roundup(n, config.cache_padding))

    @property
    def config(self) -> CacheConfig | None:
        """The resolved config (paddings ≥ 1, concrete mask dtype); ``None`` before ``init``."""
        return self._config

    @property
    def backend(self) -> Backend | None:
        """The backend given to ``init``; ``None`` before."""
        return self._backend

    @property
    def dtype(self) -> DType:
        """The storage dtype."""
        return self._dtype

    @property
    def num_cells(self) -> int:
        """``N``, the number of cells (0 before ``init``)."""
        return self._cells.n

    @property
    def loc(self) -> int:
        """The first cell of the current batch."""
        return self._loc

    @property
    def cell_range(self) -> tuple[int, int]:
        """The current batch range ``R`` (padded), inclusive."""
        return self._range

    @property
    def mask(self) -> Tensor | None:
        """The current batch's mask (the one ``get`` returns); ``None`` before a batch."""
        return None if self._inputs is None else self._inputs.mask

    def cells(self) -> list[tuple[int, frozenset[int]]]:
        """Return ``(position, sequences)`` per cell; a free cell has no sequences."""
        return [(p, frozenset(s)) for p, s in zip(self._cells.pos, self._cells.seqs, strict=True)]

    def set_layer(self, i: int) -> None:
        """Select the layer that ``put`` and ``get`` use."""
        self._layer = _count("Causal.set_layer", "layer", i, 0)

    def close(self) -> None:
        """Close the storage contexts. Idempotent."""
        self._closed = True
        ctxs, self._ctxs = self._ctxs, {}
        self._keys, self._values = {}, {}
        for ctx in ctxs.values():
            ctx.close()

    def _ready(self, what: str) -> tuple[CacheConfig, Backend]:
        if self._closed:
            raise ContextError(f"Causal.{what}: the cache has been closed")
        if self._config is None or self._backend is None:
            raise RuntimeError(f"Causal.{what}: call init() first")
        return self._config, self._backend

    # -- start_forward and the mask (§8.3, §8.4) -------------------------------------------------

    def start_forward(self, ctx: Context, batch: Any, reserve: bool = False) -> None:
        """Place a batch in the cache and build its mask on ``ctx``: :meth:`place`, then
        :meth:`attach`.

        Args:
            ctx: The context of the forward pass (the mask is created on ``ctx.input()``).
            batch: Anything with equal-length int sequences ``positions`` and ``sequences``.
            reserve: Size for the worst case (all ``N`` cells) without touching the metadata.

        Raises:
            CacheFullError: No run of ``B`` free cells, even after defragmentation.
            ValueError: ``positions`` and ``sequences`` differ in length; the batch is empty or
                larger than ``max_batch``; a sequence id outside ``0 … max_sequences - 1``; a
                negative position; a position the sequence already holds (in the cache or
                twice in the batch). Nothing is changed then.
        """
        self.place(batch, reserve)
        self.attach(ctx)

    def place(self, batch: Any, reserve: bool = False) -> None:
        """Place a batch in the cache (steps 1-3 of §8.3) without building any tensor.

        Follow it with :meth:`attach` (a new graph) or :meth:`refill` (a graph kept from an
        earlier batch of the same :meth:`layout`). Arguments and errors as :meth:`start_forward`.
        """
        config, _ = self._ready("start_forward")
        positions = [operator.index(p) for p in batch.positions]
        sequences = [operator.index(s) for s in batch.sequences]
        b = len(positions)
        if b != len(sequences):
            raise ValueError(f"Causal.start_forward: {b} positions but {len(sequences)} sequences")
        if b == 0:
            raise ValueError("Causal.start_forward: empty batch")
        self._check_batch(positions, sequences, reserve)
        self._except = frozenset()
        self._inputs = None
        self._batch = ([], [])  # until placed: put/get refuse to run after a failed batch
        cells = self._cells
        if reserve:
            loc, cell_range = 0, (0, cells.n - 1)
        else:
            if self._window is not None:
                cells.expire(positions, sequences, self._window)
            found = cells.find_slot(b)
            if found is None:
                self._defrag()
                found = cells.find_slot(b)
            if found is None:
                raise CacheFullError(
                    f"Causal.start_forward: no run of {b} free cells among {cells.n}, even after "
                    "defragmentation"
                )
            loc = found
            cells.place(loc, positions, sequences)
            cell_range = cells.batch_range(sequences, config.cache_padding)
        self._batch = (positions, sequences)
        self._reserve = bool(reserve)
        self._loc = loc
        self._range = cell_range

    def layout(self) -> Hashable:
        """Return what the structure of a forward graph over the placed batch depends on.

        Two batches with equal layouts give graphs of the same structure whose inputs differ
        only in their values: the batch size ``B``, the range ``R`` (the views of ``get`` and the
        mask's ``L``), the mask's ``Bp``, the config and, for sizing, ``reserve``.

        Raises:
            RuntimeError: No batch is placed.
        """
        config, _ = self._ready("layout")
        positions = self._batch[0]
        if not positions:
            raise RuntimeError("Causal.layout: call place() or start_forward() first")
        b = len(positions)
        rows = _roundup(b, config.mask_batch_padding)
        # A block-quantised transposed V is written through a view at loc (put); init refuses
        # that combination today, but if it ever runs, loc is structure.
        loc = self._loc if config.permuted_v and self._dtype.is_block else None
        return (b, self._range, rows, self._reserve, loc, config, self._dtype)

    def attach(self, ctx: Context) -> ForwardInputs:
        """Create the placed batch's inputs on ``ctx``: its mask (§8.4) and cell indices.

        ``put`` and ``get`` then use them; they are returned so that a graph kept for later
        batches can have them rewritten by :meth:`refill`.

        Raises:
            RuntimeError: No batch is placed.
        """
        layout = self.layout()
        b = len(self._batch[0])
        mask, values = self._build_mask(ctx, "start_forward")
        cell_ids = ctx.input().from_int_slice(range(self._loc, self._loc + b), b)
        self._inputs = ForwardInputs(layout, mask, values, cell_ids)
        return self._inputs

    def refill(self, inputs: ForwardInputs) -> None:
        """Write the placed batch's mask and cell indices into ``inputs`` (made by
        :meth:`attach` for an earlier batch of the same layout) and make them current.

        The graph those inputs belong to then computes the placed batch exactly as a graph
        built for it by :meth:`start_forward` would.

        Raises:
            ValueError: ``inputs`` were made for another layout, or for sizing (``reserve``).
            RuntimeError: No batch is placed.
        """
        from mlplug.context import overwrite

        config, _ = self._ready("refill")
        layout = self.layout()
        if inputs.layout != layout or inputs.mask_values is None:
            raise ValueError(
                "Causal.refill: the inputs were made for another layout (or for reserve)"
            )
        positions, sequences = self._batch
        rows = _roundup(len(positions), config.mask_batch_padding)
        overwrite(
            inputs.mask_values,
            self._cells.mask(
                self._range, positions, sequences, self._except, rows, self._chunk, self._window
            ),
        )
        b = len(positions)
        overwrite(inputs.cell_ids, range(self._loc, self._loc + b))
        for per_token, ids in inputs.value_ids.items():
            overwrite(ids, self._transposed_values(per_token))
        self._inputs = inputs

    def _check_batch(self, positions: list[int], sequences: list[int], reserve: bool) -> None:
        """Refuse a batch the cache was not sized for, or one that contradicts its contents."""
        what = "Causal.start_forward"
        if len(positions) > self._max_batch:
            raise ValueError(
                f"{what}: batch of {len(positions)} tokens, more than max_batch "
                f"({self._max_batch}) given to init"
            )
        bad_seq = next((s for s in sequences if not 0 <= s < self._max_seqs), None)
        if bad_seq is not None:
            raise ValueError(
                f"{what}: sequence id {bad_seq} outside 0..{self._max_seqs - 1} "
                f"(max_sequences = {self._max_seqs})"
            )
        bad_pos = next((p for p in positions if p < 0), None)
        if bad_pos is not None:
            raise ValueError(f"{what}: negative position {bad_pos}")
        if reserve:
            return
        seen: set[tuple[int, int]] = set()
        for token in zip(sequences, positions, strict=True):
            if token in seen:
                raise ValueError(f"{what}: sequence {token[0]} has position {token[1]} twice")
            seen.add(token)
        held = self._cells.held_positions(sequences, positions)
        if held is not None:
            raise ValueError(
                f"{what}: sequence {held[0]} already holds position {held[1]} (remove it first)"
            )

    def _build_mask(self, ctx: Context, what: str) -> tuple[Tensor, Tensor | None]:
        """Return the mask ``get`` returns and the F32 input holding its values (``None`` for
        the uninitialised mask of ``reserve``)."""
        config, _ = self._ready(what)
        positions, sequences = self._batch
        rows = _roundup(len(positions), config.mask_batch_padding)
        if self._reserve:
            return ctx.input().empty(config.mask_dtype, self._cells.n, rows), None
        values = self._cells.mask(
            self._range, positions, sequences, self._except, rows, self._chunk, self._window
        )
        length = values.shape[1]
        source = ctx.input().from_float_slice(values, length, rows)
        mask = source
        if config.mask_dtype is not DType.F32:
            mask = mask.copy(ctx, ctx.input().empty(config.mask_dtype, length, rows))
            ctx.forward(mask)
        return mask, source

    def set_causal(self, ctx: Context | None, except_tokens: Sequence[int] = ()) -> None:
        """Skip the causal condition for the batch tokens ``except_tokens``.

        Sequence, window and chunk conditions still apply. When the set changes and ``ctx`` is
        not ``None``, the mask is rebuilt on ``ctx``. ``start_forward`` clears the set.
        """
        exempt = frozenset(operator.index(i) for i in except_tokens)
        if exempt == self._except:
            return
        self._except = exempt
        if ctx is not None and self._batch[0] and self._inputs is not None:
            self._inputs.mask, self._inputs.mask_values = self._build_mask(ctx, "set_causal")

    def _defrag(self) -> None:
        """Move occupied cells from the end into the holes at the front: data, then metadata."""
        moves = self._cells.plan_defrag()
        if moves:
            self._copy_cells(moves)
            self._cells.apply_moves(moves)

    def _copy_cells(self, moves: list[Move]) -> None:
        """Copy K and V of every moved run, on as few graphs as the node capacity allows."""
        if not self._keys:
            return
        config, backend = self._ready("start_forward")
        n = self._cells.n
        ctx = backend.new_context()
        try:
            used, cap = 0, ctx.max_graph_nodes()
            for layer, key in self._keys.items():
                value = self._values[layer]
                for src, dst, k in moves:
                    if used + _NODES_PER_MOVE > cap:
                        ctx.compute()
                        ctx.close()
                        ctx = backend.new_context()
                        used = 0
                    count = key.dim(0) * key.dim(1) * k
                    step = key.stride(2)
                    moved = key.view(ctx, step * src, count)
                    ctx.forward(moved.copy(ctx, key.view(ctx, step * dst, count)))
                    if config.permuted_v:
                        el, rows = value.stride(0), value.dim(1) * value.dim(2)
                        moved = value.view(ctx, el * src, k, n * el, rows)
                        ctx.forward(moved.copy(ctx, value.view(ctx, el * dst, k, n * el, rows)))
                    else:
                        count = value.dim(0) * value.dim(1) * k
                        step = value.stride(2)
                        moved = value.view(ctx, step * src, count)
                        ctx.forward(moved.copy(ctx, value.view(ctx, step * dst, count)))
                    used += _NODES_PER_MOVE
            ctx.compute()
        finally:
            ctx.close()

    # -- put / get (§8.5) -----------------------------------------------------------------------

    def put(self, ctx: Context, key: Tensor, value: Tensor) -> None:
        """Forward on ``ctx`` the copies of the batch's keys and values into the current layer.

        Args:
            ctx: The context of the forward pass.
            key: ``[Dk, Hkv, B]``.
            value: ``[Dv, Hkv, B]``.

        Raises:
            ShapeError: ``B`` is not the batch size, or the head extents differ from the
                layer's storage.
        """
        config, _ = self._ready("put")
        b = len(self._batch[0])
        if b == 0:
            raise RuntimeError("Causal.put: call start_forward() first")
        if key.dim(2) != b or value.dim(2) != b or key.dim(3) != 1 or value.dim(3) != 1:
            raise ShapeError(
                f"Causal.put: key {list(key.shape())} and value {list(value.shape())} must be "
                f"[D, Hkv, {b}] for the batch of {b}"
            )
        dk, hkv, dv = key.dim(0), key.dim(1), value.dim(0)
        if value.dim(1) != hkv:
            raise ShapeError(f"Causal.put: value has {value.dim(1)} heads, key has {hkv}")
        k_store, v_store = self._storage(dk, hkv, dv)
        # Written through the batch's cell indices (set_rows), not views at the cells: the
        # graph's structure then does not depend on where the batch lands, and the engine
        # reuses its plan from one decode step to the next.
        inputs = self._inputs
        if inputs is None:
            raise RuntimeError("Causal.put: call start_forward() first")
        cells = inputs.cell_ids
        n = self._cells.n
        ctx.forward(
            _rows_of(ctx, key, dk * hkv, b).set_rows(
                ctx, _rows_of(ctx, k_store, dk * hkv, n), cells
            )
        )
        if not config.permuted_v:
            dst = _rows_of(ctx, v_store, dv * hkv, n)
            ctx.forward(_rows_of(ctx, value, dv * hkv, b).set_rows(ctx, dst, cells))
        elif not v_store.dtype().is_block:
            # V is [L, Dv, Hkv]: each value is a row of one element, at cell + L·(d + Dv·h).
            ids = inputs.value_ids.get(dv * hkv)
            if ids is None:
                values = self._transposed_values(dv * hkv)
                ids = ctx.input().from_int_slice(values, values.size)
                inputs.value_ids[dv * hkv] = ids
            dst = _rows_of(ctx, v_store, 1, n * dv * hkv)
            ctx.forward(_rows_of(ctx, value, 1, dv * hkv * b).set_rows(ctx, dst, ids))
        else:
            # A block-quantised transposed V has no one-value rows: copy into a strided view.
            el = v_store.stride(0)
            dst = v_store.view(ctx, el * self._loc, b, n * el, dv * hkv)
            ctx.forward(value.permute(ctx, 1, 2, 0, 3).copy(ctx, dst))

    def _transposed_values(self, per_token: int) -> np.ndarray:
        """Return the element indices of the batch's values in a transposed V cache."""
        import numpy as np

        b, n = len(self._batch[0]), self._cells.n
        cells = np.arange(self._loc, self._loc + b, dtype=np.int64)
        return (cells[:, None] + n * np.arange(per_token, dtype=np.int64)[None, :]).reshape(-1)

    def _storage(self, dk: int, hkv: int, dv: int) -> tuple[Tensor, Tensor]:
        """Return the current layer's K and V, creating them on first use."""
        config, backend = self._ready("put")
        layer, n = self._layer, self._cells.n
        key = self._keys.get(layer)
        if key is None:
            family = backend.new_context_size(2)
            try:
                lctx = family.layer(layer)
                key = lctx.zeros(self._dtype, dk, hkv, n)
                if config.permuted_v:
                    value = lctx.zeros(self._dtype, n, dv, hkv)
                else:
                    value = lctx.zeros(self._dtype, dv, hkv, n)
            except BaseException:
                family.close()
                raise
            self._ctxs[layer] = family
            self._keys[layer] = key
            self._values[layer] = value
            return key, value
        value = self._values[layer]
        first = 1 if config.permuted_v else 0  # V's (Dv, Hkv) dims
        v_dims = (value.dim(first), value.dim(first + 1))
        if (key.dim(0), key.dim(1)) != (dk, hkv) or v_dims != (dv, hkv):
            raise ShapeError(
                f"Causal.put: layer {layer} stores keys of [{key.dim(0)}, {key.dim(1)}] and "
                f"values of [{v_dims[0]}, {v_dims[1]}] (D, Hkv), got [{dk}, {hkv}] and "
                f"[{dv}, {hkv}]"
            )
        return key, value

    def get(self, ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(key, value, mask)``: views of the current layer starting at cell ``R.min``.

        ``key`` is ``[Dk, Hkv, L]``; ``value`` is ``[Dv, Hkv, L]``, or ``[L, Dv, Hkv]`` with
        ``permuted_v``; ``mask`` is the batch's ``[L, Bp]`` mask.
        """
        config, _ = self._ready("get")
        inputs = self._inputs
        if inputs is None:
            raise RuntimeError("Causal.get: call start_forward() first")
        key = self._keys.get(self._layer)
        if key is None:
            raise RuntimeError(f"Causal.get: layer {self._layer} has no storage yet (put first)")
        value = self._values[self._layer]
        lo, hi = self._range
        length = hi - lo + 1
        k = key.view(
            ctx, key.stride(2) * lo, key.dim(0), key.stride(1), key.dim(1), key.stride(2), length
        )
        if config.permuted_v:
            v = value.view(
                ctx,
                value.stride(0) * lo,
                length,
                value.stride(1),
                value.dim(1),
                value.stride(2),
                value.dim(2),
            )
        else:
            v = value.view(
                ctx,
                value.stride(2) * lo,
                value.dim(0),
                value.stride(1),
                value.dim(1),
                value.stride(2),
                length,
            )
        return k, v, inputs.mask

    # -- sequence operations (§8.5) -------------------------------------------------------------

    def remove(self, seq: int, begin: int, end: int | None = None) -> None:
        """Drop ``seq`` from its cells with ``begin ≤ pos < end`` (``end=None``: no bound).

        With ``end`` given, the sequence's cells with ``pos ≥ end`` move down by ``end - begin``
        and their keys are re-encoded with ``shift`` (delta ``begin - end``, in batches of at
        most ``max_batch`` cells).

        Raises:
            NotImplementedError: Cells must move and ``shift`` is ``None`` or one of them is
                shared with another sequence; nothing is changed then.
            ValueError: ``end < begin``.
        """
        self._ready("remove")
        seq, begin = operator.index(seq), operator.index(begin)
        if end is not None:
            end = operator.index(end)
            if end < begin:
                raise ValueError(f"Causal.remove: end ({end}) < begin ({begin})")
        cells = self._cells
        dropped, moved = cells.split_remove(seq, begin, end)
        delta = 0 if end is None else begin - end
        if delta == 0:
            moved = []  # nothing shifts without an end, or with end == begin
        if moved:
            if self._shift is None:
                raise NotImplementedError("Causal.remove: moving positions needs a shift function")
            if any(len(cells.seqs[c]) > 1 for c in moved):
                raise NotImplementedError(
                    "Causal.remove: shifting cells shared by several sequences is not supported"
                )
        cells.drop(seq, dropped)
        if moved:
            for c in moved:
                cells.pos[c] += delta
            self._shift_keys(moved, delta)

    def _shift_keys(self, moved: list[int], delta: int) -> None:
        """Re-encode the keys of ``moved`` cells in every layer, ``max_batch`` cells a graph."""
        if not self._keys or self._shift is None:
            return
        _, backend = self._ready("remove")
        is_moved = set(moved)
        for start in range(moved[0], moved[-1] + 1, self._max_batch):
            inside = [
                c
                for c in range(start, min(start + self._max_batch, moved[-1] + 1))
                if c in is_moved
            ]
            if not inside:
                continue
            first, count = inside[0], inside[-1] - inside[0] + 1
            deltas = [delta if c in is_moved else 0 for c in range(first, first + count)]
            ctx = backend.new_context()
            try:
                d = ctx.input().from_int_slice(deltas, count)
                for layer, key in self._keys.items():
                    view = key.view(
                        ctx,
                        key.stride(2) * first,
                        key.dim(0),
                        key.stride(1),
                        key.dim(1),
                        key.stride(2),
                        count,
                    )
                    ctx.forward(self._shift(ctx, layer, view, d).copy(ctx, view))
                ctx.compute()
            finally:
                ctx.close()

    def copy_prefix(self, src: int, dst: int, length: int) -> None:
        """Make ``dst`` leave its cells, then share every cell of ``src`` with ``pos < length``.

        No data is copied. With ``src == dst`` the sequence leaves its cells first and so ends
        with none (the order §8.5 states).
        """
        self._ready("copy_prefix")
        self._cells.copy_prefix(operator.index(src), operator.index(dst), operator.index(length))

    def can_resume(self, seq: int, pos: int) -> bool:
        """Whether ``seq`` can continue at ``pos`` with what the cache holds.

        Always true without a window; with one, false when ``seq`` has no cells, else
        ``max(0, pos - w) >= max(0, last - w)`` with ``last`` its highest cached position.
        """
        if self._window is None:
            return True
        last = self._cells.last_pos(operator.index(seq))
        if last is None:
            return False
        w = self._window
        return max(0, operator.index(pos) - w) >= max(0, last - w)
