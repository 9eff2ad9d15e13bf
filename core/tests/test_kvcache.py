"""``mlplug.kvcache.Causal`` (SEMANTICS §8.1–§8.6) on the ``cpu`` backend, exact values."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import mlplug
from mlplug import AllocationStatus, CacheConfig, CacheFullError, DType, DTypeError, ShapeError
from mlplug.kvcache import Batch, Causal

FLASH = CacheConfig(
    cache_padding=256, permuted_v=False, mask_dtype=DType.F16, mask_batch_padding=64
)
PLAIN = CacheConfig()
NO_FLASH = CacheConfig(cache_padding=32, permuted_v=True, mask_dtype=DType.OTHER)


def new_cpu_backend(flash: bool = False, path: Path | None = None) -> mlplug.Backend:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # other plugins may be unavailable
        return mlplug.new_backend(path, mlplug.BackendParams(flash_attention=flash), backend="cpu")


@pytest.fixture
def backend() -> Iterator[mlplug.Backend]:
    be = new_cpu_backend()
    yield be
    be.close()


@pytest.fixture
def ctx(backend: mlplug.Backend) -> Iterator[mlplug.Context]:
    c = backend.new_context()
    yield c
    c.close()


def cache(
    backend: mlplug.Backend,
    config: CacheConfig | None = PLAIN,
    dtype: DType = DType.F32,
    max_sequences: int = 1,
    capacity: int = 16,
    max_batch: int = 16,
    **kwargs: Any,
) -> Causal:
    c = Causal(**kwargs)
    if config is not None:
        c.set_config(config)
    c.init(backend, dtype, max_sequences, capacity, max_batch)
    return c


def rows(ctx: mlplug.Context, c: Causal, n: int | None = None) -> list[str]:
    """The mask of the current batch as the rows of §8.6 (``x`` = -inf)."""
    mask = c.mask
    assert mask is not None
    ctx.compute(mask)
    values = mask.numpy().reshape(mask.dim(1), mask.dim(0))
    out = []
    for row in values[: n if n is not None else values.shape[0]]:
        assert set(np.unique(row.astype(np.float32)).tolist()) <= {0.0, -np.inf}
        out.append(" ".join("x" if v == -np.inf else "0" for v in row))
    return out


def step(
    backend: mlplug.Backend,
    c: Causal,
    positions: list[int],
    sequences: list[int] | None = None,
    d: int = 4,
    h: int = 2,
) -> list[str]:
    """Run one forward pass on a fresh context: put keys/values identifying each token.

    Returns the mask rows of the batch's tokens.
    """
    seqs = sequences if sequences is not None else [0] * len(positions)
    with backend.new_context() as ctx:
        c.start_forward(ctx, Batch(tuple(positions), tuple(seqs)))
        k, v = kv(ctx, positions, seqs, d, h)
        c.put(ctx, k, v)
        return rows(ctx, c, len(positions))


def token_values(positions: list[int], sequences: list[int], d: int, h: int) -> np.ndarray:
    """Numpy ``(B, h, d)`` values: 1000·seq + 10·pos + element index / 10."""
    base = 1000.0 * np.array(sequences) + 10.0 * np.array(positions)
    return (base[:, None, None] + np.arange(h * d).reshape(h, d) / 10).astype(np.float32)


def kv(
    ctx: mlplug.Context, positions: list[int], sequences: list[int], d: int, h: int
) -> tuple[mlplug.Tensor, mlplug.Tensor]:
    """Keys ``[d, h, B]`` holding ``token_values`` and values holding their negation."""
    vals = token_values(positions, sequences, d, h)
    b = len(positions)
    key = ctx.input().from_float_slice(vals, d, h, b)
    value = ctx.input().from_float_slice(-vals, d, h, b)
    return key, value


def read_kv(backend: mlplug.Backend, c: Causal) -> tuple[np.ndarray, np.ndarray]:
    """K and V of ``R`` (current layer) in numpy order ``(L, Hkv, D)`` whatever the V layout."""
    with backend.new_context() as ctx:
        k, v, _ = c.get(ctx)
        ctx.forward(k, v).compute(k, v)
        kn, vn = k.numpy(), v.numpy()
    if c.config is not None and c.config.permuted_v:
        vn = vn.transpose(2, 0, 1)  # (Hkv, Dv, L) -> (L, Hkv, Dv)
    return kn, vn


# -- §8.6 worked examples ------------------------------------------------------------------------


def test_default_config_padding_one(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend)
    assert step(backend, c, [0, 1, 2, 3]) == ["0 x x x", "0 0 x x", "0 0 0 x", "0 0 0 0"]
    assert c.cell_range == (0, 3)
    assert step(backend, c, [4]) == ["0 0 0 0 0"]
    assert c.mask is not None and c.mask.shape() == (5,)


def test_defaults_without_flash_attention(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    assert backend.cache_config() == NO_FLASH
    c = cache(backend, config=None, dtype=DType.F16, capacity=64)
    assert c.config == CacheConfig(32, True, DType.F32, 1)
    assert c.num_cells == 64
    got = step(backend, c, [0, 1, 2, 3])
    tail = " x" * 28
    assert got == ["0 x x x" + tail, "0 0 x x" + tail, "0 0 0 x" + tail, "0 0 0 0" + tail]
    k, v, mask = c.get(ctx)
    assert mask.dtype() is DType.F32 and mask.shape() == (32, 4)
    assert k.shape() == (4, 2, 32) and v.shape() == (32, 4, 2)  # value [L, Dv, Hkv]


def test_defaults_with_flash_attention() -> None:
    be = new_cpu_backend(flash=True)
    try:
        assert be.cache_config() == FLASH
        ctx = be.new_context()
        c = cache(be, config=None, dtype=DType.F16, capacity=64)
        assert c.num_cells == 256
        c.start_forward(ctx, Batch((0, 1, 2, 3), (0, 0, 0, 0)))
        mask = c.mask
        assert mask.dtype() is DType.F16 and mask.shape() == (256, 64)
        got = rows(ctx, c)
        tail = " x" * 252
        assert got[:4] == ["0 x x x" + tail, "0 0 x x" + tail, "0 0 0 x" + tail, "0 0 0 0" + tail]
        assert got[4:] == [" ".join(["x"] * 256)] * 60
        k, v = kv(ctx, [0, 1, 2, 3], [0] * 4, 4, 2)
        c.put(ctx, k, v)
        key, value, _ = c.get(ctx)
        assert key.shape() == (4, 2, 256) and value.shape() == (4, 2, 256)
        c.close()
    finally:
        be.close()


def test_explicit_config_overrides_backend(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend, config=FLASH, capacity=64)
    assert c.config == FLASH and c.num_cells == 256


def test_window_one(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend, window_size=1, max_sequences=1, capacity=16, max_batch=16)
    assert c.num_cells == 17
    assert step(backend, c, [0, 1, 2, 3]) == ["0 x x x", "0 0 x x", "x 0 0 x", "x x 0 0"]
    assert step(backend, c, [4, 5]) == ["0 x x 0", "0 0 x x"]
    assert c.loc == 0 and c.cell_range == (0, 3)
    cells = c.cells()
    assert [(p, set(s)) for p, s in cells[:4]] == [(4, {0}), (5, {0}), (2, set()), (3, {0})]
    assert all(not s for _, s in cells[4:])


def test_window_decode_reuses_cells(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend, window_size=2, capacity=16, max_batch=1)
    assert c.num_cells == 3
    for p in range(20):
        row = step(backend, c, [p])[0]
        assert row.count("0") == min(p + 1, 3)
    held = sorted(p for p, s in c.cells() if s)
    assert held == [17, 18, 19]


def test_small_capacity_window_uses_full_capacity(backend: mlplug.Backend) -> None:
    assert cache(backend, window_size=8, max_sequences=2, capacity=4, max_batch=3).num_cells == 8
    assert cache(backend, window_size=8, max_sequences=2, capacity=8, max_batch=3).num_cells == 19
    padded = cache(backend, config=CacheConfig(cache_padding=32), window_size=8, capacity=8)
    assert padded.num_cells == 32


def test_chunk_two(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend, chunk_size=2)
    assert step(backend, c, [0, 1, 2, 3]) == ["0 x x x", "0 0 x x", "x x 0 x", "x x 0 0"]
    assert step(backend, c, [4, 5, 6]) == [
        "x x x x 0 x x",
        "x x x x 0 0 x",
        "x x x x x x 0",
    ]


def test_two_sequences_in_one_batch(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend, max_sequences=2)
    assert step(backend, c, [0, 0, 1, 1], [0, 1, 0, 1]) == [
        "0 x x x",
        "x 0 x x",
        "0 x 0 x",
        "x 0 x 0",
    ]


def test_mask_batch_padding_rows(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend, config=CacheConfig(mask_batch_padding=4))
    c.start_forward(ctx, Batch((0, 1), (0, 0)))
    assert rows(ctx, c) == ["0 x", "0 0", "x x", "x x"]


def test_set_causal_exempts_tokens(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend, window_size=1)
    c.start_forward(ctx, Batch((0, 1, 2, 3), (0, 0, 0, 0)))
    c.set_causal(ctx, [0, 2])
    # Tokens 0 and 2 see the future; the window still hides position 0 from token 2.
    assert rows(ctx, c) == ["0 0 0 0", "0 0 x x", "x 0 0 0", "x x 0 0"]
    before = c.mask
    c.set_causal(ctx, [2, 0])  # the same set: the mask is kept
    assert c.mask is before
    c.set_causal(None, [])  # changed, but no ctx: recorded, the mask is not rebuilt
    assert c.mask is before

    full = cache(backend)
    full.start_forward(ctx, Batch((0, 1), (0, 0)))
    full.set_causal(ctx, [0])
    assert rows(ctx, full) == ["0 0", "0 0"]
    full.start_forward(ctx, Batch((2, 3), (0, 0)))  # clears the exceptions
    assert rows(ctx, full) == ["0 0 0 x", "0 0 0 0"]
    full.set_causal(ctx, [0])
    assert rows(ctx, full) == ["0 0 0 0", "0 0 0 0"]


# -- put / get values ----------------------------------------------------------------------------


@pytest.mark.parametrize("permuted", [False, True])
@pytest.mark.parametrize("dtype", [DType.F32, DType.F16, DType.BF16])
def test_put_get_round_trip(
    ctx: mlplug.Context, backend: mlplug.Backend, dtype: DType, permuted: bool
) -> None:
    c = cache(backend, config=CacheConfig(permuted_v=permuted), dtype=dtype, max_sequences=2)
    step(backend, c, [0, 1, 2], d=4, h=3)
    step(backend, c, [0, 3], [1, 0], d=4, h=3)
    k, v = read_kv(backend, c)
    expected = token_values([0, 1, 2, 0, 3], [0, 0, 0, 1, 0], 4, 3)
    rounded = {DType.F32: np.float32, DType.F16: np.float16}
    if dtype in rounded:
        expected = expected.astype(rounded[dtype]).astype(np.float32)
        np.testing.assert_array_equal(k, expected)
        np.testing.assert_array_equal(v, -expected)
    else:
        np.testing.assert_allclose(k, expected, rtol=2**-8)
        np.testing.assert_allclose(v, -expected, rtol=2**-8)


def test_permuted_v_storage_layout(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend, config=CacheConfig(permuted_v=True), capacity=6)
    c.start_forward(ctx, Batch((0, 1), (0, 0)))
    c.start_forward(ctx, Batch((2, 3), (0, 0)))  # loc = 2
    k, v = kv(ctx, [2, 3], [0, 0], 2, 3)
    c.put(ctx, k, v)
    _, view, _ = c.get(ctx)
    assert view.shape() == (4, 2, 3)
    assert (view.stride(0), view.stride(1), view.stride(2)) == (4, 24, 48)
    ctx.forward(view).compute(view)
    # The storage is [N=6, Dv=2, Hkv=3]: row (d, h) holds cells 0..5.
    storage = c._values[0].numpy()  # (Hkv, Dv, N)
    vals = -token_values([2, 3], [0, 0], 2, 3)  # (B, Hkv, Dv)
    np.testing.assert_array_equal(storage[:, :, 2:4], vals.transpose(1, 2, 0))
    np.testing.assert_array_equal(storage[:, :, [0, 1, 4, 5]], 0)


@pytest.mark.parametrize(("dtype", "steps"), [(DType.Q8_0, 127), (DType.Q4_0, 7)])
def test_quantised_cache(
    ctx: mlplug.Context, backend: mlplug.Backend, dtype: DType, steps: int
) -> None:
    c = cache(backend, dtype=dtype)
    rng = np.random.default_rng(0)
    vals = rng.uniform(-1, 1, size=(3, 2, 32)).astype(np.float32)  # (B, Hkv, Dk)
    c.start_forward(ctx, Batch((0, 1, 2), (0, 0, 0)))
    key = ctx.input().from_float_slice(vals, 32, 2, 3)
    value = ctx.input().from_float_slice(2 * vals, 32, 2, 3)
    c.put(ctx, key, value)
    k, v, _ = c.get(ctx)
    assert k.dtype() is dtype and v.dtype() is dtype
    ctx.forward(k, v).compute(k, v)
    step_size = np.abs(vals).max(axis=-1, keepdims=True) / steps * 1.01  # one step per block
    assert np.all(np.abs(k.numpy() - vals) <= step_size)
    assert np.all(np.abs(v.numpy() - 2 * vals) <= 2 * step_size)


def test_block_dtype_with_permuted_v_is_rejected(backend: mlplug.Backend) -> None:
    with pytest.raises(DTypeError, match=r"Causal\.init"):
        Causal().init(backend, DType.Q8_0, 1, 16, 16)  # the cpu default permutes V
    with pytest.raises(DTypeError):
        cache(backend, config=CacheConfig(permuted_v=True), dtype=DType.Q4_0)


def test_storage_is_counted_as_cache_on_first_put(
    ctx: mlplug.Context, backend: mlplug.Backend
) -> None:
    c = cache(backend, dtype=DType.F16, capacity=16)
    assert backend.backend_memory().cpu.cache[0].size == 0
    c.start_forward(ctx, Batch((0,), (0,)))
    assert backend.backend_memory().cpu.cache[0].size == 0
    k, v = kv(ctx, [0], [0], 8, 2)
    c.put(ctx, k, v)
    entry = backend.backend_memory().cpu.cache[0]
    assert entry.size == 2 * 8 * 2 * 16 * 2  # K and V: F16 [8, 2, 16]
    assert entry.status is AllocationStatus.ALLOCATED
    c.put(ctx, k, v)  # same layer again: no new storage
    assert backend.backend_memory().cpu.cache[0].size == entry.size
    c.close()


def test_storage_per_layer(tmp_path: Path) -> None:
    synth = pytest.importorskip("mlplug_conformance.synth")
    path = synth.write_llama_gguf(
        tmp_path / "m.gguf", n_layers=2, n_embd=32, n_head=2, n_head_kv=1, n_ff=32, n_vocab=16
    )
    be = new_cpu_backend(path=path)
    try:
        ctx = be.new_context()
        c = cache(be, capacity=8)
        c.start_forward(ctx, Batch((0, 1), (0, 0)))
        for layer, d in [(1, 4), (0, 2)]:
            c.set_layer(layer)
            k, v = kv(ctx, [0, 1], [0, 0], d, 1)
            c.put(ctx, k, v)
        ctx.compute()
        cache_sizes = [m.size for m in be.backend_memory().cpu.cache]
        assert cache_sizes == [2 * 4 * 2 * 8, 2 * 4 * 4 * 8, 0]
        c.set_layer(1)
        kn, _ = read_kv(be, c)
        np.testing.assert_array_equal(kn, token_values([0, 1], [0, 0], 4, 1))
        c.close()
    finally:
        be.close()


def test_reserve_sizes_for_all_cells(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend, config=CacheConfig(mask_batch_padding=8), capacity=10)
    c.start_forward(ctx, Batch((0, 1, 2), (0, 0, 0)), reserve=True)
    assert all(not s for _, s in c.cells())
    k, v = kv(ctx, [0, 1, 2], [0, 0, 0], 4, 2)
    c.put(ctx, k, v)
    key, value, mask = c.get(ctx)
    assert mask.shape() == (10, 8) and mask.dtype() is DType.F32
    assert key.shape() == (4, 2, 10) and value.shape() == (4, 2, 10)
    assert backend.backend_memory().cpu.cache[0].size == 2 * 4 * 4 * 2 * 10
    # A real batch afterwards starts at cell 0.
    assert step(backend, c, [0]) == ["0"]


# -- full cache and defragmentation ----------------------------------------------------------


def test_cache_full(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend, capacity=4, max_batch=4)
    step(backend, c, [0, 1, 2])
    before = c.cells()
    with pytest.raises(CacheFullError, match="start_forward"):
        c.start_forward(ctx, Batch((3, 4), (0, 0)))
    assert c.cells() == before
    k, v = kv(ctx, [3, 4], [0, 0], 4, 2)
    with pytest.raises(RuntimeError, match="start_forward"):
        c.put(ctx, k, v)  # the failed batch has no cells
    with pytest.raises(ValueError, match="max_batch"):  # refused before looking for cells
        c.start_forward(ctx, Batch(tuple(range(5)), (0,) * 5))


@pytest.mark.parametrize("permuted", [False, True])
def test_defragmentation_keeps_values_and_positions(
    ctx: mlplug.Context, backend: mlplug.Backend, permuted: bool
) -> None:
    c = cache(backend, config=CacheConfig(permuted_v=permuted), max_sequences=2, capacity=4)
    assert c.num_cells == 8
    step(backend, c, [0, 1], [0, 0])  # cells 0, 1
    step(backend, c, [0, 1, 2], [1, 1, 1])  # cells 2-4
    step(backend, c, [2, 3, 3], [0, 0, 1])  # cells 5-7
    c.remove(1, 0)  # frees cells 2, 3, 4 and 7
    assert [bool(s) for _, s in c.cells()] == [True, True, False, False, False, True, True, False]
    # Four free cells but no run of 4: defragmentation moves cells 5, 6 to 2, 3.
    assert step(backend, c, [0, 1, 2, 3], [1, 1, 1, 1]) == [
        "0 x x x",
        "0 0 x x",
        "0 0 0 x",
        "0 0 0 0",
    ]
    assert c.loc == 4
    got = [(p, set(s)) for p, s in c.cells()]
    assert got == [(0, {0}), (1, {0}), (2, {0}), (3, {0}), (0, {1}), (1, {1}), (2, {1}), (3, {1})]
    c.remove(1, 0)
    assert step(backend, c, [4], [0]) == ["0 0 0 0 0"]
    k, v = read_kv(backend, c)
    expected = token_values([0, 1, 2, 3, 4], [0] * 5, 4, 2)
    np.testing.assert_array_equal(k, expected)
    np.testing.assert_array_equal(v, -expected)


def test_defragmentation_spreads_over_graphs(
    backend: mlplug.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = cache(backend, max_sequences=2, capacity=12, max_batch=24)
    n = c.num_cells
    step(backend, c, [p // 2 for p in range(n)], [p % 2 for p in range(n)])
    c.remove(1, 0)  # every odd cell is free: 12 single-cell holes
    # Room for 2 moved runs (12 nodes) per defragmentation graph.
    monkeypatch.setattr(backend, "max_graph_nodes", lambda: 14)
    assert step(backend, c, [0, 1, 2, 3, 4, 5], [1] * 6)[5] == "0 0 0 0 0 0"
    assert c.loc == 12
    cells = c.cells()
    assert sorted(p for p, s in cells[:12] if s == {0}) == list(range(12))
    assert [(p, s) for p, s in cells[12:18]] == [(p, {1}) for p in range(6)]
    monkeypatch.undo()
    with backend.new_context() as ctx:
        c.start_forward(ctx, Batch((12,), (0,)))
    k, v = read_kv(backend, c)
    expected = token_values([p for p, _ in cells[:12]], [0] * 12, 4, 2)
    np.testing.assert_array_equal(k[:12], expected)
    np.testing.assert_array_equal(v[:12], -expected)


# -- remove, shift, copy_prefix, can_resume --------------------------------------------------


class RecordingShift:
    """A shift that adds each cell's delta to every element of its keys, and records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[int], tuple[int, ...]]] = []

    def __call__(
        self, ctx: mlplug.Context, layer: int, key: mlplug.Tensor, deltas: mlplug.Tensor
    ) -> mlplug.Tensor:
        d = deltas.numpy()  # an input buffer: readable at build time
        assert deltas.dtype() is DType.I32
        self.calls.append((layer, d.tolist(), (key.dim(0), key.dim(1), key.dim(2))))
        delta = ctx.input().from_float_slice(d.astype(np.float32), 1, 1, len(d))
        return key.add(ctx, delta)


def keys_by_position(backend: mlplug.Backend, c: Causal, positions: list[int]) -> None:
    """Cache sequence 0 at ``positions``, every key element holding its position."""
    with backend.new_context() as ctx:
        c.start_forward(ctx, Batch(tuple(positions), (0,) * len(positions)))
        vals = np.repeat(np.array(positions, dtype=np.float32), 4)
        key = ctx.input().from_float_slice(vals, 2, 2, len(positions))
        c.put(ctx, key, key)
        ctx.compute()


def test_remove_with_shift(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    shift = RecordingShift()
    c = cache(backend, shift=shift, capacity=8, max_batch=2)
    for first in (0, 2, 4):  # batches of max_batch tokens
        keys_by_position(backend, c, [first, first + 1])
    c.remove(0, 1, 3)
    assert [(p, set(s)) for p, s in c.cells()[:6]] == [
        (0, {0}),
        (1, set()),
        (2, set()),
        (1, {0}),
        (2, {0}),
        (3, {0}),
    ]
    assert shift.calls  # batches of at most max_batch cells, delta begin - end
    assert all(layer == 0 and len(d) <= 2 and set(d) <= {0, -2} for layer, d, _ in shift.calls)
    assert sorted(x for _, d, _ in shift.calls for x in d if x) == [-2, -2, -2]
    assert all(shape == (2, 2, len(d)) for _, d, shape in shift.calls)
    # The shifted keys now hold the new positions; the next token takes cell 1.
    c.start_forward(ctx, Batch((4,), (0,)))
    assert rows(ctx, c) == ["0 0 x 0 0 0"]
    k, _, _ = c.get(ctx)
    ctx.forward(k).compute(k)
    np.testing.assert_array_equal(k.numpy()[[0, 3, 4, 5], 0, 0], [0, 1, 2, 3])


def test_remove_without_end_needs_no_shift(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend)
    step(backend, c, [0, 1, 2, 3])
    c.remove(0, 2)
    assert [set(s) for _, s in c.cells()[:4]] == [{0}, {0}, set(), set()]
    assert step(backend, c, [2]) == ["0 0 0"]
    c.remove(0, 0)
    assert all(not s for _, s in c.cells())
    assert c.can_resume(0, 0)  # no window: always true
    c.remove(5, 0, 3)  # unknown sequence: nothing to do


def test_remove_shift_errors(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend, max_sequences=2)
    step(backend, c, [0, 1, 2, 3])
    before = c.cells()
    with pytest.raises(NotImplementedError, match="shift"):
        c.remove(0, 1, 2)
    assert c.cells() == before
    c.remove(0, 2, 10)  # nothing at pos >= 10 moves: no shift needed
    assert [set(s) for _, s in c.cells()[:4]] == [{0}, {0}, set(), set()]

    shared = cache(backend, shift=RecordingShift(), max_sequences=2)
    step(backend, shared, [0, 1, 2, 3])
    shared.copy_prefix(0, 1, 4)
    before = shared.cells()
    with pytest.raises(NotImplementedError, match="shared"):
        shared.remove(0, 0, 1)
    assert shared.cells() == before
    with pytest.raises(ValueError, match="end"):
        shared.remove(0, 3, 1)


def test_copy_prefix_shares_cells(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend, max_sequences=2)
    step(backend, c, [0, 1, 2, 3], [0, 0, 0, 0])
    c.copy_prefix(0, 1, 2)
    assert [set(s) for _, s in c.cells()[:4]] == [{0, 1}, {0, 1}, {0}, {0}]
    assert step(backend, c, [2], [1]) == ["0 0 x x 0"]
    k, _ = read_kv(backend, c)  # sequence 1 reads sequence 0's keys: no data was copied
    np.testing.assert_array_equal(k[:2], token_values([0, 1], [0, 0], 4, 2))
    c.copy_prefix(0, 1, 1)  # dst leaves everything first
    assert [set(s) for _, s in c.cells()[:5]] == [{0, 1}, {0}, {0}, {0}, set()]
    c.copy_prefix(0, 0, 2)  # src == dst: the sequence leaves its cells
    assert [set(s) for _, s in c.cells()[:5]] == [{1}, set(), set(), set(), set()]


def test_can_resume(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    full = cache(backend)
    assert full.can_resume(0, 100) and full.can_resume(7, 0)
    chunked = cache(backend, chunk_size=4)
    assert chunked.can_resume(0, 5)
    c = cache(backend, window_size=4, max_sequences=2, capacity=16)
    assert not c.can_resume(0, 0)
    step(backend, c, list(range(10)))
    assert c.can_resume(0, 9)  # max(0, 5) >= max(0, 9 - 4)
    assert c.can_resume(0, 12)
    assert not c.can_resume(0, 8)
    assert not c.can_resume(1, 0)
    step(backend, c, [0, 1], [1, 1])
    assert c.can_resume(1, 0) and c.can_resume(1, 5)  # max(0, pos - 4) >= max(0, -3)


def naive_mask(
    c: Causal, positions: list[int], sequences: list[int], window: int | None, chunk: int | None
) -> list[str]:
    """The §8.4 mask rows computed directly from the cell list."""
    cells = c.cells()
    held = [i for i, (_, s) in enumerate(cells) if set(sequences) & s]
    lo, hi = min(held), max(held)
    out = []
    for p, s in zip(positions, sequences, strict=True):
        row = []
        for j in range(lo, hi + 1):
            cp, cs = cells[j]
            visible = s in cs and cp <= p
            visible = visible and (chunk is None or cp >= p - p % chunk)
            visible = visible and (window is None or cp >= p - window)
            row.append("0" if visible else "x")
        out.append(" ".join(row))
    return out


@pytest.mark.parametrize("kind", ["full", "window", "chunk"])
def test_random_operations_match_the_rules(backend: mlplug.Backend, kind: str) -> None:
    rng = np.random.default_rng(7)
    window = 5 if kind == "window" else None
    chunk = 3 if kind == "chunk" else None
    c = cache(
        backend,
        max_sequences=3,
        capacity=8,
        max_batch=4,
        window_size=window,
        chunk_size=chunk,
        shift=lambda ctx, layer, key, deltas: key,
    )
    next_pos = [0, 0, 0]
    for _ in range(300):
        op = rng.integers(0, 10)
        seq = int(rng.integers(0, 3))
        if op < 6:
            seqs = [int(s) for s in rng.integers(0, 3, size=int(rng.integers(1, 5)))]
            positions = []
            for s in seqs:
                positions.append(next_pos[s])
                next_pos[s] += 1
            with backend.new_context() as ctx:
                try:
                    c.start_forward(ctx, Batch(tuple(positions), tuple(seqs)))
                except CacheFullError:
                    for s in range(3):
                        c.remove(s, 0)
                    next_pos = [0, 0, 0]
                    continue
                placed = c.cells()[c.loc : c.loc + len(seqs)]
                assert placed == [(p, {s}) for p, s in zip(positions, seqs, strict=True)]
                assert rows(ctx, c, len(seqs)) == naive_mask(c, positions, seqs, window, chunk)
        elif op < 8:
            begin = int(rng.integers(0, next_pos[seq] + 1))
            end = None if rng.integers(0, 2) else begin + int(rng.integers(0, 3))
            try:
                c.remove(seq, begin, end)
            except NotImplementedError:
                continue
            next_pos[seq] = begin if end is None else max(begin, next_pos[seq] - (end - begin))
        else:
            dst = (seq + 1) % 3
            c.copy_prefix(seq, dst, next_pos[seq])
            next_pos[dst] = next_pos[seq]
        cells = c.cells()
        for s in range(3):
            mine = [i for i, (_, cs) in enumerate(cells) if s in cs]
            positions_held = [cells[i][0] for i in mine]
            assert len(set(positions_held)) == len(positions_held)  # one cell per position


# -- errors and misuse -----------------------------------------------------------------------


def test_construction_errors(backend: mlplug.Backend) -> None:
    with pytest.raises(ValueError, match="at most one"):
        Causal(window_size=4, chunk_size=2)
    with pytest.raises(ValueError):
        Causal(chunk_size=0)
    c = Causal()
    c.set_config(CacheConfig())
    with pytest.raises(RuntimeError, match="set_config"):
        c.set_config(CacheConfig())
    c.init(backend, DType.F16, 1, 4, 4)
    with pytest.raises(RuntimeError, match="set_config"):
        c.set_config(CacheConfig())
    with pytest.raises(RuntimeError):
        c.init(backend, DType.F16, 1, 4, 4)
    late = Causal()
    late.init(backend, DType.F32, 1, 4, 4)
    with pytest.raises(RuntimeError, match="set_config"):
        late.set_config(CacheConfig())


@pytest.mark.parametrize("dtype", [DType.I32, DType.Q4_1, DType.Q4_K, DType.F64, DType.OTHER])
def test_bad_cache_dtype(backend: mlplug.Backend, dtype: DType) -> None:
    with pytest.raises(DTypeError, match=r"Causal\.init"):
        cache(backend, dtype=dtype)


def test_batch_errors(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    with pytest.raises(ValueError):
        Batch((0, 1), (0,))
    c = cache(backend)
    with pytest.raises(RuntimeError, match="init"):
        Causal().start_forward(ctx, Batch((0,), (0,)))

    loose = SimpleNamespace(positions=[0, 1], sequences=[0])
    with pytest.raises(ValueError, match="start_forward"):
        c.start_forward(ctx, loose)
    loose.sequences = [0, 0]
    c.start_forward(ctx, loose)  # any object with the two attributes
    k, v = kv(ctx, [0, 1, 2], [0, 0, 0], 4, 2)
    with pytest.raises(ShapeError, match=r"Causal\.put"):
        c.put(ctx, k, v)
    k, v = kv(ctx, [0, 1], [0, 0], 4, 2)
    c.put(ctx, k, v)
    k8, v8 = kv(ctx, [0, 1], [0, 0], 8, 2)
    with pytest.raises(ShapeError, match=r"Causal\.put"):
        c.put(ctx, k8, v8)  # head size differs from the layer's storage
    with pytest.raises(ShapeError, match="heads"):
        c.put(ctx, k, ctx.input().from_float_slice(np.zeros(8), 4, 1, 2))


def test_close_releases_storage(ctx: mlplug.Context, backend: mlplug.Backend) -> None:
    c = cache(backend)
    step(backend, c, [0])
    assert backend.backend_memory().cpu.cache[0].size > 0
    c.close()
    c.close()
    with pytest.raises(mlplug.ContextError):
        c.start_forward(ctx, Batch((1,), (0,)))


def test_kvcache_import_stays_light() -> None:
    code = (
        "import sys, mlplug; assert 'mlplug.kvcache' not in sys.modules; "
        "import mlplug.kvcache; print('numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("positions", "sequences", "match"),
    [
        (tuple(range(5)), (0,) * 5, "max_batch"),
        ((4,), (2,), "sequence id 2 outside 0..1"),
        ((4,), (-1,), "sequence id -1"),
        ((-1,), (0,), "negative position -1"),
        ((1,), (0,), "sequence 0 already holds position 1"),
        ((5, 5), (1, 1), "position 5 twice"),
    ],
)
def test_start_forward_refuses_batches_the_cache_cannot_take(
    ctx: mlplug.Context,
    backend: mlplug.Backend,
    positions: tuple[int, ...],
    sequences: tuple[int, ...],
    match: str,
) -> None:
    c = cache(backend, max_sequences=2, capacity=8, max_batch=4)
    step(backend, c, [0, 1, 2])
    before = c.cells()
    with pytest.raises(ValueError, match=match):
        c.start_forward(ctx, Batch(positions, sequences))
    assert c.cells() == before  # nothing changed
    step(backend, c, [3], [0])  # and the cache still works
    step(backend, c, [1], [1])  # another sequence may hold the same position
